"""TransNormerLLM as a Hugging Face causal LM (Qin et al. 2023, arXiv:2307.14995).

Block (pre-norm):  x <- x + TokenMixer(SRMSNorm(x));  x <- x + ChannelMixer(SRMSNorm(x)).
TNL token mixer (NormLinearAttention): q, k, v, u = split(W x); q, k <- act(q), act(k); optional LRPE;
  o = lightning_attn(q, k, v, decay) (S_t = lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t, no 1/sqrt(d));
  out = W_o (u * SRMSNorm(o)).
SGLU channel mixer: l3(l1(x) * l2(x)) (no activation); SwiGLU: l3(silu(l1 x) * l2 x); MLP: fc2(gelu(fc1 x)).

The pieces live beside this file: norm_linear_attention.py (the TNL mixer), layers.py (norms, positions, decay,
SGLU), memory_saving.py (autograd Functions), fused_mixer.py (the mixer as one op), baselines.py (softmax and
hybrid mixers), cache.py (decoding cache). Exported folders name `modeling_transnormer.TransnormerForCausalLM` in
config.json's auto_map, so the model classes stay here. Export constraint: these files import only torch,
transformers, the standard library, each other and tnl's ops (the exporter copies them into the folder).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..ops.cross_entropy import fused_linear_cross_entropy
from .baselines import HybridAttention, SoftmaxAttention
from .cache import TransnormerCache
from .configuration_transnormer import TransnormerConfig
from .layers import HeadRMSNorm, Lrpe, MixerInputs, SRMSNorm, channel_mixer, doc_ids, sinusoidal_embedding
from .norm_linear_attention import NormLinearAttention

# the outputs' cache field: `cache` from transformers 5 (its old name `past_key_values` still works there, with a
# deprecation warning on every use), `past_key_values` before (exports load with older versions too)
_CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

_TF_MAJOR = int(transformers.__version__.split(".")[0])


_TOKEN_MIXERS = {"tnl": NormLinearAttention, "softmax": SoftmaxAttention, "hybrid": HybridAttention}


class TransnormerDecoderLayer(nn.Module):
    """Pre-norm block: x + TokenMixer(SRMSNorm(x)), then x + ChannelMixer(SRMSNorm(x))."""

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.token_norm = SRMSNorm(norm_backend=config.norm_backend)
        self.channel_norm = SRMSNorm(norm_backend=config.norm_backend)
        self.token_mixer = _TOKEN_MIXERS[config.token_mixer](config, layer_idx)
        self.channel_mixer = channel_mixer(config)
        # on each mixer's output before the residual add (fairseq's dropout)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, inp: MixerInputs) -> torch.Tensor:
        x = x + self.dropout(self.token_mixer(self.token_norm(x), inp))
        return x + self.dropout(self.channel_mixer(self.channel_norm(x)))


class TransnormerPreTrainedModel(PreTrainedModel):
    config_class = TransnormerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransnormerDecoderLayer"]
    _skip_keys_device_placement = "past_key_values"
    _keys_to_ignore_on_load_unexpected = [r"decoder\.version"]
    _supports_cache_class = True
    _is_stateful = True  # a recurrent state cannot be rolled back (no assisted decoding)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """N(0, init_std) for linear and embedding weights, zero biases, LRPE theta to its closed form."""
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, Lrpe):
            if not getattr(module.theta, "_is_hf_initialized", False):
                module.theta.copy_(Lrpe.initial_theta(module.num_heads, module.head_dim))
        elif isinstance(module, HeadRMSNorm):
            nn.init.ones_(module.weight)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """HF save_pretrained, writing `auto_map` for AutoConfig / AutoModelForCausalLM. Inside the tnl package the
        model sources are not copied (transformers cannot follow the `..ops` import); tnl's exporter does that."""
        cls = type(self)
        if not cls.__module__.startswith("tnl.model"):
            return super().save_pretrained(save_directory, *args, **kwargs)
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoConfig", "configuration_transnormer.TransnormerConfig")
        auto_map.setdefault("AutoModelForCausalLM", "modeling_transnormer.TransnormerForCausalLM")
        self.config.auto_map = auto_map
        had = "_auto_class" in cls.__dict__
        saved = cls.__dict__.get("_auto_class")
        cls._auto_class = None
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if had:
                cls._auto_class = saved
            else:
                del cls._auto_class

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a DynamicCache: the model creates its own TransnormerCache
        return False


class TransnormerModel(TransnormerPreTrainedModel):
    """Embedding (scaled by sqrt(d) unless no_scale_embedding), decoder layers and the final SRMSNorm."""

    def __init__(self, config: TransnormerConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.decoder_embed_dim, self.padding_idx)
        self.layers = nn.ModuleList(TransnormerDecoderLayer(config, i) for i in range(config.decoder_layers))
        self.final_norm = SRMSNorm(norm_backend=config.norm_backend)
        self.embed_scale = 1.0 if config.no_scale_embedding else math.sqrt(config.decoder_embed_dim)
        p = config.dropout if config.embed_dropout is None else config.embed_dropout  # after scaling and positions
        self.embed_dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: TransnormerCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        cfg = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        # by default no cache while training: the final states would be computed and kept for nothing
        use_cache = use_cache if use_cache is not None else (cfg.use_cache and not self.training)
        return_dict = return_dict if return_dict is not None else getattr(cfg, "return_dict", True)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale
        b, t = inputs_embeds.shape[:2]
        if cu_seqlens is not None:
            if b != 1:
                raise ValueError(f"cu_seqlens needs a packed batch of one row (B = 1), got B = {b}")
            if use_cache and past_key_values is not None:
                raise ValueError("cu_seqlens (packed documents) cannot be combined with past_key_values")
            use_cache = False
            attention_mask = None
        if self.gradient_checkpointing and self.training:
            use_cache = False  # a cache written inside a recomputed block would be updated twice
        if past_key_values is not None and not isinstance(past_key_values, TransnormerCache):
            # e.g. an empty DynamicCache from a generic caller: a recurrent model needs its own cache
            if isinstance(past_key_values, Cache) and past_key_values.get_seq_length() == 0:
                past_key_values = None
            else:
                raise TypeError(f"past_key_values must be a TransnormerCache (or None), got {type(past_key_values)}")
        if use_cache and past_key_values is None:
            past_key_values = TransnormerCache(cfg.decoder_layers)
        if not use_cache:
            past_key_values = None
        past = past_key_values.get_seq_length() if past_key_values is not None else 0

        key_mask, full_key_mask = None, None
        if attention_mask is not None:
            am = attention_mask.to(inputs_embeds.device).bool()
            if am.shape[1] == t and past > 0:  # mask of the new tokens only: cached ones count as real
                am = torch.cat([am.new_ones(b, past), am], dim=1)
            elif am.shape[1] != past + t:
                raise ValueError(f"attention_mask has {am.shape[1]} columns; expected {t} or past + new = {past + t}")
            if not bool(am.all()):  # something is masked (else: take the unmasked fast paths)
                key_mask, full_key_mask = am[:, -t:], am
        positions = self._positions(position_ids, attention_mask, cu_seqlens, past, t, inputs_embeds.device)
        if cfg.token_mixer != "tnl" and cfg.position_encoding == "sinusoidal":  # TNL uses LRPE instead
            pe = sinusoidal_embedding(positions, cfg.decoder_embed_dim, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds + pe.to(inputs_embeds)

        inp = MixerInputs(positions, key_mask, full_key_mask, cu_seqlens, past_key_values)
        hidden = self.embed_dropout(inputs_embeds)
        all_hidden = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden,)
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(layer.__call__, hidden, inp)
            else:
                hidden = layer(hidden, inp)
        hidden = self.final_norm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        if not return_dict:
            return tuple(x for x in (hidden, past_key_values, all_hidden) if x is not None)
        return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=all_hidden, **{_CACHE: past_key_values})

    @staticmethod
    def _positions(
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        past: int,
        t: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Token positions [B or 1, T]: restart per packed document; count only real tokens under a padding mask
        (left padding); otherwise continue from the cache offset."""
        if position_ids is not None:
            return position_ids[:, -t:].to(device)
        if cu_seqlens is not None:
            ar = torch.arange(t, device=device)
            return (ar - cu_seqlens.to(device).long()[doc_ids(cu_seqlens.to(device), t)])[None]
        if attention_mask is not None:
            am = attention_mask.to(device).long()
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            if am.shape[1] == t and past > 0:
                pos = pos + past
            return pos[:, -t:]
        return torch.arange(past, past + t, device=device)[None]


class TransnormerForCausalLM(TransnormerPreTrainedModel, GenerationMixin):
    """TransNormerLLM causal LM: `model` (TransnormerModel) and `lm_head` tied to the embedding."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if _TF_MAJOR >= 5 else ["lm_head.weight"]

    def __init__(self, config: TransnormerConfig) -> None:
        super().__init__(config)
        self.model = TransnormerModel(config)
        self.lm_head = nn.Linear(config.decoder_embed_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> TransnormerModel:
        return self.model

    def set_decoder(self, decoder: TransnormerModel) -> None:
        self.model = decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: TransnormerCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        upcast_logits: bool = False,
        shift_labels: bool = True,
        loss_chunk_size: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Causal LM forward. `labels` are shifted inside (predict token i+1 at i), -100 ignored, mean loss in fp32.
        `cu_seqlens` (int32 [N+1], B = 1): packed documents, no state crosses documents. `logits_to_keep`: only the
        last n positions (int) or the given indices (tensor) get logits. `upcast_logits`: return fp32 logits.
        `shift_labels=False`: labels are already next-token targets aligned with the inputs. `loss_chunk_size > 0`
        (with labels): fused linear cross-entropy over chunks of that many tokens (loss and gradients in one pass,
        never the full logits) and no logits are returned."""
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            return_dict=True, cu_seqlens=cu_seqlens, position_ids=position_ids,
        )
        hidden, cache = out.last_hidden_state, getattr(out, _CACHE)
        if labels is not None and loss_chunk_size > 0:
            targets = labels if not shift_labels else F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = fused_linear_cross_entropy(hidden, self.lm_head.weight, targets, chunk_size=loss_chunk_size)
            if not return_dict:
                return tuple(x for x in (loss, cache, out.hidden_states) if x is not None)
            return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=out.hidden_states, **{_CACHE: cache})
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        if upcast_logits:
            logits = logits.float()
        loss = None
        if labels is not None:
            pred = logits[:, :-1] if shift_labels else logits
            targets = (labels[:, 1:] if shift_labels else labels).to(logits.device)
            loss = F.cross_entropy(pred.float().reshape(-1, pred.shape[-1]), targets.reshape(-1), ignore_index=-100)
        if not return_dict:
            rest = tuple(x for x in (logits, cache, out.hidden_states) if x is not None)
            return ((loss,) + rest) if loss is not None else rest
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states, **{_CACHE: cache})

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: TransnormerCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = True,
        logits_to_keep: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Feed only the tokens the recurrent cache has not consumed; the prompt's embeddings only on the first step."""
        past = past_key_values.get_seq_length() if isinstance(past_key_values, Cache) else 0
        inputs: dict[str, Any] = {}
        if past > 0:
            # a prompt given as embeddings is in the cache but not in input_ids (which holds generated tokens)
            consumed = past - inputs_embeds.shape[1] if inputs_embeds is not None else past
            inputs["input_ids"] = input_ids[:, consumed:]
        elif inputs_embeds is not None:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids
        inputs.update(
            past_key_values=past_key_values if past > 0 else None,
            attention_mask=attention_mask,
            use_cache=use_cache,
            logits_to_keep=1 if logits_to_keep is None else logits_to_keep,
        )
        return inputs
