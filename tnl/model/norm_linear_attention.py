"""The TNL token mixer (paper eq. 5-7): gated, SRMS-normalised linear attention with decay and optional LRPE."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.lightning_attn import lightning_attn, recurrent_lightning_attn_step, resolve_backend
from .configuration_transnormer import TransnormerConfig
from .fused_mixer import gated_attention_output
from .layers import GATE_NORM_EPS, DecayMixin, Lrpe, MixerInputs, decay_rates, gated_srms_norm, get_activation
from .memory_saving import GatedNormLinear


class NormLinearAttention(nn.Module, DecayMixin):
    """TNL token mixer (paper eq. 5-7): gated, SRMS-normalized linear attention with decay and optional LRPE."""

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.decoder_attention_heads
        self.num_kv_heads = config.num_key_value_heads  # grouped k/v heads (GQA): H / Hkv q heads share one
        self.hidden_dim = config.hidden_dim
        self.head_dim = config.hidden_dim // self.num_heads
        self.kv_dim = self.num_kv_heads * self.head_dim
        # packed [q | k | v | u]: H, Hkv, Hkv and H heads (4 * hidden_dim without GQA, the official layout)
        self.qkvu_proj = nn.Linear(config.decoder_embed_dim, 2 * (config.hidden_dim + self.kv_dim), bias=config.bias)
        self.out_proj = nn.Linear(config.hidden_dim, config.decoder_embed_dim, bias=config.bias)
        self.act = get_activation(config.linear_act_fun)
        # SiLU can run inside the attention op (the Triton kernels apply it as they load q and k, so SiLU(q),
        # SiLU(k) are never written or kept for backward); not with LRPE, which comes between SiLU and attention.
        # Eager mode only: under torch.compile Inductor fuses SiLU into neighbouring kernels for free, while the
        # folded kernels are slower (q and k go through registers into the dots: H100, tnl_385m compiled 176.3k
        # tokens/s unfolded vs 170.3k folded; eager within 1%, with 2.9 GiB less memory folded). Compiled, SiLU(q),
        # SiLU(k) go to the op beside the raw q, k (qk_activated): its backward applies SiLU' as it writes dq, dk,
        # instead of Inductor's SiLU backward over re-read q, k (H100, T=2048: 178.3k / 177.5k vs 175.5k / 174.0k
        # tokens/s, same memory). config.fold_qk_activation=False leaves SiLU and its backward to PyTorch / Inductor.
        self.act_in_attention = config.linear_act_fun in ("silu", "swish") and config.fold_qk_activation
        # attention, gate and output projection as one op where SiLU goes to the Triton kernels, when training or
        # compiled (fused_mixer.py: no concatenation of dq, dk, dv, du in backward; H100, tnl_385m: +2.3% compiled,
        # +4-8% eager)
        self.fused_output = config.fused_mixer
        self.norm_backend = config.norm_backend
        self.use_lrpe = bool(config.linear_use_lrpe_list[layer_idx])
        if self.use_lrpe:  # one angle set per k/v head, shared by its q heads (the relative property needs it)
            self.lrpe = Lrpe(self.num_kv_heads, self.head_dim)
        self.decay_list = decay_rates(config, layer_idx)
        self.backend = config.attn_backend

    def forward(self, x: torch.Tensor, inp: MixerInputs) -> torch.Tensor:
        b, t, _ = x.shape
        h, hkv, dh = self.num_heads, self.num_kv_heads, self.head_dim
        qkvu = self.qkvu_proj(x)
        if hkv == h:  # chunk, not split: compiled, the partitioner then recomputes SiLU(q), SiLU(k) (split keeps one)
            q, k, v, u = qkvu.chunk(4, dim=-1)
        else:
            q, k, v, u = qkvu.split((self.hidden_dim, self.kv_dim, self.kv_dim, self.hidden_dim), dim=-1)
        layer = inp.cache.layer(self.layer_idx) if inp.cache is not None else None
        state = layer.state if layer is not None else None
        decoding = state is not None and t == 1
        fusable = self.act_in_attention and not self.use_lrpe and inp.key_mask is None and not decoding
        fold = fusable and not torch.compiler.is_compiling()
        activated = None
        if fusable and not fold:  # compiled: Inductor computes SiLU(q), SiLU(k); the op applies SiLU' in backward
            activated = (self.act(q).view(b, t, h, dh), self.act(k).view(b, t, hkv, dh))
        if fusable and self.fused_output and layer is None and (activated is not None or torch.is_grad_enabled()) \
                and resolve_backend(self.backend, q) == "triton":
            # attention, gate and output projection as one op (fused_mixer.py); eager: SiLU inside the kernels
            w = self.out_proj.weight
            out = gated_attention_output(qkvu, *(activated or (None, None)), self.decay(x.device, x.dtype),
                                         w.to(qkvu.dtype), h, GATE_NORM_EPS, cu_seqlens=inp.cu_seqlens,
                                         norm_backend=self.norm_backend, kv_heads=hkv)
            return out + self.out_proj.bias.to(out.dtype) if self.out_proj.bias is not None else out
        if not fold and activated is None:
            q, k = self.act(q), self.act(k)
        q, k, v = q.view(b, t, h, dh), k.view(b, t, hkv, dh), v.view(b, t, hkv, dh)
        if self.use_lrpe:
            q, k = self.lrpe(q, inp.positions), self.lrpe(k, inp.positions)
        if inp.key_mask is not None:  # pad tokens never enter the state
            m = inp.key_mask[:, :, None, None].to(k.dtype)
            k, v = k * m, v * m
        decay = self.decay(x.device, x.dtype)
        if decoding:  # one recurrent update
            o, new_state = recurrent_lightning_attn_step(q[:, 0], k[:, 0], v[:, 0], decay, state)
            o = o[:, None]
        else:
            o, new_state = lightning_attn(
                q, k, v, decay, initial_state=state, output_final_state=layer is not None,
                cu_seqlens=inp.cu_seqlens, backend=self.backend,
                qk_activation="silu" if fold or activated is not None else None, qk_activated=activated,
            )
        if layer is not None:
            if layer.static and state is not None:
                state.copy_(new_state)
            else:
                layer.state = new_state
            layer.seen += t
        o = o.reshape(b, t, h * dh)  # one norm over all heads together, times the gate u
        w = self.out_proj.weight
        if torch.is_grad_enabled() and (o.requires_grad or u.requires_grad or w.requires_grad) \
                and not torch.compiler.is_compiling():
            return GatedNormLinear.apply(o, u, GATE_NORM_EPS, w, self.out_proj.bias, self.norm_backend)
        return self.out_proj(gated_srms_norm(o, u, GATE_NORM_EPS, self.norm_backend))
