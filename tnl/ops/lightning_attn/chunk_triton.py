"""Triton lightning attention: forward, backward (torch.library custom ops under torch.compile, a plain
autograd.Function in eager mode: same implementations) and one-token decode.

Forward is one pass per (E-block, head, segment) that walks its tokens chunk by chunk with the state in
registers. Backward is three passes of the same kernel: dQ in forward order, dK and dV in reverse order.
When batch x heads is too small to fill the GPU, sequences are cut into segments (a state-only pass, then the main
pass in parallel, each program chaining the contributions before its segment; varlen plans chain them in a tiny scan
kernel). See triton_kernels.py for the roles.
"""

import functools
import os
import re
from typing import Optional

import torch
import triton
from triton.runtime.errors import OutOfResources

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton before 3.4: no host-built TMA descriptors; TMA configs run through pointers
    TensorDescriptor = None

from . import autotune
from . import triton_kernels as _k
from .interface import check_qk_activation

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_DIM = 256

# (chunk C, E-block BE, num_warps, num_stages); the first entry is the untuned default
_MAIN_CONFIGS = [
    (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2),
    (128, 64, 8, 2), (64, 64, 4, 3), (32, 128, 8, 2), (32, 64, 8, 3),
]  # (64, 32, 4, 2) is left out by _miscompiled on every call; listed so the probe's --excluded can retest it
_STATE_CONFIGS = [(64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2)]
# The same with the chunk loop's tiles through TMA descriptors (a fifth entry, 1; sm_90+, fixed-length plans):
# H100, one program per SM, T=16k forward: D=E=128 0.42 vs 0.55 ms, D=256 x E=128 0.88 vs 1.05 (session 22)
_TMA_CONFIGS = [(64, 64, 4, 3, 1), (64, 64, 8, 3, 1), (64, 64, 4, 2, 1), (64, 64, 8, 2, 1), (32, 64, 8, 3, 1),
                (128, 64, 8, 2, 1)]
_INTERPRET_CONFIG = (16, 32, 4, 1)


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _fail(msg: str) -> None:
    raise ValueError(f"lightning_attn(triton): {msg}")


@functools.cache
def _cuda_properties(index: int):
    """Properties of CUDA device `index`, read once: both per-call lookups below sit on the launch path."""
    return torch.cuda.get_device_properties(index)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return _cuda_properties(_cuda_index(device)).multi_processor_count


def _device_tag(device: torch.device) -> str:
    name = _cuda_properties(_cuda_index(device)).name if device.type == "cuda" else device.type
    return f"{name}-triton{triton.__version__}"


# Segment lengths are multiples of every chunk size C, and long enough that the state pass stays a small part
_SEG_ALIGN, _MIN_SEG = 256, 512
# Fixed-length small-tile plans (D, E <= 64) with at most this many segments skip the state pass and the scan: each
# segment's program first runs the state-only loop over the tokens before it (PREFIX in _chunk_kernel). With two
# segments that reads what a state pass reads, in one launch instead of three (H100, D=64, H=16, T=16k: B=4 fwd+bwd
# 1.19 -> 0.94 ms, unsegmented before; B=3 1.57-1.75 -> 0.94-1.09, state pass before). Larger tiles lost with it
# (D=128, B=4, T=16k: 2.17 vs 2.12 ms; 4 segments at D=128 and D=256: fwd 0.23 vs 0.18, 1.90 vs 1.21 ms).
_PREFIX_MAX_SEGS = 2


def _prefix_chunk(c: int, fp32: bool) -> int:
    """Chunk of the PREFIX state-only loop: four times the main loop's, up to 256 (128 for fp32 tiles, to fit in
    shared memory). Each step's latency, not its size, bounds that loop (H100, D=64, H=16, T=16k, B=3 / B=4
    forward: 0.251-0.255 / 0.280 ms with the main loop's chunk, 0.236 / 0.262 with twice it, 0.223 / 0.259)."""
    return min(4 * c, 128 if fp32 else 256)


def _env_count(name: str, multiple: int = 1) -> int:
    """A positive integer setting (a multiple of `multiple`) from the environment; 0 when unset."""
    raw = os.environ.get(name)
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) == 0 or int(raw) % multiple:
        what = "a positive integer" + (f" multiple of {multiple}" if multiple > 1 else "")
        _fail(f"{name}={raw!r} is not {what}; unset it for the automatic choice")
    return int(raw)


def _round_seg(n: int) -> int:
    return max(_MIN_SEG, _cdiv(n, _SEG_ALIGN) * _SEG_ALIGN)


# The state-only pass cuts segments into R sub-segments (the main pass or the scan chains them) until it has this
# many programs per SM with work: one program streams its tokens chunk after chunk, bound by each step's latency, so
# one per SM reads k and v well below HBM bandwidth (H100, D=E=128, B=2, T=32k, 64 of them: 0.16 ms for 268 MB;
# split in 8, 0.13 ms). Each sub-segment is one serial step of that chain (about a microsecond): at most
# _MAX_STATE_SUBS per sequence, of at least _MIN_STATE_SUB tokens.
_STATE_PROGRAMS_PER_SM, _MIN_STATE_SUB, _MAX_STATE_SUBS = 3, 1024, 16


def _state_split(seg_len: int, nseg: int, working_programs: int, sms: int) -> int:
    """Sub-segments per segment for the state-only pass (a power of two; 1: no split). `working_programs`: its
    programs that have tokens to read at R = 1 (all but the last segment's)."""
    r = 1
    while (working_programs * r < _STATE_PROGRAMS_PER_SM * sms and seg_len % (2 * r * _SEG_ALIGN) == 0
           and seg_len // (2 * r) >= _MIN_STATE_SUB and nseg * 2 * r <= _MAX_STATE_SUBS):
        r *= 2
    return r


class _Plan:
    """How sequences are cut into segments; shared by every pass of one call."""

    def __init__(self, b: int, t: int, h: int, dv: int, cu_seqlens: torch.Tensor | None, device: torch.device,
                 dims: tuple[int, int]):
        # dv: this pass's E (its E-blocks); dims: the call's (D, E), whose tile class sets the rules below
        small = _small_tiles(*dims)
        env = _env_count("TNL_ATTN_SEG_LEN", 16)  # every config's chunk divides it (the smallest is 16)
        total = t if cu_seqlens is not None else b * t
        # Programs that keep the GPU busy without segments. Small tiles (D, E <= 64) stream at HBM bandwidth with
        # one program per SM (H100: 128 unsegmented programs beat 256 segmented ones, whose state pass re-reads k
        # and v); larger tiles are latency-bound per chunk and want two per SM once they segment at all.
        sms = _num_sms(device)
        # fixed-length plans over 64 fill one wave too: one program per SM with its `|few` configs (TMA, 3 stages)
        # and a state pass split finer (`_state_split`) beat two per SM (H100, H=16, B=1, T=64k, attention kernels
        # fwd / fwd+bwd: D=E=128 0.569 / 1.940 vs 0.629 / 2.165 ms; D=256 x E=128 1.044 / 3.668 vs 1.074 / 3.699)
        target = _env_count("TNL_ATTN_PROGRAMS") or (1 if small or cu_seqlens is None else 2) * sms
        eblocks = _cdiv(dv, 64)  # E-blocks of 64 per (row, head)
        units = b * h * eblocks  # unsegmented programs
        if env:
            seg_len = env
        elif cu_seqlens is None and small and 16 * units >= 7 * sms and 2 * units <= sms and _PREFIX_MAX_SEGS >= 2:
            # small tiles filling 7/16 to 1/2 of a wave: two segments, the second building its own start state
            # (PREFIX: no state pass, scan or extra launch); at most one program per SM
            seg_len = _round_seg(_cdiv(t, 2))
        elif cu_seqlens is None and ((not small and 4 * units >= 3 * sms) or (small and 16 * units >= 7 * sms)):
            # no state pass while the unsegmented programs fill enough of a wave. D or E over 64: most of one (H100,
            # D=256, T=16k, B=4, 128 programs: 1.19 / 3.94 ms fwd / fwd+bwd vs 1.40 / 4.41 cut into 256; D=128 there:
            # attention kernels 0.55 / 2.14 vs 0.59 / 2.10, and at the training shape (H=8, B=8, T=4k) 0.14 / 0.54
            # vs 0.16 / 0.55).
            # D, E <= 64: above half of one (below, two PREFIX segments; with a state pass and a scan, segments lost
            # at 64 programs: H100, D=64, B=4, T=16k fwd+bwd 1.21 ms unsegmented vs 1.39-1.50 in 2 or 4 segments)
            seg_len = _round_seg(t)
        elif cu_seqlens is None:
            # whole waves: cut each sequence into floor(target / programs) segments (a partial extra wave costs more
            # than the segment pass saves)
            nseg = max(1, target // units)
            seg_len = _round_seg(_cdiv(t, nseg))
        else:
            seg_len = _round_seg(_cdiv(total * h * eblocks, target))
        self.seg_len = seg_len
        self.varlen = cu_seqlens is not None
        self.segs = self.seqinfo = None
        self.prefix = False
        self.state_split = 1  # sub-segments per segment in the state-only pass (fixed length)
        if cu_seqlens is None:
            self.n = b
            self.nseg = _cdiv(t, seg_len)
            self.g_total = b * self.nseg
            self.segmented = self.nseg > 1
            self.prefix = small and 1 < self.nseg <= _PREFIX_MAX_SEGS
            if self.segmented and not self.prefix:
                self.state_split = _state_split(seg_len, self.nseg, b * (self.nseg - 1) * h * eblocks, sms)
        else:
            bounds = cu_seqlens.tolist()
            self.n = len(bounds) - 1
            segs, info = [], []
            for i, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
                ns = max(1, _cdiv(e - a, seg_len))
                info.append((len(segs), ns, e - a))
                for j in range(ns):
                    st = a + j * seg_len
                    segs.append((i, st, min(st + seg_len, e), int(j == 0) | (int(j == ns - 1) << 1)))
            self.nseg = 1
            self.g_total = len(segs)
            self.segmented = any(ns > 1 for _, ns, _ in info)
            self.segs = torch.tensor(segs, dtype=torch.int32).to(device)
            self.seqinfo = torch.tensor(info, dtype=torch.int32).to(device)
        # tuned apart: tiles over 64 with at most one wave of programs, where the configs that win with many programs
        # lose (H100, D=256 fwd: C=32, 4 warps 0.91 vs 1.17 ms for 8 warps at 2048 programs; at 128, one per SM,
        # 8 warps and 3 stages win: 1.05 vs 1.09; D=128 at 128 programs: 3 stages, 0.55 vs 0.64 with 2)
        self.key_suffix = "|few" if not small and self.g_total * h * eblocks <= sms else ""


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(x: int) -> int:
    """Next power of two, at least 16 (tl.arange sizes). Plain Python: triton's helpers cost microseconds per
    call, and every launch computes several of these."""
    return max(16, 1 << (x - 1).bit_length())


_SMALL_CONFIGS = [(32, 64, 4, 2), (32, 32, 4, 1), (16, 32, 4, 1)]


def _miscompiled(c: int, be: int, w: int) -> bool:
    """Configs that Triton 3.6 compiles wrongly on sm_90 (H100, H200): C=64 chunks with E-blocks of 32 or less and
    4 warps give wrong outputs (relative error 0.5-7) or illegal memory accesses whenever the operands take the
    register path into the dots: SiLU folded into q and k (D=48-128), or q, k, v at addresses that are not 16-byte
    aligned (D=64-256); aligned plain inputs happen to come out right. Every other config, and the interpreter,
    match float64 (`scripts/probe_attn_configs.py --excluded --init --misaligned`, docs/kernel_notes.md, session 16)."""
    return c >= 64 and be <= 32 and w == 4


def _tma_capable(device: torch.device) -> bool:
    """TMA configs are candidates on Hopper or newer (and in the interpreter)."""
    return _interpret() or (device.type == "cuda" and _cuda_properties(_cuda_index(device)).major >= 9)


def _tma_allowed() -> bool:
    """TMA configs may use descriptors: Triton has them and TNL_ATTN_TMA is not 0 (checked on every pass, so a
    bad value fails whichever config runs)."""
    mode = os.environ.get("TNL_ATTN_TMA", "1")
    if mode not in ("0", "1"):
        _fail(f"TNL_ATTN_TMA={mode!r} is not 0 or 1; unset it for the default (1: TMA where it was tuned in)")
    return mode == "1" and TensorDescriptor is not None


def _tma_ok(*xs: torch.Tensor) -> bool:
    """Whether TMA descriptors can address these [B, T, H, dim] tensors: 16-byte aligned bases and strides, unit
    stride along dim. Where they cannot (or `_tma_allowed` says no) a TMA config runs through pointers, so a
    shipped or cached TMA choice stays valid and nothing is re-tuned."""
    return all(x.stride(-1) == 1 and x.data_ptr() % 16 == 0
               and all(st * x.element_size() % 16 == 0 for st in x.stride()[:-1]) for x in xs)


def _descriptor(x: torch.Tensor, rows: int, cols: int):
    return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, rows, 1, cols])


def _candidates(configs, dk: int, dv: int, seg_len: int, fp32: bool, tma: bool = False) -> list[tuple]:
    """Valid configs for this call, in order; `tma`: add the TMA variants (kept last: untuned defaults stay)."""
    if _interpret():
        c, be, w, s, *rest = _INTERPRET_CONFIG
        return [(c, min(be, _pow2(dv)), w, s, *rest)]
    bd = _pow2(dk)
    if fp32 or bd >= 256:  # big tiles: start from a config that fits in shared memory
        configs = _SMALL_CONFIGS + list(configs)
    out = []
    for c, be, w, s, *rest in configs + _SMALL_CONFIGS + (_TMA_CONFIGS if tma else []):
        be = min(be, _pow2(dv))
        cfg = (c, be, w, s, *rest)
        if seg_len % c or (bd >= 256 and c > 64) or cfg in out or _miscompiled(c, be, w):
            continue
        out.append(cfg)
    # fp32 (3xTF32) variants take several seconds each to compile; tuning all of them would make a first fp32
    # call take minutes. The small tiles are the ones that fit with fp32 operands anyway.
    return out[:3] if fp32 else out


def _precision(dtype: torch.dtype) -> tuple[str, bool]:
    """(dot precision, upcast): fp32 inputs use 3xTF32 on tensor cores (about fp32 accuracy; a plain FMA dot
    compiles very slowly at D=256); the CPU interpreter cannot do bf16 arithmetic, so bf16 is upcast there."""
    prec = ("ieee" if _interpret() else "tf32x3") if dtype == torch.float32 else "tf32"
    return prec, _interpret() and dtype == torch.bfloat16


# (device, tuning key, segment length, TNL_AUTOTUNE) -> the config that launched. Launch cost matters: at
# D=64 the kernels of a forward+backward run for less time than choosing their configs did (measured on an H100).
_CHOSEN: dict[tuple, tuple] = {}


def _agree(a: torch.Tensor, b: torch.Tensor, exact_inputs: bool) -> bool:
    """Two configs' results agree up to rounding (a miscompiled config is off by O(1), session 16). With bf16/fp16
    inputs the chunk size changes where operands are rounded, even for fp32 outputs such as states."""
    tol = 1e-3 if exact_inputs else 5e-2
    a, b = a.float(), b.float()
    if not torch.isfinite(b).all():
        return True  # the inputs carry inf/nan: nothing to compare
    return bool((a - b).norm() <= tol * b.norm() + 1e-6)


def _launch_tuned(device: torch.device, key: str, seg_len: int, candidates, launch, outputs,
                  exact_inputs: bool) -> None:
    """Run `launch(cfg)` with the autotuned choice among `candidates()`; a choice that does not fit this GPU
    (untuned or stale) falls back to the others, smallest tiles first. The choice is remembered per process.
    `outputs()`: the tensors a launch writes, compared between configs when tuning (see autotune.pick);
    `exact_inputs`: fp32 inputs (tight agreement expected)."""
    memo = (device.type, device.index, key, seg_len, os.environ.get("TNL_AUTOTUNE"))
    cfg = _CHOSEN.get(memo)
    if cfg is not None:
        return launch(cfg)
    cands = candidates()

    def bench(cfg):
        return triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20, return_mode="median")

    def verify(cfg, ref):
        launch(tuple(ref))
        want = [x.clone() for x in outputs()]
        launch(tuple(cfg))
        return all(_agree(x, y, exact_inputs) for x, y in zip(outputs(), want))

    best = tuple(autotune.pick(_device_tag(device), key, [list(x) for x in cands], bench, verify))
    order = [best] + [c for c in reversed(cands) if c != best]
    for i, cfg in enumerate(order):
        try:
            launch(cfg)
        except OutOfResources:
            if i == len(order) - 1:
                raise
            continue
        _CHOSEN[memo] = cfg
        return


def _chunk_pass(
    qr, kr, vr, groups, decay, init, init_strides, out, final, *,
    skv: float, sout: float, reverse: bool, final_decay: int, plan: _Plan, role: str, state_only: bool = False,
    act: tuple[bool, bool, bool] = (False, False, False), dact: tuple[torch.Tensor, int] | None = None,
    starts_t: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One generic pass: out = sout * (causal/anticausal decayed attention of (qr, kr, vr) + init term).
    Segmented plans first build each segment's start state (returned); `state_only` stops there.
    `starts_t`: start states another pass of the same plan already built, transposed ([.., DV, DK] of this pass):
    used instead of building them (the dk pass's state is the transpose of the dv pass's).
    `act`: SiLU applied to (qr, kr, vr) as loaded; `dact` = (raw input, head group): out *= SiLU'(raw)."""
    b, t, h, _ = out.shape
    dk, dv = qr.shape[-1], vr.shape[-1]
    bd = _pow2(dk)
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
    prefix = plan.prefix and starts_t is None and not state_only

    xraw, gx = dact if dact is not None else (decay, 1)
    sx = xraw.stride() if dact is not None else (0, 0, 0, 0)

    tiles = (qr, kr, vr, out) if not state_only else (kr, vr)
    tma_allowed = _tma_allowed() and not plan.varlen

    # the state-only pass may cut each segment into sub-segments (plan.state_split): (programs per head, their
    # length, per sequence); the main pass runs the plan's segments
    r = plan.state_split
    cuts = {True: (plan.g_total, plan.seg_len, plan.nseg)}
    cuts[False] = (plan.n * _cdiv(t, plan.seg_len // r), plan.seg_len // r, _cdiv(t, plan.seg_len // r)) if r > 1 \
        else cuts[True]
    # CHAIN (fixed length): each main-pass program chains the contributions before its segment into its start state
    # (one launch fewer than a scan; H100 hosts spent 40-100 us per launch) and leaves it in pbuf for later passes;
    # varlen plans and a state-only call (the fused dK/dV pass) chain them in `_scan_kernel`
    chain = plan.segmented and not plan.varlen and starts_t is None and not prefix and not state_only
    sub = None  # the state pass's contributions when split or chained (else they go into pbuf, scanned in place)

    def launch(cfg, write_o: bool):
        c, be, w, s, *rest = cfg
        # the alignment check only for TMA configs: pointer configs (D=64, launch-bound) skip it
        tma = bool(rest and rest[0]) and tma_allowed and _tma_ok(*tiles)
        g_total, seg_len, nseg = cuts[write_o]
        grid = (_cdiv(dv, be), h, g_total)
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
            BD=bd, BE=be, C=c, REVERSE=reverse, HAS_INIT=has_init and write_o,
            INIT_SHIFT=int(reverse and has_init), WRITE_O=write_o, STORE_FINAL=final is not None,
            FINAL_DECAY=final_decay,
            IS_VARLEN=plan.varlen, SEGMENTED=plan.segmented, PREC=prec, UPCAST=upcast,
            ACT_Q=act[0], ACT_K=act[1], ACT_V=act[2], DACT=dact is not None and write_o, P_T=starts_t is not None,
            EARLY_UPDATE=bd >= 256, PREFIX=prefix and write_o, PREFIX_C=_prefix_chunk(c, qr.dtype == torch.float32),
            TMA=tma, CHAIN=chain and write_o, num_warps=w, num_stages=s,
        )

    def run(configs, write_o: bool, tag: str):
        g_total, seg_len, _ = cuts[write_o]
        # a state pass cut into sub-segments has several short programs per SM: tuned apart
        suffix = plan.key_suffix if write_o or r == 1 else "|sub"
        key = (f"{tag}|{dk}x{dv}|{dtype_tag}|rev{int(reverse)}|init{int(has_init)}|seg{int(plan.segmented)}"
               + suffix)
        written = ([out] + ([final] if final is not None else [])) if write_o else [sub if sub is not None else pbuf]
        _launch_tuned(out.device, key, seg_len,
                      lambda: _candidates(configs, dk, dv, seg_len, qr.dtype == torch.float32,
                                          tma=_tma_capable(out.device)),
                      lambda cfg: launch(cfg, write_o), lambda: written, qr.dtype == torch.float32)

    if plan.segmented and starts_t is None and not prefix:
        nsub = cuts[False][2]
        if r > 1 or chain:
            sub = torch.empty(plan.n * nsub, h, dk, dv, device=out.device, dtype=torch.float32)
        run(_STATE_CONFIGS, False, "state")
        if not chain:
            bde, bee = min(bd, 64), min(_pow2(dv), 64)
            grid = (_cdiv(dv, bee), _cdiv(dk, bde), plan.n * h)
            _k._scan_kernel[grid](
                sub if sub is not None else pbuf, pbuf, init_, decay, plan.seqinfo if plan.varlen else decay, *si,
                t, h, dk, dv, cuts[False][1], nsub, plan.nseg, r,
                BD=bde, BE=bee, REVERSE=reverse, HAS_INIT=has_init, INIT_SHIFT=int(reverse and has_init),
                IS_VARLEN=plan.varlen, num_warps=4,
            )
    if not state_only:
        run(_MAIN_CONFIGS, True, role)
    return pbuf


# (chunk C, num_warps, num_stages) for the fused dK/dV pass; its E-block is all of E
_DKDV_CONFIGS = [(32, 8, 2), (16, 8, 2), (64, 8, 2), (32, 4, 2), (16, 4, 2)]  # C=16: no spills at D=E=128 (sm_90)
_DKDV_MAX_TILE = 128 * 128  # the D x E state stays in registers


def _dkdv_plan(b: int, t: int, h: int, cu_seqlens: torch.Tensor | None, device: torch.device,
               dims: tuple[int, int]) -> _Plan:
    """The fused dK/dV pass's plan: one program (all of E) per (head, segment), counted as one E-block."""
    return _Plan(b, t, h, 64, cu_seqlens, device, dims=dims)


def _dkdv_candidates(seg_len: int, fp32: bool) -> list[tuple]:
    if _interpret():
        return [(16, 4, 1)]
    cands = [c for c in _DKDV_CONFIGS if seg_len % c[0] == 0]
    return cands[:2] if fp32 else cands


def _small_tiles(dk: int, dv: int) -> bool:
    return _pow2(dk) <= 64 and _pow2(dv) <= 64


def _fused_dkdv_enabled(dk: int, dv: int) -> bool:
    """TNL_ATTN_BWD: split (the default: separate dK and dV passes) or fused (one dK/dV pass, where the D x E
    state fits in registers). On an H100 the split passes were faster at D=E=128 and, timed interleaved in one
    process, at D=E=64 too (0.77 / 0.77 / 1.12 ms vs 0.80 / 0.94 / 1.18 at T=1k / 8k / 64k)."""
    mode = os.environ.get("TNL_ATTN_BWD", "split")
    if mode not in ("split", "fused"):
        _fail(f"TNL_ATTN_BWD={mode!r} is not one of split, fused; unset it for the default (split)")
    return mode == "fused" and _pow2(dk) * _pow2(dv) <= _DKDV_MAX_TILE


def _dkdv_pass(q, k, v, do, group, decay, dfin, dk_out, dv_out, dinit, *, scale: float, plan: _Plan,
               qk_silu: bool = False) -> None:
    """dK and dV of every q-head in one reverse pass (`_dkdv_kernel`); segment start states from the dv role's
    state pass, which builds the same R."""
    b, t, h, d = q.shape
    e = v.shape[-1]
    bd, be = _pow2(d), _pow2(e)
    pbuf = None
    if plan.segmented:
        pbuf = _chunk_pass(k, q, do, (group, 1, 1), decay, dfin, dfin.stride() if dfin is not None else None,
                           dv_out, None, skv=scale, sout=1.0, reverse=True, final_decay=1, plan=plan, role="dv",
                           state_only=True, act=(qk_silu, qk_silu, False))
    prec, upcast = _precision(q.dtype)
    has_init = dfin is not None
    si = dfin.stride() if has_init else (0, 0, 0, 0)
    segs = plan.segs if plan.varlen else decay

    def launch(cfg):
        c, w, st = cfg
        _k._dkdv_kernel[(h, plan.g_total)](
            q, k, v, do, dk_out, dv_out, dfin if has_init else decay, pbuf if pbuf is not None else decay,
            dinit if dinit is not None else decay, decay, segs,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk_out.stride(), *dv_out.stride(), *si,
            t, h, group, d, e, plan.seg_len, plan.nseg, scale,
            BD=bd, BE=be, C=c, HAS_INIT=has_init, STORE_FINAL=dinit is not None,
            IS_VARLEN=plan.varlen, SEGMENTED=plan.segmented, PREC=prec, UPCAST=upcast, ACT=qk_silu,
            num_warps=w, num_stages=st,
        )

    key = f"dkdv|{d}x{e}|{str(q.dtype).replace('torch.', '')}|rev1|init{int(has_init)}|seg{int(plan.segmented)}"
    fp32 = q.dtype == torch.float32
    _launch_tuned(q.device, key, plan.seg_len, lambda: _dkdv_candidates(plan.seg_len, fp32), launch,
                  lambda: [dk_out, dv_out] + ([dinit] if dinit is not None else []), fp32)


def _check(q, k, v, decay, initial_state):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype not in _DTYPES:
            _fail(f"{name} has dtype {x.dtype}; the Triton kernel takes float16, bfloat16 or float32 "
                  "(use backend='torch' for float64)")
    if q.shape[-1] > _MAX_DIM or v.shape[-1] > _MAX_DIM:
        _fail(f"head dims up to {_MAX_DIM} are supported, got D={q.shape[-1]}, E={v.shape[-1]}")
    if not q.is_cuda and not _interpret():
        _fail("inputs must be CUDA tensors (or set TRITON_INTERPRET=1 for CPU)")


# ---------------------------------------------------------------------------------------------- custom ops

# "tnl" inside the package; a copy of this file elsewhere (the Hugging Face export) registers its own namespace,
# so both can live in one process.
_NS = "tnl" if __name__ == "tnl.ops.lightning_attn.chunk_triton" else "tnl_" + re.sub(r"\W", "_", __name__)


def _fwd_core(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act=None,
              k_act=None):
    """(o, final state or an empty tensor, segment start states of a segmented plan or None). `q_act`, `k_act`:
    SiLU(q), SiLU(k) computed by the caller (qk_silu), loaded as they are instead of activating q, k on load."""
    b, t, h, d = q.shape
    e = v.shape[-1]
    group = h // k.shape[2]
    plan = _Plan(b, t, h, e, cu_seqlens, q.device, dims=(d, e))
    o = torch.empty(b, t, h, e, device=q.device, dtype=q.dtype)
    final = torch.empty(plan.n, h, d, e, device=q.device, dtype=torch.float32) if output_final_state else None
    init = initial_state.float() if initial_state is not None else None
    qa, ka, load_act = (q_act, k_act, False) if q_act is not None else (q, k, qk_silu)
    starts = _chunk_pass(qa, ka, v, (1, group, group), decay, init, init.stride() if init is not None else None, o,
                         final, skv=1.0, sout=scale, reverse=False, final_decay=0, plan=plan, role="fwd",
                         act=(load_act, load_act, False))
    return o, (final if final is not None else q.new_empty(0, dtype=torch.float32)), starts


def _kept_starts_shape(q: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None) -> tuple | None:
    """Shape of the forward's segment start states when the custom op returns them for backward: fixed-length
    segmented plans only (a varlen plan's segment count depends on cu_seqlens' values, which a fake tensor lacks)."""
    if cu_seqlens is not None:
        return None
    b, t, h, d = q.shape
    e = v.shape[-1]
    plan = _Plan(b, t, h, e, None, q.device, dims=(d, e))
    return (plan.g_total, h, d, e) if plan.segmented else None


def _fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
    initial_state: Optional[torch.Tensor], output_final_state: bool, cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    qk_silu: bool, q_act: Optional[torch.Tensor] = None, k_act: Optional[torch.Tensor] = None,  # noqa: UP045
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, final state, segment start states kept for the dq pass or an empty tensor)."""
    o, final, starts = _fwd_core(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu,
                                 q_act, k_act)
    if starts is None or cu_seqlens is not None:  # what _kept_starts_shape tells the fake implementation
        starts = q.new_empty(0, dtype=torch.float32)
    return o, final, starts


_fwd_op = torch.library.custom_op(f"{_NS}::lightning_attn_fwd", mutates_args=())(_fwd_impl)


@_fwd_op.register_fake
def _fwd_fake(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act=None, k_act=None):
    b, t, h, d = q.shape
    e = v.shape[-1]
    n = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else b
    o = q.new_empty(b, t, h, e)
    final = q.new_empty((n, h, d, e) if output_final_state else (0,), dtype=torch.float32)
    starts = q.new_empty(_kept_starts_shape(q, v, cu_seqlens) or (0,), dtype=torch.float32)
    return o, final, starts


def _bwd_impl(
    do: torch.Tensor, dfinal: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # noqa: UP045
    decay: torch.Tensor, initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    scale: float,
    need_dq: bool, need_dkv: bool, qk_silu: bool, fwd_starts: torch.Tensor,
    q_act: Optional[torch.Tensor] = None, k_act: Optional[torch.Tensor] = None,  # noqa: UP045
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # custom_op schemas want typing.Optional
    return _bwd_core(do, dfinal, q, k, v, decay, initial_state, cu_seqlens, scale, need_dq, need_dkv, qk_silu,
                     fwd_starts=fwd_starts if fwd_starts.numel() else None, q_act=q_act, k_act=k_act)


def _backward_plans(b: int, t: int, h: int, d: int, e: int, cu_seqlens: torch.Tensor | None,
                    device: torch.device) -> tuple[_Plan, _Plan]:
    """Plans of the passes whose E-blocks span D (dq, dk) and E (dv; the forward's). When both cut sequences into
    segments they share the forward's cut, so dq reuses the forward's start states and dk the dv pass's instead of
    each building its own (a state pass over two tensors and a scan each; D=256, E=128, T=64k, B=1 cut at 16k
    and 8k before)."""
    plan_e = _Plan(b, t, h, e, cu_seqlens, device, dims=(d, e))
    if plan_e.segmented or d == e:
        # the forward's cut gives dq and dk their start states for free, even where their own plan would not cut
        # (H100, D=256 x E=128, B=2, T=32k: 128 unsegmented dq/dk programs of 32k tokens, one per SM, 4.5 ms
        # fwd+bwd against 3.3 at T=16k)
        return plan_e, plan_e
    return _Plan(b, t, h, d, cu_seqlens, device, dims=(d, e)), plan_e


def _bwd_core(do, dfinal, q, k, v, decay, initial_state, cu_seqlens, scale, need_dq, need_dkv, qk_silu,
              fwd_starts=None, q_act=None, k_act=None, out=None):
    """`fwd_starts`: the forward's segment start states, or None (varlen under the custom ops, whose fake
    implementation cannot know a varlen plan's data-dependent segment count). `q_act`, `k_act` (with qk_silu):
    SiLU(q), SiLU(k) as the forward loaded them; the passes load them as they are and only multiply their dq, dk
    outputs by SiLU'(q), SiLU'(k) (gradients w.r.t. the raw q, k either way). `out`: (dq, dk, dv) tensors, any
    strides, to write the gradients into (H == Hkv, all three needed)."""
    b, t, h, d = q.shape
    hkv, e = k.shape[2], v.shape[-1]
    group = h // hkv
    if out is not None and (group != 1 or not (need_dq and need_dkv)):
        raise ValueError("lightning_attn backward: out= needs H == Hkv and all of dq, dk, dv")
    plan_d, plan_e = _backward_plans(b, t, h, d, e, cu_seqlens, q.device)
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
        _chunk_pass(do, v, ka, (1, group, group), decay, init, st, dq, None,
                    skv=1.0, sout=scale, reverse=False, final_decay=0, plan=plan_d, role="dq",
                    act=(False, False, la), dact=(q, 1) if qk_silu else None,
                    starts_t=fwd_starts if same_plan else None)
    need_dinit = initial_state is not None
    dinit = torch.empty(plan_e.n, h, d, e, device=q.device, dtype=torch.float32) if need_dinit else None
    kv_dtype = k.dtype if group == 1 else torch.float32
    fused = need_dkv and _fused_dkdv_enabled(d, e)
    if fused:
        # one reverse pass for both (TNL_ATTN_BWD=fused)
        plan_f = _dkdv_plan(b, t, h, cu_seqlens, q.device, (d, e))
        dk, dv = out[1:] if out is not None else (torch.empty(b, t, h, d, device=q.device, dtype=kv_dtype),
                                                  torch.empty(b, t, h, e, device=q.device, dtype=kv_dtype))
        _dkdv_pass(qa, ka, v, do, group, decay, dfin, dk, dv, dinit, scale=scale, plan=plan_f, qk_silu=la)
    elif need_dkv or need_dinit:
        # dv_j = k_j R_j, R_j = sum_{t>=j} lambda^(t-j) scale q_t^T do_t + lambda^(T-j) dfinal: reverse order
        dv = out[2] if out is not None else torch.empty(b, t, h, e, device=q.device, dtype=kv_dtype)
        r_starts = _chunk_pass(ka, qa, do, (group, 1, 1), decay, dfin, dfin.stride() if dfin is not None else None,
                               dv, dinit, skv=scale, sout=1.0, reverse=True, final_decay=1, plan=plan_e, role="dv",
                               act=(la, la, False))
    if need_dkv and not fused:
        # dk_j = v_j R_j^T: reverse order on (v, do, q), state R^T; the dv pass built R's segment start states
        dk = out[1] if out is not None else torch.empty(b, t, h, d, device=q.device, dtype=kv_dtype)
        st = (dfin.stride(0), dfin.stride(1), dfin.stride(3), dfin.stride(2)) if dfin is not None else None
        _chunk_pass(v, do, qa, (group, 1, 1), decay, dfin, st, dk, None,
                    skv=scale, sout=1.0, reverse=True, final_decay=0, plan=plan_d, role="dk",
                    act=(False, False, la), dact=(k, group) if qk_silu else None,
                    starts_t=r_starts if same_plan else None)
    if not need_dkv:
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    elif group > 1:
        dk = dk.view(b, t, hkv, group, d).sum(3).to(k.dtype)
        dv = dv.view(b, t, hkv, group, e).sum(3).to(v.dtype)
    if fused and qk_silu and q_act is not None:  # the fused pass's dk is w.r.t. SiLU(k) here
        kf = k.float()
        sk = torch.sigmoid(kf)
        dk = (dk.float() * sk * (1 + kf * (1 - sk))).to(k.dtype)
        if out is not None:
            dk = out[1].copy_(dk)
    empty = q.new_empty(0, dtype=torch.float32)
    return dq, dk, dv, (dinit if dinit is not None else empty)


_bwd_op = torch.library.custom_op(f"{_NS}::lightning_attn_bwd", mutates_args=())(_bwd_impl)


@_bwd_op.register_fake
def _bwd_fake(do, dfinal, q, k, v, decay, initial_state, cu_seqlens, scale, need_dq, need_dkv, qk_silu, fwd_starts,
              q_act=None, k_act=None):
    dinit = (initial_state.new_empty(initial_state.shape, dtype=torch.float32) if initial_state is not None
             else q.new_empty(0, dtype=torch.float32))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dinit


def _setup_context(ctx, inputs, output):
    q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act, k_act = inputs
    # the forward's segment start states are the dq pass's (transposed): kept, backward skips a state pass and a
    # scan for B * segments * H * D * E fp32 (8 MiB per layer at tnl_385m, T=8k)
    ctx.save_for_backward(q, k, v, decay, initial_state, cu_seqlens, output[2], q_act, k_act)
    ctx.scale = scale
    ctx.qk_silu = qk_silu
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
        starts if starts is not None else q.new_empty(0, dtype=torch.float32), q_act, k_act,
    )
    dinit = dinit.to(ctx.init_dtype) if initial_state is not None else None
    return dq, dk, dv, None, None, dinit, None, None, None, None, None  # none for q_act, k_act: see _bwd_core


def _backward(ctx, do, dfinal, dstarts):
    return _backward_with(_bwd_op, ctx, do, dfinal)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLightningAttn(torch.autograd.Function):
    """The same forward and backward as the custom ops, for eager mode: torch.library's autograd wrapper costs
    a few hundred microseconds of CPU per call (measured on an H100), more than the kernels take at D=64."""

    @staticmethod
    def forward(ctx, q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act, k_act):
        # eager keeps start states for varlen plans too (the custom ops cannot: see _kept_starts_shape)
        o, final, starts = _fwd_core(q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu,
                                     q_act, k_act)
        _setup_context(ctx, (q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens, qk_silu, q_act,
                             k_act), (o, final, starts))
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        return _backward_with(_bwd_impl, ctx, do, dfinal)


# ---------------------------------------------------------------------------------------------- public API


def triton_lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    qk_activation: str | None = None,
    qk_activated: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked lightning attention in Triton; same contract as `lightning_attn` (inputs already validated).
    `qk_activation="silu"`: q and k are raw and SiLU is applied inside the kernels (gradients are w.r.t. raw).
    `qk_activated`: (SiLU(q), SiLU(k)) when the caller has them: the kernels load those as they are, and backward
    only multiplies dq, dk by SiLU'(q), SiLU'(k) as it writes them (no separate SiLU backward, and dq, dk come
    out w.r.t. the raw q, k; no gradient flows into the activated copies)."""
    _check(q, k, v, decay, initial_state)
    check_qk_activation(q, k, qk_activation, qk_activated, _fail)
    q_act, k_act = qk_activated if qk_activated is not None else (None, None)
    decay = decay.detach().to(torch.float32).contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32)
    # torch.compile traces the custom op; eager calls skip its dispatch and autograd wrappers
    fn = _fwd_op if torch.compiler.is_compiling() else _EagerLightningAttn.apply
    o, final = fn(q, k, v, decay, float(scale), initial_state, bool(output_final_state), cu_seqlens,
                  qk_activation == "silu", q_act, k_act)[:2]
    return o, (final if output_final_state else None)


def triton_attn_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, *, scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None, qk_activation: str | None = None,
    qk_activated: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernels without autograd, for ops that build their own backward around them (the TNL mixer's,
    `tnl/model/fused_mixer.py`): (o, segment start states for `triton_attn_backward`, or an empty tensor; its
    shape is `triton_attn_states_shape`). `qk_activation`, `qk_activated`: as in `triton_lightning_attn`. No
    initial or final state."""
    _check(q, k, v, decay, None)
    check_qk_activation(q, k, qk_activation, qk_activated, _fail)
    q_act, k_act = qk_activated if qk_activated is not None else (None, None)
    cu = cu_seqlens.to(torch.int32) if cu_seqlens is not None else None
    o, _, starts = _fwd_impl(q, k, v, decay.detach().to(torch.float32).contiguous(), float(scale), None, False, cu,
                             qk_activation == "silu", q_act, k_act)
    return o, starts


def triton_attn_states_shape(q: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> tuple:
    """Shape of the start states `triton_attn_forward` returns (for fake implementations): (0,) when none."""
    return _kept_starts_shape(q, v, cu_seqlens) or (0,)


def triton_attn_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, starts: torch.Tensor,
    *, scale: float = 1.0, cu_seqlens: torch.Tensor | None = None, qk_activation: str | None = None,
    qk_activated: tuple[torch.Tensor, torch.Tensor] | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernels of `triton_attn_forward`: (dq, dk, dv), w.r.t. the raw q, k with qk_activation.
    `out`: three tensors of q's, k's and v's shapes, any strides (e.g. slices of one packed gradient), to write
    into (H == Hkv only)."""
    q_act, k_act = qk_activated if qk_activated is not None else (None, None)
    cu = cu_seqlens.to(torch.int32) if cu_seqlens is not None else None
    if out is not None and any(o_.shape != x.shape for o_, x in zip(out, (q, k, v))):
        _fail(f"out shapes {[tuple(o_.shape) for o_ in out]} must be q's, k's and v's")
    dq, dk, dv, _ = _bwd_core(do, None, q, k, v, decay.detach().to(torch.float32).contiguous(), None, cu,
                              float(scale), True, True, qk_activation == "silu",
                              fwd_starts=starts if starts.numel() else None, q_act=q_act, k_act=k_act, out=out)
    return dq, dk, dv


def triton_lightning_attn_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, state: torch.Tensor, scale: float = 1.0,
) -> torch.Tensor:
    """One decoding step, state updated in place. q: [B, H, D] (or [B, 1, H, D]); k: [B, Hkv, D]; v: [B, Hkv, E];
    state: [B, H, D, E] float32. Returns o [B, H, E] (or [B, 1, H, E]) in q's dtype."""
    squeeze = q.dim() == 4
    if squeeze:
        if q.shape[1] != 1 or k.shape[1] != 1 or v.shape[1] != 1:
            _fail("decode takes one token per sequence (T = 1)")
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        _fail("decode expects q [B, H, D], k [B, Hkv, D], v [B, Hkv, E]")
    b, h, d = q.shape
    hkv, e = k.shape[1], v.shape[-1]
    if h % hkv or k.shape[0] != b or v.shape[:2] != (b, hkv) or k.shape[2] != d:
        _fail(f"decode shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if state.shape != (b, h, d, e) or state.dtype != torch.float32:
        _fail(f"state must be float32 of shape [{b}, {h}, {d}, {e}], got {state.dtype} {tuple(state.shape)}")
    _check(q, k, v, decay, None)
    decay = decay.detach().to(torch.float32).contiguous()
    o = torch.empty(b, h, e, device=q.device, dtype=q.dtype)
    bd = _pow2(d)
    be = min(_pow2(e), max(16, 8192 // bd))
    grid = (_cdiv(e, be), h, b)
    _k._decode_kernel[grid](
        q, k, v, o, state, decay, *q.stride(), *k.stride(), *v.stride(), *o.stride(), *state.stride(),
        h // hkv, d, e, float(scale), BD=bd, BE=be, num_warps=4,
    )
    return o.unsqueeze(1) if squeeze else o


__all__ = [
    "triton_attn_backward", "triton_attn_forward", "triton_attn_states_shape", "triton_lightning_attn",
    "triton_lightning_attn_decode",
]
