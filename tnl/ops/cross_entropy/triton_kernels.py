"""Triton kernel for one row block of logits: log-sum-exp, loss and, in place, d loss / d logits."""

import triton
import triton.language as tl


@triton.jit
def _ce_rows_kernel(
    logits_ptr, stride_row, targets_ptr, loss_ptr, V, ignore_index,
    BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr,
):
    """Row r: loss_r = lse(x_r) - x_r[t_r] (0 where t_r == ignore_index, NaN where t_r is outside [0, V)); with
    WRITE_GRAD, x_r is overwritten by softmax(x_r) - onehot(t_r) (zeros for ignored rows). Online max/sum in fp32
    (Milakov & Gimelshein, 2018), so the row is read twice and written once, whatever its dtype."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    target = tl.load(targets_ptr + row).to(tl.int64)
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    ignored = target == ignore_index
    # a target outside [0, V) gets a NaN loss (and no gradient) instead of an out-of-bounds read
    invalid = (target < 0) | (target >= V)
    safe_target = tl.where(invalid, 0, target)
    x_t = tl.load(base + safe_target).to(tl.float32)
    loss = tl.where(invalid, float("nan"), lse - x_t)
    tl.store(loss_ptr + row, tl.where(ignored, 0.0, loss))
    ignored = ignored | invalid
    if WRITE_GRAD:
        keep = tl.where(ignored, 0.0, 1.0)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            mask = offs < V
            x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(offs == safe_target, 1.0, 0.0)
            tl.store(base + offs, (g * keep).to(logits_ptr.dtype.element_ty), mask=mask)
