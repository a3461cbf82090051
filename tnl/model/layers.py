"""Building blocks of the TNL block and its baselines: SimpleRMSNorm, q/k activations, decay rates and ALiBi
slopes, positional encodings (LRPE, RoPE, sinusoidal), the channel mixers (SGLU, MLP), and what every token mixer shares
(`MixerInputs`, `DecayMixin`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.common import accumulation_dtype
from ..ops.srms_norm import gated_norm_forward
from .cache import TransnormerCache
from .configuration_transnormer import TransnormerConfig
from .memory_saving import GatedSRMSNorm, ProductLinear, SRMSNormToLowPrecision, autocast_dtype


def srms_norm(x: torch.Tensor, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """SimpleRMSNorm (TNL paper eq. 9): x / sqrt(mean(x^2) + eps), no weight, computed in fp32. `backend`: the
    norm kernels' (the model config's norm_backend)."""
    low = autocast_dtype(x) if x.dtype == torch.float32 and x.requires_grad and torch.is_grad_enabled() else None
    if low is not None and low != torch.float32:  # training under autocast: see SRMSNormToLowPrecision
        return SRMSNormToLowPrecision.apply(x, eps, low, backend)
    xf = x.to(accumulation_dtype(x.dtype))
    # F.rms_norm without weight is exactly x * rsqrt(mean(x^2) + eps), fused on GPU (fewer kernels when decoding)
    return F.rms_norm(xf, (xf.shape[-1],), eps=eps).to(x.dtype)


GATE_NORM_EPS = 1e-6


def gated_srms_norm(o: torch.Tensor, u: torch.Tensor, eps: float = GATE_NORM_EPS,
                    backend: str = "auto") -> torch.Tensor:
    """u * SRMSNorm(o), the TNL token mixer's output gate (paper eq. 7); `backend`: the norm kernels'."""
    if torch.compiler.is_compiling() and o.dtype == u.dtype == torch.float32:
        # plain tensor ops (Inductor derives the backward): traced through GatedSRMSNorm, fp32 training under
        # torch.compile on CUDA got zero gradients for o and u, so for qkvu_proj and LRPE, with the loss right
        # (torch 2.11, H100; bf16 autocast, whose measured speed this keeps, and CPU were right; cause not found).
        # tests/model/test_model_gpu.py::test_compiled_training_matches_eager compares compiled with eager training.
        return gated_norm_forward(o, u, eps, backend=backend)[0]
    if torch.is_grad_enabled() and (o.requires_grad or u.requires_grad):
        return GatedSRMSNorm.apply(o, u, eps, backend)
    # inference: the training Function's arithmetic (one rounding)
    return gated_norm_forward(o, u, eps, backend=backend)[0]


class SRMSNorm(nn.Module):
    """Weightless SimpleRMSNorm module (no parameters, so official state dicts have no entry for it)."""

    def __init__(self, eps: float = 1e-6, norm_backend: str = "auto") -> None:
        super().__init__()
        self.eps, self.norm_backend = eps, norm_backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return srms_norm(x, self.eps, self.norm_backend)


class HeadRMSNorm(nn.Module):
    """RMSNorm with a learned weight over the last dim (q/k norm of the softmax baseline)."""

    def __init__(self, dim: int, eps: float = 1e-6, norm_backend: str = "auto") -> None:
        super().__init__()
        self.eps, self.norm_backend = eps, norm_backend
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return srms_norm(x, self.eps, self.norm_backend) * self.weight.to(x.dtype)


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
    "paper" (TNL paper sec. 3.1.1, as the layer-aware lightning attention interface computes it): s_h =
    (8/H) * (1 - l/L) * h for h = 0..H-1, so head 0 does not decay. "paper_one_based": the same with h = 1..H (what
    "paper" gave before it followed that interface; for runs trained then). "none": no decay.
    """
    h, n_layers = config.decoder_attention_heads, config.decoder_layers
    if config.decay_schedule == "none":
        return [0.0] * h
    if config.decay_schedule in ("paper", "paper_one_based"):
        first = 1 if config.decay_schedule == "paper_one_based" else 0
        return [8.0 / h * (1.0 - layer_idx / n_layers) * (i + first) for i in range(h)]
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
        """x: [B, T, H, D] with H a multiple of num_heads (grouped heads: each of a group's H / num_heads heads gets
        its group's angles); positions: [B or 1, T] integer. Returns [B, T, H, 2D] in x's dtype."""
        acc = accumulation_dtype(x.dtype)
        theta = self.theta.to(acc).view(1, 1, self.num_heads, -1)
        if x.shape[2] != self.num_heads:
            theta = theta.repeat_interleave(x.shape[2] // self.num_heads, dim=2)
        ang = positions.to(acc)[:, :, None, None] * theta
        xf = x.to(acc)
        return torch.cat([xf * torch.cos(ang), xf * torch.sin(ang)], dim=-1).to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (Su et al. 2021), rotate-half layout. positions [B or 1, T] -> cos, sin [B or 1, T, 1, dim]."""
    acc = accumulation_dtype(dtype)
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
    half, acc = dim // 2, accumulation_dtype(dtype)
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=acc) / half)
    ang = positions.to(acc)[..., None] * freq
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class SGLU(nn.Module):
    """Simple GLU channel mixer (TNL paper eq. 8): l3(l1(x) * l2(x)); `swiglu=True` adds SiLU on the l1 branch.
    `activation_dropout`: dropout on the l1 branch, i.e. on the product l3 reads (a mask on a is one on a * b)."""

    def __init__(self, dim: int, glu_dim: int, bias: bool = False, swiglu: bool = False,
                 activation_dropout: float = 0.0) -> None:
        super().__init__()
        self.swiglu = swiglu
        self.l1 = nn.Linear(dim, glu_dim, bias=bias)
        self.l2 = nn.Linear(dim, glu_dim, bias=bias)
        self.l3 = nn.Linear(glu_dim, dim, bias=bias)
        self.act_dropout = nn.Dropout(activation_dropout) if activation_dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.l1(x)
        if self.swiglu:
            a = F.silu(a)
        if self.act_dropout is not None:
            a = self.act_dropout(a)
        b = self.l2(x)
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or self.l3.weight.requires_grad):
            return ProductLinear.apply(a, b, self.l3.weight, self.l3.bias)
        return self.l3(a * b)


class MLP(nn.Module):
    """Plain MLP channel mixer, fc2(gelu(fc1 x)), for the ablation of SGLU: hidden size 3 * glu_dim / 2, so its
    weights count as many parameters as SGLU's three glu_dim-wide ones (2 d 3g/2 = 3 d g).
    `activation_dropout`: dropout after the GELU."""

    def __init__(self, dim: int, glu_dim: int, bias: bool = False, activation_dropout: float = 0.0) -> None:
        super().__init__()
        hidden = 3 * glu_dim // 2
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.act_dropout = nn.Dropout(activation_dropout) if activation_dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        if self.act_dropout is not None:
            h = self.act_dropout(h)
        return self.fc2(h)


def channel_mixer(config: TransnormerConfig) -> nn.Module:
    """The channel mixer config.channel_mixer names: "sglu", "swiglu" or "mlp"."""
    if config.channel_mixer == "mlp":
        return MLP(config.decoder_embed_dim, config.glu_dim, config.bias, config.activation_dropout)
    return SGLU(config.decoder_embed_dim, config.glu_dim, bias=config.bias, swiglu=config.channel_mixer == "swiglu",
                activation_dropout=config.activation_dropout)


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
        acc = accumulation_dtype(dtype)
        if torch.compiler.is_compiling():
            return torch.tensor(self.decay_list, dtype=acc, device=device)
        cache = self.__dict__.setdefault("_decay_cache", {})
        # a tensor made under inference_mode cannot be saved for backward, so eval and training keep their own copies
        key = (device, acc, torch.is_inference_mode_enabled())
        if key not in cache:
            cache[key] = torch.tensor(self.decay_list, dtype=acc, device=device)
        return cache[key]



def doc_ids(cu_seqlens: torch.Tensor, t: int) -> torch.Tensor:
    """Document index of each packed position [T]."""
    pos = torch.arange(t, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), pos, right=True)
