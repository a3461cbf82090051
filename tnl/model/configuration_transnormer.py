"""TransNormerLLM configuration (Qin et al. 2023, "TransNormerLLM", arXiv:2307.14995).

Field names follow OpenNLPLab's released checkpoints so their config.json loads unchanged. Fields after `bias`
are tnl extensions (decay schedule, swappable token/channel mixers for the softmax baselines).
This file imports only transformers and the standard library: it is copied verbatim into HF export folders.
"""

from __future__ import annotations

from transformers import PretrainedConfig

TOKEN_MIXERS = ("tnl", "softmax", "hybrid")
CHANNEL_MIXERS = ("sglu", "swiglu", "mlp")
DECAY_SCHEDULES = ("tnl", "paper", "paper_one_based", "none")
POSITION_ENCODINGS = ("rope", "sinusoidal", "none")
NORM_BACKENDS = ("auto", "triton", "torch")
# lightning_attn's backends (tnl.ops.lightning_attn.interface.BACKENDS; this file imports no tnl module)
ATTN_BACKENDS = ("auto", "torch", "naive", "triton", "cumsum")


class TransnormerConfig(PretrainedConfig):
    """Configuration of `TransnormerForCausalLM`.

    Core (official names): decoder_embed_dim (d), decoder_layers (L), decoder_attention_heads (H), hidden_dim (token
    mixer width, split into H heads), glu_dim (channel mixer width), linear_use_lrpe_list (1 per layer using LRPE;
    default: first layer only), linear_act_fun (q/k activation), norm_type ("simplermsnorm" only), bias,
    no_scale_embedding (False: embeddings scaled by sqrt(d)), init_std.

    tnl extensions:
      decay_schedule: per-head decay rates s (lambda = exp(-s)) of layer l of L, head h of H:
        "tnl" (OpenNLPLab's released code: ALiBi slope s_h * (1 - l/(L-1) + 1e-5)),
        "paper" (TNL paper sec. 3.1.1 as the layer-aware lightning attention interface has it: s = (8/H)(1 - l/L) h
        for h = 0..H-1, i.e. g_gamma = -s), "paper_one_based" (the same with h = 1..H, which "paper" meant in
        earlier tnl versions: a run trained with it then loads as it was trained under this name), "none".
      token_mixer: "tnl" | "softmax" | "hybrid"; channel_mixer: "sglu" (l3(l1 x * l2 x)) | "swiglu"
        (l3(silu(l1 x) * l2 x)) | "mlp" (fc2(gelu(fc1 x)), hidden size 3 * glu_dim / 2: SGLU's parameter count
        without biases; glu_dim must be even; with bias=true it has glu_dim / 2 fewer bias entries).
      num_key_value_heads: k/v heads (grouped-query attention; None = H, H a multiple of it) of every token mixer:
        TNL projects k and v to this many heads, each shared by H / num_key_value_heads q heads (with its own decay
        rate per q head; decoding states stay [B, H, D, E]; LRPE angles per k/v head).
      position_encoding of softmax/hybrid ("rope" | "sinusoidal" | "none"; the TNL mixer uses LRPE per
      linear_use_lrpe_list instead),
      rope_theta, sliding_window (softmax; None = full causal), qk_norm (RMSNorm on q/k heads),
      hybrid_block_size (hybrid: softmax within blocks of this many tokens, decayed linear attention across).
      attn_backend: backend passed to `lightning_attn`: "auto" (Triton on CUDA), "triton", "torch" (blockwise
        PyTorch), "naive" (quadratic form), "cumsum" (standard linear attention: every state materialised by a
        cumulative sum, the paper's speed baseline; the fused mixer is not used with it).
      fused_mixer: True (default) runs the TNL mixer's attention, output gate and output projection as one op
        (fused_mixer.py) when training or compiled, on layers whose q/k SiLU goes to the Triton kernels (see
        fold_qk_activation; not with LRPE, padding masks or a cache); False keeps them separate ops.
      fold_qk_activation: True (default) hands the q/k SiLU to the attention kernels: applied as they load q and k
        in eager mode; compiled, SiLU(q), SiLU(k) come in beside q, k and the kernels apply SiLU' in backward.
        False applies SiLU before the op, which never sees it (and the fused mixer is not used).
      norm_backend: SimpleRMSNorm kernels: "auto" (Triton row kernels on CUDA in eager mode, PyTorch otherwise),
        "triton" (the same, but an error where Triton cannot run) or "torch" (the PyTorch formulas everywhere).
      Dropout (0 = off; as fairseq's transformer_lm places it): dropout on each token and channel mixer's output
        before the residual add; embed_dropout on the embeddings after scaling and positions (None = dropout);
        activation_dropout inside the channel mixer on its hidden activation, the output projection's input;
        attention_dropout on the softmax weights (softmax and hybrid mixers; TNL's linear attention has none).
    """

    model_type = "transnormer"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "decoder_embed_dim",
        "num_hidden_layers": "decoder_layers",
        "num_attention_heads": "decoder_attention_heads",
        "intermediate_size": "glu_dim",
    }

    def __init__(
        self,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        vocab_size: int = 64000,
        use_cache: bool = True,
        init_std: float = 0.02,
        decoder_embed_dim: int = 1024,
        decoder_attention_heads: int = 8,
        decoder_layers: int = 24,
        add_bos_token: bool = False,
        glu_dim: int = 2816,
        hidden_dim: int | None = None,
        linear_act_fun: str = "silu",
        linear_use_lrpe_list: list[int] | None = None,
        no_scale_embedding: bool = False,
        norm_type: str = "simplermsnorm",
        bias: bool = False,
        decay_schedule: str = "tnl",
        token_mixer: str = "tnl",
        channel_mixer: str = "sglu",
        num_key_value_heads: int | None = None,
        position_encoding: str = "rope",
        rope_theta: float = 10000.0,
        sliding_window: int | None = None,
        qk_norm: bool = False,
        hybrid_block_size: int = 64,
        max_position_embeddings: int = 65536,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        embed_dropout: float | None = None,
        activation_dropout: float = 0.0,
        attn_backend: str = "auto",
        fused_mixer: bool = True,
        fold_qk_activation: bool = True,
        norm_backend: str = "auto",
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.use_cache = use_cache
        self.init_std = init_std
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_attention_heads = decoder_attention_heads
        self.decoder_layers = decoder_layers
        self.add_bos_token = add_bos_token
        self.glu_dim = glu_dim if glu_dim not in (None, -1) else decoder_embed_dim  # official: -1 means d
        self.hidden_dim = hidden_dim if hidden_dim is not None else decoder_embed_dim
        self.linear_act_fun = linear_act_fun
        if linear_use_lrpe_list is None or len(linear_use_lrpe_list) == 0:
            linear_use_lrpe_list = [1] + [0] * (decoder_layers - 1)  # released models: LRPE on the first layer
        self.linear_use_lrpe_list = [int(x) for x in linear_use_lrpe_list]
        self.no_scale_embedding = no_scale_embedding
        self.norm_type = norm_type
        self.bias = bias
        self.decay_schedule = decay_schedule
        self.token_mixer = token_mixer
        self.channel_mixer = channel_mixer
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else decoder_attention_heads
        self.position_encoding = position_encoding
        self.rope_theta = rope_theta
        self.sliding_window = sliding_window
        self.qk_norm = qk_norm
        self.hybrid_block_size = hybrid_block_size
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.embed_dropout = embed_dropout
        self.activation_dropout = activation_dropout
        self.attn_backend = attn_backend
        self.fused_mixer = fused_mixer
        self.fold_qk_activation = fold_qk_activation
        self.norm_backend = norm_backend
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"TransnormerConfig: {msg}")

        need(self.token_mixer in TOKEN_MIXERS, f"token_mixer must be one of {TOKEN_MIXERS}, got {self.token_mixer!r}")
        need(self.channel_mixer in CHANNEL_MIXERS, f"channel_mixer must be one of {CHANNEL_MIXERS}")
        need(self.decay_schedule in DECAY_SCHEDULES, f"decay_schedule must be one of {DECAY_SCHEDULES}")
        need(self.position_encoding in POSITION_ENCODINGS, f"position_encoding must be one of {POSITION_ENCODINGS}")
        need(self.norm_type == "simplermsnorm", f"norm_type {self.norm_type!r} not implemented (simplermsnorm)")
        need(self.decoder_layers >= 1, "decoder_layers must be >= 1")
        need(len(self.linear_use_lrpe_list) == self.decoder_layers,
             f"linear_use_lrpe_list has {len(self.linear_use_lrpe_list)} entries for {self.decoder_layers} layers")
        h = self.decoder_attention_heads
        need(self.hidden_dim % h == 0, f"hidden_dim {self.hidden_dim} must be divisible by {h} heads")
        kv = self.num_key_value_heads
        need(isinstance(kv, int) and 1 <= kv <= h and h % kv == 0,
             f"num_key_value_heads must divide decoder_attention_heads ({h}), got {kv!r}")
        need(self.hybrid_block_size >= 1, "hybrid_block_size must be >= 1")
        need(self.channel_mixer != "mlp" or self.glu_dim % 2 == 0,
             f"channel_mixer 'mlp' needs an even glu_dim (its hidden size is 3 * glu_dim / 2), got {self.glu_dim}")
        for name in ("dropout", "attention_dropout", "embed_dropout", "activation_dropout"):
            value = getattr(self, name)
            need((value is None and name == "embed_dropout")
                 or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1),
                 f"{name} must be in [0, 1), got {value!r}")
        need(self.sliding_window is None or self.sliding_window >= 1, "sliding_window must be None or >= 1")
        for name in ("fused_mixer", "fold_qk_activation"):
            value = getattr(self, name)
            need(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        need(self.attn_backend in ATTN_BACKENDS,
             f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        need(self.norm_backend in NORM_BACKENDS,
             f"norm_backend must be one of {NORM_BACKENDS}, got {self.norm_backend!r}")
