"""TransNormerLLM as a Hugging Face causal LM (Qin et al. 2023, arXiv:2307.14995), with softmax baselines.

Block (pre-norm):  x <- x + TokenMixer(SRMSNorm(x));  x <- x + ChannelMixer(SRMSNorm(x)).
TNL token mixer (NormLinearAttention): q, k, v, u = split(W x); q, k <- act(q), act(k); optional LRPE;
  o = lightning_attn(q, k, v, decay) (S_t = lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t, no 1/sqrt(d));
  out = W_o (u * SRMSNorm(o)).
SGLU channel mixer: l3(l1(x) * l2(x)) (no activation); SwiGLU: l3(silu(l1 x) * l2 x).

Export constraint: this file imports only torch / transformers / stdlib, its sibling configuration module and
the attention op through the single line below (the exporter rewrites it to a flattened local copy).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
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
from ..ops.lightning_attn import lightning_attn, recurrent_lightning_attn_step, resolve_backend
from ..ops.srms_norm import gated_norm_backward, gated_norm_forward, norm_backward, norm_forward
from .configuration_transnormer import TransnormerConfig
from .fused_mixer import gated_attention_output, gated_linear_backward

_TF_MAJOR = int(transformers.__version__.split(".")[0])

# ----------------------------------------------------------------------------------------------------------------
# Small building blocks
# ----------------------------------------------------------------------------------------------------------------


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (float64 tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SRMSNormToLowPrecision(torch.autograd.Function):
    """SRMSNorm of an fp32 input returned in the autocast dtype, keeping that output (not the fp32 input) for
    backward: y = x r with r = (mean(x^2) + eps)^-1/2 gives dx = r (dy - y mean(dy y)), which needs only y and r.
    The next Linear keeps the same y, so a block saves no fp32 copy of the residual stream (Apex's
    "memory_efficient" RMSNorm makes the same trade: the backward reads y rounded to bf16)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
        y, r = norm_forward(x, eps, out_dtype)
        ctx.save_for_backward(y, r)
        ctx.x_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        y, r = ctx.saved_tensors
        return norm_backward(dy, y, r, ctx.x_dtype), None, None


class _GatedSRMSNorm(torch.autograd.Function):
    """u * SRMSNorm(o) in one step: keeps o, u and r = (mean(o^2) + eps)^-1/2 for backward instead of an fp32 copy
    of o and the normalised o, and rounds once (the product is formed in fp32). Exact: it saves its inputs."""

    @staticmethod
    def forward(ctx, o: torch.Tensor, u: torch.Tensor, eps: float) -> torch.Tensor:
        y, r = gated_norm_forward(o, u, eps)
        ctx.save_for_backward(o, u, r)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        o, u, r = ctx.saved_tensors
        do, du = gated_norm_backward(dy, o, u, r)
        return do, du, None


class _GatedNormLinear(torch.autograd.Function):
    """linear(u * SRMSNorm(o), W, bias) keeping only o, u and r for backward: the normalised, gated product (the
    Linear's input) is formed again in backward for W's gradient instead of being kept, one hidden_dim-wide bf16
    tensor less per token and block (7% of a tnl_385m block's saved activations). Used in eager mode where the
    fused mixer op (fused_mixer.py) is not (LRPE layers, padded batches, the PyTorch attention backend); under
    torch.compile the partitioner makes this trade itself."""

    @staticmethod
    def forward(ctx, o: torch.Tensor, u: torch.Tensor, eps: float, weight: torch.Tensor, bias: torch.Tensor | None):
        y, r = gated_norm_forward(o, u, eps)
        dtype = _autocast_dtype(o) or y.dtype
        ctx.dtype, ctx.has_bias = dtype, bias is not None
        ctx.save_for_backward(o, u, r, weight)
        with torch.autocast(o.device.type, enabled=False):
            return F.linear(y.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        o, u, r, weight = ctx.saved_tensors
        # the fused mixer's backward (the gated product formed again by the gate's backward kernel), in ctx.dtype
        do, du, dw = gated_linear_backward(dout, o, u, r, weight.to(ctx.dtype))
        dbias = dout.reshape(-1, dout.shape[-1]).to(ctx.dtype).sum(0).to(weight.dtype) if ctx.has_bias else None
        return do, du, None, dw.to(weight.dtype), dbias


def _linear_backward(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype,
                     has_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dx, dW, dbias) of linear(x, W, bias) computed in `dtype` (the autocast dtype of the forward), for the
    Functions here that form a Linear's input again in backward instead of keeping it (SGLU's)."""
    with torch.autocast(x.device.type, enabled=False):
        dout = dout.to(dtype)
        d2 = dout.reshape(-1, dout.shape[-1])
        dw = d2.t() @ x.to(dtype).reshape(-1, x.shape[-1])
        dbias = d2.sum(0).to(weight.dtype) if has_bias else None
        return dout @ weight.to(dtype), dw.to(weight.dtype), dbias


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def srms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """SimpleRMSNorm (TNL paper eq. 9): x / sqrt(mean(x^2) + eps), no weight, computed in fp32."""
    low = _autocast_dtype(x) if x.dtype == torch.float32 and x.requires_grad and torch.is_grad_enabled() else None
    if low is not None and low != torch.float32:  # training under autocast: see _SRMSNormToLowPrecision
        return _SRMSNormToLowPrecision.apply(x, eps, low)
    xf = x.to(_acc(x.dtype))
    # F.rms_norm without weight is exactly x * rsqrt(mean(x^2) + eps), fused on GPU (fewer kernels when decoding)
    return F.rms_norm(xf, (xf.shape[-1],), eps=eps).to(x.dtype)


GATE_NORM_EPS = 1e-6


def gated_srms_norm(o: torch.Tensor, u: torch.Tensor, eps: float = GATE_NORM_EPS) -> torch.Tensor:
    """u * SRMSNorm(o), the TNL token mixer's output gate (paper eq. 7)."""
    if torch.compiler.is_compiling() and o.dtype == u.dtype == torch.float32:
        # plain tensor ops (Inductor derives the backward): traced through _GatedSRMSNorm, fp32 training under
        # torch.compile on CUDA got zero gradients for o and u, so for qkvu_proj and LRPE, with the loss right
        # (torch 2.11, H100; bf16 autocast, whose measured speed this keeps, and CPU were right; cause not found).
        # scripts/check_model_gpu.py --only compile compares compiled with eager training.
        return gated_norm_forward(o, u, eps)[0]
    if torch.is_grad_enabled() and (o.requires_grad or u.requires_grad):
        return _GatedSRMSNorm.apply(o, u, eps)
    return gated_norm_forward(o, u, eps)[0]  # inference: the training Function's arithmetic (one rounding)


class SRMSNorm(nn.Module):
    """Weightless SimpleRMSNorm module (no parameters, so official state dicts have no entry for it)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return srms_norm(x, self.eps)


class HeadRMSNorm(nn.Module):
    """RMSNorm with a learned weight over the last dim (q/k norm of the softmax baseline)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return srms_norm(x, self.eps) * self.weight.to(x.dtype)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "elu": F.elu,
    "1+elu": lambda x: 1 + F.elu(x),
    "sigmoid": torch.sigmoid,
    "none": lambda x: x,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown linear_act_fun {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def alibi_slopes(n: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022): s_h = 2^(-8(h+1)/n) for n a power of two, else ALiBi's interleaving."""

    def power_of_2(m: int) -> list[float]:
        start = 2.0 ** (-8.0 / m)
        return [start ** (i + 1) for i in range(m)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n - closest]


def decay_rates(config: TransnormerConfig, layer_idx: int) -> list[float]:
    """Per-head decay rates s >= 0 of layer `layer_idx` (lambda = exp(-s)).

    "tnl" (released code): s_h * (1 - l/(L-1) + 1e-5), so the last layer barely decays; L = 1 uses factor 1 + 1e-5.
    "paper" (TNL paper sec. 3.1.1): lambda = exp(-(8h/H) * (1 - l/L)), h = 1..H.  "none": no decay.
    """
    h, n_layers = config.decoder_attention_heads, config.decoder_layers
    if config.decay_schedule == "none":
        return [0.0] * h
    if config.decay_schedule == "paper":
        return [8.0 * (i + 1) / h * (1.0 - layer_idx / n_layers) for i in range(h)]
    frac = layer_idx / (n_layers - 1) if n_layers > 1 else 0.0
    return [s * (1.0 - frac + 1e-5) for s in alibi_slopes(h)]


class Lrpe(nn.Module):
    """Linearized relative positional encoding (Qin et al. 2023, "Linearized Relative Positional Encoding").

    theta_{h,j} = 10000^(-2 (h D + j) / (H D)); x_n -> [x_n cos(n theta), x_n sin(n theta)] (doubles the head dim).
    The dot product of two encoded vectors depends only on n - m, so absolute offsets are harmless.
    """

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.theta = nn.Parameter(self.initial_theta(num_heads, head_dim))

    @staticmethod
    def initial_theta(num_heads: int, head_dim: int) -> torch.Tensor:
        d = num_heads * head_dim
        return (10000.0 ** (-2.0 / d * torch.arange(d, dtype=torch.float32))).reshape(num_heads, 1, head_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [B, T, H, D]; positions: [B or 1, T] integer. Returns [B, T, H, 2D] in x's dtype."""
        acc = _acc(x.dtype)
        ang = positions.to(acc)[:, :, None, None] * self.theta.to(acc).view(1, 1, self.num_heads, -1)
        xf = x.to(acc)
        return torch.cat([xf * torch.cos(ang), xf * torch.sin(ang)], dim=-1).to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (Su et al. 2021), rotate-half layout. positions [B or 1, T] -> cos, sin [B or 1, T, 1, dim]."""
    acc = _acc(dtype)
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=acc) / dim)
    ang = positions.to(acc)[..., None] * inv_freq
    ang = torch.cat([ang, ang], dim=-1)[:, :, None, :]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]. x*cos + rotate_half(x)*sin, in fp32 (fp64 for fp64)."""
    xf = x.to(cos.dtype)
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def sinusoidal_embedding(positions: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Absolute sinusoidal positions (Vaswani et al. 2017), halves [sin | cos]: [B or 1, T] -> [.., T, dim]."""
    half, acc = dim // 2, _acc(dtype)
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=acc) / half)
    ang = positions.to(acc)[..., None] * freq
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class SGLU(nn.Module):
    """Simple GLU channel mixer (TNL paper eq. 8): l3(l1(x) * l2(x)); `swiglu=True` adds SiLU on the l1 branch."""

    def __init__(self, dim: int, glu_dim: int, bias: bool = False, swiglu: bool = False) -> None:
        super().__init__()
        self.swiglu = swiglu
        self.l1 = nn.Linear(dim, glu_dim, bias=bias)
        self.l2 = nn.Linear(dim, glu_dim, bias=bias)
        self.l3 = nn.Linear(glu_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.l1(x)
        if self.swiglu:
            a = F.silu(a)
        b = self.l2(x)
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or self.l3.weight.requires_grad):
            return _ProductLinear.apply(a, b, self.l3.weight, self.l3.bias)
        return self.l3(a * b)


class _ProductLinear(torch.autograd.Function):
    """linear(a * b, W, bias) that keeps a and b (which the product's backward needs anyway) and forms a * b again
    in backward for W's gradient, instead of also keeping the product: one glu_dim-wide tensor less per token
    and block. Under autocast it computes in the autocast dtype, as nn.Linear would."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        dtype = _autocast_dtype(a) or torch.promote_types(a.dtype, b.dtype)
        ctx.dtype, ctx.has_bias = dtype, bias is not None
        ctx.save_for_backward(a, b, weight)
        with torch.autocast(a.device.type, enabled=False):
            return F.linear((a * b).to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        a, b, weight = ctx.saved_tensors
        with torch.autocast(a.device.type, enabled=False):
            dp, dw, dbias = _linear_backward(dy, (a * b).to(ctx.dtype), weight, ctx.dtype, ctx.has_bias)
            da = (dp * b).to(a.dtype) if ctx.needs_input_grad[0] else None
            db = (dp * a).to(b.dtype) if ctx.needs_input_grad[1] else None
        return da, db, dw, dbias


# ----------------------------------------------------------------------------------------------------------------
# Recurrent cache
# ----------------------------------------------------------------------------------------------------------------


class TransnormerCacheLayer:
    """Per-layer decoding state. TNL: `state` [B, H, D, E] fp32 only (constant memory). Softmax: `keys`/`values`
    [B, Hkv, S, Dh]. Hybrid: `state` over completed blocks + `keys`/`values`/`lin_keys` of the current partial block.
    `seen` counts tokens consumed (LRPE / RoPE position offset)."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False
    is_initialized = True

    def __init__(self) -> None:
        self.static = False  # True: decode steps update `state` in place (fixed address, for CUDA graphs)
        self.state: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.lin_keys: torch.Tensor | None = None
        self.seen = 0

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for name in ("state", "keys", "values", "lin_keys"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def reset(self) -> None:
        self.__init__()

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:  # nothing to offload: states are small
        pass

    def prefetch(self) -> None:
        pass

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError("a recurrent state cannot be rolled back; TransnormerCache does not support crop")


class TransnormerCache(Cache):
    """`past_key_values` of `TransnormerForCausalLM`: one `TransnormerCacheLayer` per decoder layer.

    Works with `generate()` (greedy, sampling, beam search through `reorder_cache`, and batch expansion).
    Rolling back tokens (`crop`, assisted decoding) is not possible for a recurrent state.
    """

    is_compileable = False

    def __init__(self, num_layers: int = 0) -> None:
        layers = [TransnormerCacheLayer() for _ in range(num_layers)]
        try:  # transformers >= 5: Cache(layers=...)
            super().__init__(layers=layers)
        except TypeError:  # transformers 4.x
            super().__init__()
            self.layers = layers

    def layer(self, idx: int) -> TransnormerCacheLayer:
        while len(self.layers) <= idx:
            self.layers.append(TransnormerCacheLayer())
        return self.layers[idx]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"TransnormerCache(layers={len(self.layers)}, seen={self.get_seq_length()})"

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        idx = layer_idx or 0
        return self.layers[idx].seen if idx < len(self.layers) else 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def get_usable_length(self, new_seq_length: int, layer_idx: int | None = 0) -> int:
        return self.get_seq_length(layer_idx)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length + self.get_seq_length(layer_idx), 0

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return len(self.layers) > 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            layer.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for layer in self.layers:
            layer.batch_select_indices(indices)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def crop(self, max_length: int) -> None:
        if max_length < 0 or max_length < self.get_seq_length():
            raise NotImplementedError("TransnormerCache holds a recurrent state and cannot be cropped")

    def make_static(self, static: bool = True) -> None:
        """Update TNL states in place from now on (their addresses stay fixed, so a decode step can be graphed).
        Positions then must come from `position_ids`, as the Python-side offset is not replayed."""
        for layer in self.layers:
            layer.static = static

    def memory_bytes(self) -> int:
        """Bytes held by all cached tensors (for constant-memory checks)."""
        total = 0
        for layer in self.layers:
            for t in (layer.state, layer.keys, layer.values, layer.lin_keys):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total


# ----------------------------------------------------------------------------------------------------------------
# Token mixers
# ----------------------------------------------------------------------------------------------------------------


class MixerInputs:
    """What every token mixer gets besides x (kept in one object so checkpointed calls stay positional)."""

    def __init__(
        self,
        positions: torch.Tensor,
        key_mask: torch.Tensor | None,
        full_key_mask: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        cache: TransnormerCache | None,
    ) -> None:
        self.positions = positions  # [B or 1, T] position of each new token
        self.key_mask = key_mask  # [B, T] bool, True = real token (None: all real)
        self.full_key_mask = full_key_mask  # [B, past + T] bool over cached + new tokens (softmax), or None
        self.cu_seqlens = cu_seqlens
        self.cache = cache


class DecayMixin:
    """Per-head decay rates as a device-cached tensor (not a buffer, so checkpoints and meta init stay clean)."""

    decay_list: list[float]

    def decay(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rates [H] in fp32 (fp64 when the activations are fp64)."""
        acc = _acc(dtype)
        if torch.compiler.is_compiling():
            return torch.tensor(self.decay_list, dtype=acc, device=device)
        cache = self.__dict__.setdefault("_decay_cache", {})
        key = (device, acc)
        if key not in cache:
            cache[key] = torch.tensor(self.decay_list, dtype=acc, device=device)
        return cache[key]


class NormLinearAttention(nn.Module, DecayMixin):
    """TNL token mixer (paper eq. 5-7): gated, SRMS-normalized linear attention with decay and optional LRPE."""

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.decoder_attention_heads
        self.hidden_dim = config.hidden_dim
        self.head_dim = config.hidden_dim // self.num_heads
        self.qkvu_proj = nn.Linear(config.decoder_embed_dim, 4 * config.hidden_dim, bias=config.bias)
        self.out_proj = nn.Linear(config.hidden_dim, config.decoder_embed_dim, bias=config.bias)
        self.act = get_activation(config.linear_act_fun)
        # SiLU can run inside the attention op (the Triton kernels apply it as they load q and k, so SiLU(q),
        # SiLU(k) are never written or kept for backward); not with LRPE, which comes between SiLU and attention.
        # TNL_ATTN_FOLD_ACT: "auto" (default) folds it in eager mode only: under torch.compile Inductor fuses SiLU
        # into neighbouring kernels for free, while the folded kernels are slower (the activation puts q and k on
        # the register path into the dots: H100, tnl_385m compiled 176.3k tokens/s unfolded vs 170.3k folded; eager
        # within 1%, 146-151k either way, with 2.9 GiB less memory folded). Compiled, "auto" hands SiLU(q), SiLU(k)
        # to the op beside the raw q, k (qk_activated): its backward applies SiLU' as it writes dq, dk, instead of
        # Inductor's SiLU backward over re-read q, k (H100, T=2048, separate ops: 178.3k / 177.5k vs 175.5k /
        # 174.0k tokens/s, same memory).
        # "1" always folds (under compile no memory saving since train.compile_recompute_pointwise recomputes SiLU
        # in backward), "0" never (SiLU and its backward left to PyTorch / Inductor).
        fold_env = os.environ.get("TNL_ATTN_FOLD_ACT", "auto")
        if fold_env not in ("auto", "0", "1"):
            raise ValueError(f"TNL_ATTN_FOLD_ACT must be auto, 0 or 1, got {fold_env!r}")
        self.act_in_attention = config.linear_act_fun in ("silu", "swish") and fold_env != "0"
        self.act_in_attention_compiled = self.act_in_attention and fold_env == "1"
        # TNL_FUSED_MIXER: "auto" (default) runs attention, gate and output projection as one op on layers whose
        # SiLU goes to the Triton kernels, when training or compiled (fused_mixer.py: no concatenation of dq, dk,
        # dv, du in backward; H100, tnl_385m: +2.3% compiled, +4-8% eager); "0" keeps them separate ops.
        fused_env = os.environ.get("TNL_FUSED_MIXER", "auto")
        if fused_env not in ("auto", "0"):
            raise ValueError(f"TNL_FUSED_MIXER must be auto or 0, got {fused_env!r}")
        self.fused_output = fused_env == "auto"
        self.use_lrpe = bool(config.linear_use_lrpe_list[layer_idx])
        if self.use_lrpe:
            self.lrpe = Lrpe(self.num_heads, self.head_dim)
        self.decay_list = decay_rates(config, layer_idx)
        self.backend = config.attn_backend

    def forward(self, x: torch.Tensor, inp: MixerInputs) -> torch.Tensor:
        b, t, _ = x.shape
        h, dh = self.num_heads, self.head_dim
        qkvu = self.qkvu_proj(x)
        q, k, v, u = qkvu.chunk(4, dim=-1)
        layer = inp.cache.layer(self.layer_idx) if inp.cache is not None else None
        state = layer.state if layer is not None else None
        decoding = state is not None and t == 1
        fusable = self.act_in_attention and not self.use_lrpe and inp.key_mask is None and not decoding
        fold = fusable and (self.act_in_attention_compiled or not torch.compiler.is_compiling())
        activated = None
        if fusable and not fold:  # compiled: Inductor computes SiLU(q), SiLU(k); the op applies SiLU' in backward
            activated = (self.act(q).view(b, t, h, dh), self.act(k).view(b, t, h, dh))
        if fusable and self.fused_output and layer is None and (activated is not None or torch.is_grad_enabled()) \
                and resolve_backend(self.backend, q) == "triton":
            # attention, gate and output projection as one op (fused_mixer.py); eager: SiLU inside the kernels
            w = self.out_proj.weight
            out = gated_attention_output(qkvu, *(activated or (None, None)), self.decay(x.device, x.dtype),
                                         w.to(qkvu.dtype), h, GATE_NORM_EPS, cu_seqlens=inp.cu_seqlens)
            return out + self.out_proj.bias.to(out.dtype) if self.out_proj.bias is not None else out
        if not fold and activated is None:
            q, k = self.act(q), self.act(k)
        q, k, v = q.view(b, t, h, dh), k.view(b, t, h, dh), v.view(b, t, h, dh)
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
            return _GatedNormLinear.apply(o, u, GATE_NORM_EPS, w, self.out_proj.bias)
        return self.out_proj(gated_srms_norm(o, u))


def _attend_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, key_ok: torch.Tensor | None, window: int | None
) -> torch.Tensor:
    """Boolean [B or 1, 1, Tq, Tk] mask: causal (k_pos <= q_pos), inside the window, real keys. A query always sees
    itself so rows of pad queries are never empty (their outputs are unused)."""
    qp, kp = q_pos[:, None, :, None], k_pos[:, None, None, :]
    ok = kp <= qp
    if window is not None:
        ok = ok & (kp > qp - window)
    if key_ok is not None:
        ok = ok & key_ok[:, None, None, :]
    return ok | (kp == qp)


class SoftmaxAttention(nn.Module):
    """Transformer baseline token mixer: causal softmax attention (SDPA), RoPE, GQA, optional window and q/k norm."""

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.decoder_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_dim // self.num_heads
        d = config.decoder_embed_dim
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=config.bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=config.bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=config.bias)
        self.out_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=config.bias)
        if config.qk_norm:
            self.q_norm = HeadRMSNorm(self.head_dim)
            self.k_norm = HeadRMSNorm(self.head_dim)
        self.qk_norm = config.qk_norm
        self.rope = config.position_encoding == "rope"
        self.rope_theta = config.rope_theta
        self.window = config.sliding_window
        self.attention_dropout = config.attention_dropout

    def project_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        return q, k, v

    def project(
        self, x: torch.Tensor, positions: torch.Tensor, raw: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = raw if raw is not None else self.project_raw(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q [B, Tq, H, D], k/v [B, Tk, Hkv, D], mask bool broadcastable to [B, H, Tq, Tk] or None (plain causal)."""
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        p = self.attention_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=p, is_causal=mask is None
        )
        return o.transpose(1, 2)

    def packed_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor
                         ) -> torch.Tensor:
        """Causal attention within each packed document (B = 1) without a T x T mask.

        A query only sees keys of its own document (and window), all within `span` = longest document (or window)
        positions back. Cut the row into chunks of `span` tokens: each chunk attends to itself and the chunk before,
        folded into the batch, so cost and mask are O(T * span) instead of O(T^2).
        """
        t = q.shape[1]
        dev = q.device
        doc = _doc_ids(cu_seqlens, t)
        span = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if self.window is not None:
            span = min(span, self.window)
        span = max(span, 1)
        if 2 * span >= t:  # documents as long as the row: one masked call
            idx = torch.arange(t, device=dev)[None]
            mask = _attend_mask(idx, idx, None, self.window) & (doc[:, None] == doc[None, :])[None, None]
            return self.sdpa(q, k, v, mask)
        c = span
        nc = (t + c - 1) // c
        pad = nc * c - t
        qc = F.pad(q, (0, 0, 0, 0, 0, pad)).reshape(nc, c, q.shape[2], q.shape[3])
        # keys of chunk i: positions [(i-1)c, (i+1)c), i.e. the previous chunk and its own
        kp = F.pad(k, (0, 0, 0, 0, c, pad))[0]
        vp = F.pad(v, (0, 0, 0, 0, c, pad))[0]
        kc = kp.unfold(0, 2 * c, c).permute(0, 3, 1, 2)  # [nc, 2c, Hkv, D]
        vc = vp.unfold(0, 2 * c, c).permute(0, 3, 1, 2)
        qpos = torch.arange(nc * c, device=dev).view(nc, c)
        kpos = torch.arange(-c, nc * c, device=dev).unfold(0, 2 * c, c)  # [nc, 2c]
        doc_all = F.pad(doc, (c, pad), value=-1)  # padding belongs to no document
        dq, dk = doc_all[qpos + c], doc_all[kpos + c]
        ok = (kpos[:, None, :] <= qpos[:, :, None]) & (dk[:, None, :] == dq[:, :, None]) & (dq[:, :, None] >= 0)
        if self.window is not None:
            ok &= kpos[:, None, :] > qpos[:, :, None] - self.window
        ok |= kpos[:, None, :] == qpos[:, :, None]  # no empty rows (padding queries)
        o = self.sdpa(qc, kc, vc, ok[:, None])
        return o.reshape(1, nc * c, q.shape[2], q.shape[3])[:, :t]

    def forward(self, x: torch.Tensor, inp: MixerInputs) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.project(x, inp.positions)
        layer = inp.cache.layer(self.layer_idx) if inp.cache is not None else None
        past = 0
        if layer is not None:
            if layer.keys is not None:
                past = layer.keys.shape[1]
                k, v = torch.cat([layer.keys, k], dim=1), torch.cat([layer.values, v], dim=1)
            # with a window the next query sees only the last window - 1 keys: the cache stays bounded
            keep = k.shape[1] if self.window is None else self.window - 1
            start = max(k.shape[1] - keep, 0)
            layer.keys, layer.values = k[:, start:], v[:, start:]
            layer.seen += t
        key_ok = inp.full_key_mask if inp.full_key_mask is not None else inp.key_mask
        if key_ok is not None:
            key_ok = key_ok[:, max(key_ok.shape[1] - k.shape[1], 0) :]  # the columns of the keys held here
        if inp.cu_seqlens is not None:
            return self.out_proj(self.packed_attention(q, k, v, inp.cu_seqlens).reshape(b, t, -1))
        if past == 0 and key_ok is None and self.window is None:
            mask = None
        else:
            q_idx = torch.arange(past, past + t, device=x.device)[None]
            k_idx = torch.arange(past + t, device=x.device)[None]
            mask = _attend_mask(q_idx, k_idx, key_ok, self.window)
        o = self.sdpa(q, k, v, mask)
        return self.out_proj(o.reshape(b, t, -1))


class HybridAttention(SoftmaxAttention, DecayMixin):
    """Block-hybrid mixer: softmax attention inside each block of C tokens, decayed linear attention across blocks.

    For token t in block b (tokens [bC, bC + C)), with phi = SiLU on the same q/k (before RoPE):
      o_t = softmax_attn(q_t, k_{bC..t}, v_{bC..t}) + SRMSNorm_head(sum_{s < bC} lambda^(t-s) phi(q_t) phi(k_s)^T v_s).
    The cross-block sum is a lightning-attention state over completed blocks; the cache keeps that state plus the
    keys/values of the current partial block, so decoding costs O(C + D E) per token.
    """

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.block = config.hybrid_block_size
        self.decay_list = decay_rates(config, layer_idx)
        self.window = None

    def forward(self, x: torch.Tensor, inp: MixerInputs) -> torch.Tensor:
        b, t, _ = x.shape
        if inp.cu_seqlens is not None:  # packed documents: run each separately (baseline, not a fast path)
            outs, offs = [], inp.cu_seqlens.tolist()
            for s, e in zip(offs[:-1], offs[1:]):
                if e > s:
                    sub = MixerInputs(inp.positions[:, s:e], None, None, None, None)
                    outs.append(self.forward(x[:, s:e], sub))
            return torch.cat(outs, dim=1)
        h, dh, c = self.num_heads, self.head_dim, self.block
        # phi(q), phi(k) from the pre-RoPE projections
        raw = self.project_raw(x)
        q_raw, k_raw = raw[0], raw[1]
        q, k, v = self.project(x, inp.positions, raw)
        lq, lk = F.silu(q_raw), F.silu(k_raw)
        layer = inp.cache.layer(self.layer_idx) if inp.cache is not None else None
        state, r = None, 0
        if layer is not None and layer.keys is not None:  # prepend the cached partial block
            r = layer.keys.shape[1]
            k, v, lk = (torch.cat([a, bb], 1) for a, bb in ((layer.keys, k), (layer.values, v), (layer.lin_keys, lk)))
        if layer is not None:
            state = layer.state
        n = r + t  # tokens in the context, aligned so the context starts at a block boundary
        # validity of every context key (cached partial block included): pads stay out of both parts
        key_ok = inp.full_key_mask[:, -n:] if inp.full_key_mask is not None else None
        if key_ok is not None:
            lk = lk * key_ok[:, :, None, None].to(lk.dtype)
        if key_ok is not None:
            v = v * key_ok[:, :, None, None].to(v.dtype)
        # --- softmax inside blocks: pad to whole blocks, fold blocks into the batch
        nb = (n + c - 1) // c
        pad = nb * c - n
        qf = F.pad(q, (0, 0, 0, 0, r, pad))  # queries for cached tokens are dummies, dropped below
        kf, vf = F.pad(k, (0, 0, 0, 0, 0, pad)), F.pad(v, (0, 0, 0, 0, 0, pad))
        fold = lambda z: z.reshape(b * nb, c, z.shape[2], dh)  # noqa: E731
        idx = torch.arange(c, device=x.device)[None]
        ok = None
        if key_ok is not None:
            ok = F.pad(key_ok, (0, pad), value=False).reshape(b * nb, c)
        mask = _attend_mask(idx, idx, ok, None)
        o_soft = self.sdpa(fold(qf), fold(kf), fold(vf), mask).reshape(b, nb * c, h, dh)[:, r : r + t]
        # --- decayed linear attention across blocks: loop over blocks carrying the state
        acc = _acc(x.dtype)
        group = h // self.num_kv_heads
        s = self.decay(x.device, acc).view(1, h, 1, 1)
        lqf = F.pad(lq, (0, 0, 0, 0, r, 0)).to(acc).transpose(1, 2)  # [B, H, n, D]
        lkf = lk.to(acc).repeat_interleave(group, 2).transpose(1, 2)
        lvf = v.to(acc).repeat_interleave(group, 2).transpose(1, 2)
        if state is None:
            state = lqf.new_zeros(b, h, dh, dh)
        outs = []
        pos_in_blk = torch.arange(c, device=x.device, dtype=acc)
        for start in range(0, n, c):
            m_ = min(c, n - start)
            p = pos_in_blk[:m_].view(1, 1, -1, 1)
            outs.append(torch.exp(-s * (p + 1)) * (lqf[:, :, start : start + m_] @ state))
            if start + m_ == start + c:  # a completed block folds into the state
                kd = lkf[:, :, start : start + m_] * torch.exp(-s * (m_ - 1 - p))
                state = torch.exp(-s * m_) * state + kd.transpose(-1, -2) @ lvf[:, :, start : start + m_]
        o_lin = torch.cat(outs, dim=2).transpose(1, 2)[:, r : r + t]  # [B, t, H, D]
        if layer is not None:
            tail = n - (n // c) * c
            layer.state = state
            layer.keys, layer.values, layer.lin_keys = (z[:, n - tail :] for z in (k, v, lk))
            layer.seen += t
        o = o_soft.to(acc) + srms_norm(o_lin)
        return self.out_proj(o.to(x.dtype).reshape(b, t, h * dh))


def _doc_ids(cu_seqlens: torch.Tensor, t: int) -> torch.Tensor:
    """Document index of each packed position [T]."""
    pos = torch.arange(t, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), pos, right=True)


# ----------------------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------------------

_TOKEN_MIXERS = {"tnl": NormLinearAttention, "softmax": SoftmaxAttention, "hybrid": HybridAttention}


class TransnormerDecoderLayer(nn.Module):
    """Pre-norm block: x + TokenMixer(SRMSNorm(x)), then x + ChannelMixer(SRMSNorm(x))."""

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.token_norm = SRMSNorm()
        self.channel_norm = SRMSNorm()
        self.token_mixer = _TOKEN_MIXERS[config.token_mixer](config, layer_idx)
        self.channel_mixer = SGLU(
            config.decoder_embed_dim, config.glu_dim, bias=config.bias, swiglu=config.channel_mixer == "swiglu"
        )
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
        self.final_norm = SRMSNorm()
        self.embed_scale = 1.0 if config.no_scale_embedding else math.sqrt(config.decoder_embed_dim)
        self.embed_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
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
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=past_key_values,
                                       hidden_states=all_hidden)

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
            return (ar - cu_seqlens.to(device).long()[_doc_ids(cu_seqlens.to(device), t)])[None]
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
        hidden = out.last_hidden_state
        if labels is not None and loss_chunk_size > 0:
            targets = labels if not shift_labels else F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = fused_linear_cross_entropy(hidden, self.lm_head.weight, targets, chunk_size=loss_chunk_size)
            if not return_dict:
                return tuple(x for x in (loss, out.past_key_values, out.hidden_states) if x is not None)
            return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=out.past_key_values,
                                          hidden_states=out.hidden_states)
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
            rest = tuple(x for x in (logits, out.past_key_values, out.hidden_states) if x is not None)
            return ((loss,) + rest) if loss is not None else rest
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )

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
