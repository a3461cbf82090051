"""Autograd Functions that keep less for backward than the plain ops would, with the same values and gradients.

Each keeps a layer's inputs (which its backward needs anyway) and forms again in backward what the plain ops
would have kept (a normalised output, a gated product), or keeps a low-precision output instead of an fp32
input. The model uses them in training (GatedNormLinear in eager mode only: under torch.compile the partitioner
makes that trade itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.srms_norm import gated_norm_backward, gated_norm_forward, norm_backward, norm_forward
from .fused_mixer import gated_linear_backward


class SRMSNormToLowPrecision(torch.autograd.Function):
    """SRMSNorm of an fp32 input returned in the autocast dtype, keeping that output (not the fp32 input) for
    backward: y = x r with r = (mean(x^2) + eps)^-1/2 gives dx = r (dy - y mean(dy y)), which needs only y and r.
    The next Linear keeps the same y, so a block saves no fp32 copy of the residual stream (Apex's
    "memory_efficient" RMSNorm makes the same trade: the backward reads y rounded to bf16)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, out_dtype: torch.dtype, backend: str = "auto") -> torch.Tensor:
        y, r = norm_forward(x, eps, out_dtype, backend=backend)
        ctx.save_for_backward(y, r)
        ctx.x_dtype, ctx.backend = x.dtype, backend
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        y, r = ctx.saved_tensors
        return norm_backward(dy, y, r, ctx.x_dtype, backend=ctx.backend), None, None, None


class GatedSRMSNorm(torch.autograd.Function):
    """u * SRMSNorm(o) in one step: keeps o, u and r = (mean(o^2) + eps)^-1/2 for backward instead of an fp32 copy
    of o and the normalised o, and rounds once (the product is formed in fp32). Exact: it saves its inputs."""

    @staticmethod
    def forward(ctx, o: torch.Tensor, u: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
        y, r = gated_norm_forward(o, u, eps, backend=backend)
        ctx.save_for_backward(o, u, r)
        ctx.backend = backend
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        o, u, r = ctx.saved_tensors
        do, du = gated_norm_backward(dy, o, u, r, backend=ctx.backend)
        return do, du, None, None


class GatedNormLinear(torch.autograd.Function):
    """linear(u * SRMSNorm(o), W, bias) keeping only o, u and r for backward: the normalised, gated product (the
    Linear's input) is formed again in backward for W's gradient instead of being kept, one hidden_dim-wide bf16
    tensor less per token and block (7% of a tnl_385m block's saved activations). Used in eager mode where the
    fused mixer op (fused_mixer.py) is not (LRPE layers, padded batches, the PyTorch attention backend); under
    torch.compile the partitioner makes this trade itself."""

    @staticmethod
    def forward(ctx, o: torch.Tensor, u: torch.Tensor, eps: float, weight: torch.Tensor, bias: torch.Tensor | None,
                backend: str = "auto"):
        y, r = gated_norm_forward(o, u, eps, backend=backend)
        dtype = autocast_dtype(o) or y.dtype
        ctx.dtype, ctx.has_bias, ctx.backend = dtype, bias is not None, backend
        ctx.save_for_backward(o, u, r, weight)
        with torch.autocast(o.device.type, enabled=False):
            return F.linear(y.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        o, u, r, weight = ctx.saved_tensors
        # the fused mixer's backward (the gated product formed again by the gate's backward kernel), in ctx.dtype
        do, du, dw = gated_linear_backward(dout, o, u, r, weight.to(ctx.dtype), norm_backend=ctx.backend)
        dbias = dout.reshape(-1, dout.shape[-1]).to(ctx.dtype).sum(0).to(weight.dtype) if ctx.has_bias else None
        return do, du, None, dw.to(weight.dtype), dbias, None


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


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None



class ProductLinear(torch.autograd.Function):
    """linear(a * b, W, bias) that keeps a and b (which the product's backward needs anyway) and forms a * b again
    in backward for W's gradient, instead of also keeping the product: one glu_dim-wide tensor less per token
    and block. Under autocast it computes in the autocast dtype, as nn.Linear would."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        dtype = autocast_dtype(a) or torch.promote_types(a.dtype, b.dtype)
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
