"""Row kernels for SimpleRMSNorm (y = x r, r = (mean(x^2) + eps)^-1/2) and the gated form u * (o r).

One program per row, the whole row in registers (BLOCK >= d), fp32 arithmetic whatever the storage dtype.
Backward uses only (y or o, r): dx = r (dy - y mean(dy y)) (Zhang & Sennrich, 2019, RMSNorm, without gain)."""

import triton
import triton.language as tl


@triton.jit
def _norm_fwd_kernel(X, Y, R, stride_x, stride_y, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    x = tl.load(X + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
    tl.store(Y + row * stride_y + offs, (x * r).to(Y.dtype.element_ty), mask=m)
    tl.store(R + row, r)


@triton.jit
def _norm_bwd_kernel(DY, Y, R, DX, stride_dy, stride_y, stride_dx, D, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    dy = tl.load(DY + row * stride_dy + offs, mask=m, other=0.0).to(tl.float32)
    y = tl.load(Y + row * stride_y + offs, mask=m, other=0.0).to(tl.float32)
    r = tl.load(R + row)
    dx = r * (dy - y * (tl.sum(dy * y, 0) / D))
    tl.store(DX + row * stride_dx + offs, dx.to(DX.dtype.element_ty), mask=m)


@triton.jit
def _gated_fwd_kernel(OIN, U, Y, R, stride_o, stride_u, stride_y, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    o = tl.load(OIN + row * stride_o + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + offs, mask=m, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(o * o, 0) / D + eps)
    tl.store(Y + row * stride_y + offs, (o * r * u).to(Y.dtype.element_ty), mask=m)
    tl.store(R + row, r)


@triton.jit
def _gated_bwd_kernel(DY, OIN, U, R, DO, DU, Y, stride_dy, stride_o, stride_u, stride_do, stride_du, stride_y, D,
                      BLOCK: tl.constexpr, WRITE_Y: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    dy = tl.load(DY + row * stride_dy + offs, mask=m, other=0.0).to(tl.float32)
    o = tl.load(OIN + row * stride_o + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + offs, mask=m, other=0.0).to(tl.float32)
    r = tl.load(R + row)
    n = o * r
    dn = dy * u
    do = r * (dn - n * (tl.sum(dn * n, 0) / D))
    tl.store(DO + row * stride_do + offs, do.to(DO.dtype.element_ty), mask=m)
    tl.store(DU + row * stride_du + offs, (dy * n).to(DU.dtype.element_ty), mask=m)
    if WRITE_Y:  # the forward's output again (same fp32 arithmetic), for a Linear's weight gradient
        tl.store(Y + row * stride_y + offs, (n * u).to(Y.dtype.element_ty), mask=m)
