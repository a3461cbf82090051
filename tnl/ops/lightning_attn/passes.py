"""The passes of the Triton lightning attention and their registration as torch.library custom ops.

Forward is one pass of `_chunk_kernel` per (E-block, head, segment) that walks its tokens chunk by chunk with the
state in registers. Backward is three passes of the same kernel: dQ in forward order, dK and dV in reverse order.
Segmented plans (`plan.py`) first run a state-only pass. Under torch.compile the ops below are traced; eager calls
go through `EagerLightningAttn`, the same implementations without the custom-op wrappers.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton before 3.4: no host-built TMA descriptors; TMA configs run through pointers
    TensorDescriptor = None

from ...settings import triton_interpret
from . import triton_kernels as _k
from . import tuning
from .options import kernel_options
from .plan import Plan, backward_plans, cdiv, pow2, prefix_chunk, tma_capable


def _precision(dtype: torch.dtype) -> tuple[str, bool]:
    """(dot precision, upcast): fp32 inputs use 3xTF32 on tensor cores (about fp32 accuracy; a plain FMA dot
    compiles very slowly at D=256); the CPU interpreter cannot do bf16 arithmetic, so bf16 is upcast there."""
    interpret = triton_interpret()
    prec = ("ieee" if interpret else "tf32x3") if dtype == torch.float32 else "tf32"
    return prec, interpret and dtype == torch.bfloat16


def _tma_ok(*xs: torch.Tensor) -> bool:
    """Whether TMA descriptors can address these [B, T, H, dim] tensors: 16-byte aligned bases and strides, unit
    stride along dim. Where they cannot (or the options turn TMA off) a TMA config runs through pointers, so a
    shipped or cached TMA choice stays valid and nothing is re-tuned."""
    return all(x.stride(-1) == 1 and x.data_ptr() % 16 == 0
               and all(st * x.element_size() % 16 == 0 for st in x.stride()[:-1]) for x in xs)


def _descriptor(x: torch.Tensor, rows: int, cols: int):
    return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, rows, 1, cols])


def chunk_pass(
    qr, kr, vr, groups, decay, init, init_strides, out, final, *,
    skv: float, sout: float, reverse: bool, final_decay: int, plan: Plan, role: str, mirrored: bool = False,
    act: tuple[bool, bool, bool] = (False, False, False), dact: tuple[torch.Tensor, int] | None = None,
    starts_t: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One generic pass: out = sout * (causal/anticausal decayed attention of (qr, kr, vr) + init term).
    Segmented plans first build each segment's start state (returned).
    `starts_t`: start states another pass of the same plan already built, transposed ([.., DV, DK] of this pass):
    used instead of building them (the dk pass's state is the transpose of the dv pass's).
    `reverse`: the pass's order in a forward-order call (the adjoint passes dK, dV run reversed, their start state
    shifted by one token); `mirrored`: the call runs with time mirrored (`lightning_attn(reverse=True)`), so every
    pass walks the other way: the same kernel with REVERSE flipped, pointers walking the time axis from each
    sequence's end, no flipped copy of any input. Tuning keys stay those of the unmirrored pass (same work).
    `act`: SiLU applied to (qr, kr, vr) as loaded; `dact` = (raw input, head group): out *= SiLU'(raw)."""
    b, t, h, _ = out.shape
    dk, dv = qr.shape[-1], vr.shape[-1]
    bd = pow2(dk)
    gq, gk, gv = groups
    prec, upcast = _precision(qr.dtype)
    has_init = init is not None
    init_ = init if has_init else decay
    si = init_strides if has_init else (0, 0, 0, 0)
    segs = plan.segs if plan.varlen else decay
    dtype_tag = str(qr.dtype).replace("torch.", "")
    pbuf = None
    if plan.segmented:
        pbuf = starts_t if starts_t is not None else torch.empty(plan.g_total, h, dk, dv, device=out.device,
                                                                  dtype=torch.float32)
    # PREFIX: the main pass builds the start states itself (and leaves them in pbuf for a later pass)
    prefix = plan.prefix and starts_t is None

    xraw, gx = dact if dact is not None else (decay, 1)
    sx = xraw.stride() if dact is not None else (0, 0, 0, 0)

    tiles = (qr, kr, vr, out)
    walk_back = reverse != mirrored  # the kernels' REVERSE
    tma_allowed = kernel_options().tma and TensorDescriptor is not None and not plan.varlen

    # the state-only pass may cut each segment into sub-segments (plan.state_split): (programs per head, their
    # length, per sequence); the main pass runs the plan's segments
    r = plan.state_split
    cuts = {True: (plan.g_total, plan.seg_len, plan.nseg)}
    cuts[False] = (plan.n * cdiv(t, plan.seg_len // r), plan.seg_len // r, cdiv(t, plan.seg_len // r)) if r > 1 \
        else cuts[True]
    # CHAIN (fixed length): each main-pass program chains the contributions before its segment into its start state
    # (one launch fewer than a scan; H100 hosts spent 40-100 us per launch) and leaves it in pbuf for later passes;
    # varlen plans chain them in `_scan_kernel`
    chain = plan.segmented and not plan.varlen and starts_t is None and not prefix
    sub = None  # the state pass's contributions when split or chained (varlen: in pbuf, scanned in place)

    def launch(cfg, write_o: bool):
        c, be, w, s, *rest = cfg
        # the alignment check only for TMA configs: pointer configs (D=64, launch-bound) skip it
        tma = bool(rest and rest[0]) and tma_allowed and _tma_ok(*tiles)
        g_total, seg_len, nseg = cuts[write_o]
        grid = (cdiv(dv, be), h, g_total)
        if tma:
            kd, vd = _descriptor(kr, c, bd), _descriptor(vr, c, be)
            qd, od = (_descriptor(qr, c, bd), _descriptor(out, c, be)) if write_o else (kd, vd)
        else:  # unused: None costs the launcher nothing (D=64 calls are bound by launch overhead)
            qd = kd = vd = od = None
        _k._chunk_kernel[grid](
            qr, kr, vr, out, init_, pbuf if pbuf is not None else decay,
            (final if write_o else (sub if sub is not None else pbuf)) if (final is not None or not write_o)
            else decay, decay, segs, xraw,
            qd, kd, vd, od, sub if sub is not None else decay,
            *qr.stride(), *kr.stride(), *vr.stride(), *out.stride(), *si, *sx,
            t, h, gq, gk, gv, gx, dk, dv, seg_len, nseg, plan.seg_len, cuts[False][1], cuts[False][2], skv, sout,
            BD=bd, BE=be, C=c, REVERSE=walk_back, HAS_INIT=has_init and write_o,
            INIT_SHIFT=int(reverse and has_init), WRITE_O=write_o, STORE_FINAL=final is not None,
            FINAL_DECAY=final_decay,
            IS_VARLEN=plan.varlen, SEGMENTED=plan.segmented, PREC=prec, UPCAST=upcast,
            ACT_Q=act[0], ACT_K=act[1], ACT_V=act[2], DACT=dact is not None and write_o, P_T=starts_t is not None,
            EARLY_UPDATE=bd >= 256, PREFIX=prefix and write_o, PREFIX_C=prefix_chunk(c, qr.dtype == torch.float32),
            TMA=tma, CHAIN=chain and write_o, num_warps=w, num_stages=s,
        )

    def run(configs, write_o: bool, tag: str):
        g_total, seg_len, _ = cuts[write_o]
        # a state pass cut into sub-segments has several short programs per SM: tuned apart
        suffix = plan.key_suffix if write_o or r == 1 else "|sub"
        key = (f"{tag}|{dk}x{dv}|{dtype_tag}|rev{int(reverse)}|init{int(has_init)}|seg{int(plan.segmented)}"
               + suffix)
        written = ([out] + ([final] if final is not None else [])) if write_o else [sub if sub is not None else pbuf]
        tuning.launch_tuned(out.device, key, seg_len,
                            lambda: tuning.candidates(configs, dk, dv, seg_len, qr.dtype == torch.float32,
                                                      tma=tma_capable(out.device)),
                            lambda cfg: launch(cfg, write_o), lambda: written, qr.dtype == torch.float32)

    if plan.segmented and starts_t is None and not prefix:
        nsub = cuts[False][2]
        if r > 1 or chain:
            sub = torch.empty(plan.n * nsub, h, dk, dv, device=out.device, dtype=torch.float32)
        run(tuning.STATE_CONFIGS, False, "state")
        if not chain:  # varlen: chain the contributions in place
            bde, bee = min(bd, 64), min(pow2(dv), 64)
            grid = (cdiv(dv, bee), cdiv(dk, bde), plan.n * h)
            _k._scan_kernel[grid](
                pbuf, init_, decay, plan.seqinfo, *si, h, dk, dv, plan.seg_len,
                BD=bde, BE=bee, REVERSE=walk_back, HAS_INIT=has_init, INIT_SHIFT=int(reverse and has_init),
                num_warps=4,
            )
    run(tuning.MAIN_CONFIGS, True, role)
    return pbuf


# ---------------------------------------------------------------------------------------------- forward, backward

def fwd_core(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act=None,
             k_act=None, reverse=False):
    """(o, final state or an empty tensor, segment start states of a segmented plan or None). `q_act`, `k_act`:
    SiLU(q), SiLU(k) computed by the caller (qk_silu), loaded as they are instead of activating q, k on load.
    `reverse`: each sequence from its end (every pass mirrored in time)."""
    b, t, h, d = q.shape
    e = v.shape[-1]
    group = h // k.shape[2]
    plan = Plan(b, t, h, e, cu_seqlens, q.device, dims=(d, e))
    o = torch.empty(b, t, h, e, device=q.device, dtype=q.dtype)
    final = torch.empty(plan.n, h, d, e, device=q.device, dtype=torch.float32) if output_final_state else None
    init = initial_state.float() if initial_state is not None else None
    qa, ka, load_act = (q_act, k_act, False) if q_act is not None else (q, k, qk_silu)
    starts = chunk_pass(qa, ka, v, (1, group, group), decay, init, init.stride() if init is not None else None, o,
                        final, skv=1.0, sout=scale, reverse=False, final_decay=0, plan=plan, role="fwd",
                        act=(load_act, load_act, False), mirrored=reverse)
    return o, (final if final is not None else q.new_empty(0, dtype=torch.float32)), starts


def kept_starts_shape(q: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None) -> tuple | None:
    """Shape of the forward's segment start states when the custom op returns them for backward: fixed-length
    segmented plans only (a varlen plan's segment count depends on cu_seqlens' values, which a fake tensor lacks)."""
    if cu_seqlens is not None:
        return None
    b, t, h, d = q.shape
    e = v.shape[-1]
    plan = Plan(b, t, h, e, None, q.device, dims=(d, e))
    return (plan.g_total, h, d, e) if plan.segmented else None


def bwd_core(do, dfinal, q, k, v, decay, initial_state, cu_seqlens, scale, need_dq, need_dkv, qk_silu,
             fwd_starts=None, q_act=None, k_act=None, out=None, reverse=False):
    """`fwd_starts`: the forward's segment start states, or None (varlen under the custom ops, whose fake
    implementation cannot know a varlen plan's data-dependent segment count). `q_act`, `k_act` (with qk_silu):
    SiLU(q), SiLU(k) as the forward loaded them; the passes load them as they are and only multiply their dq, dk
    outputs by SiLU'(q), SiLU'(k) (gradients w.r.t. the raw q, k either way). `out`: (dq, dk, dv) tensors, any
    strides, to write the gradients into (H == Hkv, all three needed). `reverse`: the backward of a reverse call
    (every pass mirrored: dQ from each sequence's end, dK and dV from its start)."""
    b, t, h, d = q.shape
    hkv, e = k.shape[2], v.shape[-1]
    group = h // hkv
    if out is not None and (group != 1 or not (need_dq and need_dkv)):
        raise ValueError("lightning_attn backward: out= needs H == Hkv and all of dq, dk, dv")
    plan_d, plan_e = backward_plans(b, t, h, d, e, cu_seqlens, q.device)
    init = initial_state.float() if initial_state is not None else None
    dfin = dfinal.float() if dfinal is not None else None
    if out is not None:
        dq = out[0]
    else:
        dq = torch.zeros_like(q) if not need_dq else torch.empty(b, t, h, d, device=q.device, dtype=q.dtype)
    same_plan = plan_d.seg_len == plan_e.seg_len  # the forward's plan is plan_e
    qa, ka, la = (q_act, k_act, False) if q_act is not None else (q, k, qk_silu)  # la: SiLU applied on load
    if need_dq:
        # dq_t = scale * do_t S_t^T: forward order on (do, v, k), state S^T (the forward built S's start states)
        st = (init.stride(0), init.stride(1), init.stride(3), init.stride(2)) if init is not None else None
        chunk_pass(do, v, ka, (1, group, group), decay, init, st, dq, None,
                   skv=1.0, sout=scale, reverse=False, final_decay=0, plan=plan_d, role="dq",
                   act=(False, False, la), dact=(q, 1) if qk_silu else None,
                   starts_t=fwd_starts if same_plan else None, mirrored=reverse)
    need_dinit = initial_state is not None
    dinit = torch.empty(plan_e.n, h, d, e, device=q.device, dtype=torch.float32) if need_dinit else None
    kv_dtype = k.dtype if group == 1 else torch.float32
    if need_dkv or need_dinit:
        # dv_j = k_j R_j, R_j = sum_{t>=j} lambda^(t-j) scale q_t^T do_t + lambda^(T-j) dfinal: reverse order
        dv = out[2] if out is not None else torch.empty(b, t, h, e, device=q.device, dtype=kv_dtype)
        r_starts = chunk_pass(ka, qa, do, (group, 1, 1), decay, dfin, dfin.stride() if dfin is not None else None,
                              dv, dinit, skv=scale, sout=1.0, reverse=True, final_decay=1, plan=plan_e, role="dv",
                              act=(la, la, False), mirrored=reverse)
    if need_dkv:
        # dk_j = v_j R_j^T: reverse order on (v, do, q), state R^T; the dv pass built R's segment start states
        dk = out[1] if out is not None else torch.empty(b, t, h, d, device=q.device, dtype=kv_dtype)
        st = (dfin.stride(0), dfin.stride(1), dfin.stride(3), dfin.stride(2)) if dfin is not None else None
        chunk_pass(v, do, qa, (group, 1, 1), decay, dfin, st, dk, None,
                   skv=scale, sout=1.0, reverse=True, final_decay=0, plan=plan_d, role="dk",
                   act=(False, False, la), dact=(k, group) if qk_silu else None,
                   starts_t=r_starts if same_plan else None, mirrored=reverse)
        if group > 1:
            dk = dk.view(b, t, hkv, group, d).sum(3).to(k.dtype)
            dv = dv.view(b, t, hkv, group, e).sum(3).to(v.dtype)
    else:
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    empty = q.new_empty(0, dtype=torch.float32)
    return dq, dk, dv, (dinit if dinit is not None else empty)


# ---------------------------------------------------------------------------------------------- custom ops

# "tnl" inside the package; a copy of this file elsewhere (the Hugging Face export) registers its own namespace,
# so both can live in one process.
_NS = "tnl" if __name__ == "tnl.ops.lightning_attn.passes" else "tnl_" + re.sub(r"\W", "_", __name__)


def fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
    initial_state: Optional[torch.Tensor], output_final_state: bool, cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    qk_silu: bool, q_act: Optional[torch.Tensor] = None, k_act: Optional[torch.Tensor] = None,  # noqa: UP045
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # custom_op schemas want typing.Optional
    """(o, final state, segment start states kept for the dq pass or an empty tensor)."""
    o, final, starts = fwd_core(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu,
                                q_act, k_act, reverse)
    if starts is None or cu_seqlens is not None:  # what kept_starts_shape tells the fake implementation
        starts = q.new_empty(0, dtype=torch.float32)
    return o, final, starts


fwd_op = torch.library.custom_op(f"{_NS}::lightning_attn_fwd", mutates_args=())(fwd_impl)


@fwd_op.register_fake
def _fwd_fake(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act=None, k_act=None,
              reverse=False):
    b, t, h, d = q.shape
    e = v.shape[-1]
    n = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else b
    o = q.new_empty(b, t, h, e)
    final = q.new_empty((n, h, d, e) if output_final_state else (0,), dtype=torch.float32)
    starts = q.new_empty(kept_starts_shape(q, v, cu_seqlens) or (0,), dtype=torch.float32)
    return o, final, starts


def _bwd_impl(
    do: torch.Tensor, dfinal: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # noqa: UP045
    decay: torch.Tensor, initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    scale: float,
    need_dq: bool, need_dkv: bool, qk_silu: bool, fwd_starts: torch.Tensor,
    q_act: Optional[torch.Tensor] = None, k_act: Optional[torch.Tensor] = None,  # noqa: UP045
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return bwd_core(do, dfinal, q, k, v, decay, initial_state, cu_seqlens, scale, need_dq, need_dkv, qk_silu,
                    fwd_starts=fwd_starts if fwd_starts.numel() else None, q_act=q_act, k_act=k_act,
                    reverse=reverse)


_bwd_op = torch.library.custom_op(f"{_NS}::lightning_attn_bwd", mutates_args=())(_bwd_impl)


@_bwd_op.register_fake
def _bwd_fake(do, dfinal, q, k, v, decay, initial_state, cu_seqlens, scale, need_dq, need_dkv, qk_silu, fwd_starts,
              q_act=None, k_act=None, reverse=False):
    dinit = (initial_state.new_empty(initial_state.shape, dtype=torch.float32) if initial_state is not None
             else q.new_empty(0, dtype=torch.float32))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dinit


def _setup_context(ctx, inputs, output):
    q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act, k_act, reverse = inputs
    # the forward's segment start states are the dq pass's (transposed): kept, backward skips a state pass and a
    # scan for B * segments * H * D * E fp32 (8 MiB per layer at tnl_385m, T=8k)
    ctx.save_for_backward(q, k, v, decay, initial_state, cu_seqlens, output[2], q_act, k_act)
    ctx.scale = scale
    ctx.qk_silu = qk_silu
    ctx.reverse = reverse
    ctx.init_dtype = initial_state.dtype if initial_state is not None else None


def _backward_with(bwd, ctx, do, dfinal):
    q, k, v, decay, initial_state, cu_seqlens, starts, q_act, k_act = ctx.saved_tensors
    if do is None:
        do = torch.zeros(*q.shape[:3], v.shape[-1], device=q.device, dtype=q.dtype)
    if dfinal is not None and dfinal.numel() == 0:
        dfinal = None
    need = ctx.needs_input_grad
    dq, dk, dv, dinit = bwd(
        do, dfinal, q, k, v, decay, initial_state, cu_seqlens, ctx.scale, need[0], need[1] or need[2], ctx.qk_silu,
        starts if starts is not None else q.new_empty(0, dtype=torch.float32), q_act, k_act, ctx.reverse,
    )
    dinit = dinit.to(ctx.init_dtype) if initial_state is not None else None
    return dq, dk, dv, None, None, dinit, None, None, None, None, None, None  # none for q_act, k_act: see bwd_core


def _backward(ctx, do, dfinal, dstarts):
    return _backward_with(_bwd_op, ctx, do, dfinal)


fwd_op.register_autograd(_backward, setup_context=_setup_context)


class EagerLightningAttn(torch.autograd.Function):
    """The same forward and backward as the custom ops, for eager mode: torch.library's autograd wrapper costs
    a few hundred microseconds of CPU per call (measured on an H100), more than the kernels take at D=64."""

    @staticmethod
    def forward(ctx, q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act, k_act,
                reverse=False):
        # eager keeps start states for varlen plans too (the custom ops cannot: see kept_starts_shape)
        o, final, starts = fwd_core(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu,
                                    q_act, k_act, reverse)
        _setup_context(ctx, (q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act,
                             k_act, reverse), (o, final, starts))
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        return _backward_with(_bwd_impl, ctx, do, dfinal)
