"""How one call's sequences are cut into segments, and the GPU facts the cut depends on.

A pass runs one program per (E-block of 64, head, segment); each walks its segment chunk by chunk with the D x BE
state in registers. Few programs leave SMs idle, so long sequences are cut into segments whose start states come
from a state-only pass (chained into them by the main pass, CHAIN, or by a scan for varlen plans) or, for two
small-tile segments, from the main pass itself (PREFIX). Every pass of one call shares its `Plan`.
"""

from __future__ import annotations

import functools

import torch
import triton

from ...settings import triton_interpret
from .options import kernel_options


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2(x: int) -> int:
    """Next power of two, at least 16 (tl.arange sizes). Plain Python: triton's helpers cost microseconds per
    call, and every launch computes several of these."""
    return max(16, 1 << (x - 1).bit_length())


@functools.cache
def _cuda_properties(index: int):
    """Properties of CUDA device `index`, read once: the per-call lookups below sit on the launch path."""
    return torch.cuda.get_device_properties(index)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return _cuda_properties(_cuda_index(device)).multi_processor_count


def device_tag(device: torch.device) -> str:
    """The GPU model and Triton version: what a tuning result holds for."""
    name = _cuda_properties(_cuda_index(device)).name if device.type == "cuda" else device.type
    return f"{name}-triton{triton.__version__}"


def tma_capable(device: torch.device) -> bool:
    """TMA configs are candidates on Hopper or newer (and in the interpreter)."""
    return triton_interpret() or (device.type == "cuda" and _cuda_properties(_cuda_index(device)).major >= 9)


def small_tiles(dk: int, dv: int) -> bool:
    return pow2(dk) <= 64 and pow2(dv) <= 64


# Segment lengths are multiples of every chunk size C, and long enough that the state pass stays a small part
SEG_ALIGN, MIN_SEG = 256, 512
# Fixed-length small-tile plans (D, E <= 64) with at most this many segments skip the state pass and the scan: each
# segment's program first runs the state-only loop over the tokens before it (PREFIX in _chunk_kernel). With two
# segments that reads what a state pass reads, in one launch instead of three (H100, D=64, H=16, T=16k: B=4 fwd+bwd
# 1.19 -> 0.94 ms, unsegmented before; B=3 1.57-1.75 -> 0.94-1.09, state pass before). Larger tiles lost with it
# (D=128, B=4, T=16k: 2.17 vs 2.12 ms; 4 segments at D=128 and D=256: fwd 0.23 vs 0.18, 1.90 vs 1.21 ms).
PREFIX_MAX_SEGS = 2
# The state-only pass cuts segments into R sub-segments (the main pass or the scan chains them) until it has this
# many programs per SM with work: one program streams its tokens chunk after chunk, bound by each step's latency, so
# one per SM reads k and v well below HBM bandwidth (H100, D=E=128, B=2, T=32k, 64 of them: 0.16 ms for 268 MB;
# split in 8, 0.13 ms). Each sub-segment is one serial step of that chain (about a microsecond): at most
# MAX_STATE_SUBS per sequence, of at least MIN_STATE_SUB tokens.
STATE_PROGRAMS_PER_SM, MIN_STATE_SUB, MAX_STATE_SUBS = 3, 1024, 16


def prefix_chunk(c: int, fp32: bool) -> int:
    """Chunk of the PREFIX state-only loop: four times the main loop's, up to 256 (128 for fp32 tiles, to fit in
    shared memory). Each step's latency, not its size, bounds that loop (H100, D=64, H=16, T=16k, B=3 / B=4
    forward: 0.251-0.255 / 0.280 ms with the main loop's chunk, 0.236 / 0.262 with twice it, 0.223 / 0.259)."""
    return min(4 * c, 128 if fp32 else 256)


def _round_seg(n: int) -> int:
    return max(MIN_SEG, cdiv(n, SEG_ALIGN) * SEG_ALIGN)


def _state_split(seg_len: int, nseg: int, working_programs: int, sms: int) -> int:
    """Sub-segments per segment for the state-only pass (a power of two; 1: no split). `working_programs`: its
    programs that have tokens to read at R = 1 (all but the last segment's)."""
    r = 1
    while (working_programs * r < STATE_PROGRAMS_PER_SM * sms and seg_len % (2 * r * SEG_ALIGN) == 0
           and seg_len // (2 * r) >= MIN_STATE_SUB and nseg * 2 * r <= MAX_STATE_SUBS):
        r *= 2
    return r


class Plan:
    """How sequences are cut into segments; shared by every pass of one call."""

    def __init__(self, b: int, t: int, h: int, dv: int, cu_seqlens: torch.Tensor | None, device: torch.device,
                 dims: tuple[int, int]):
        # dv: this pass's E (its E-blocks); dims: the call's (D, E), whose tile class sets the rules below
        small = small_tiles(*dims)
        opts = kernel_options()
        total = t if cu_seqlens is not None else b * t
        # Programs that keep the GPU busy without segments. Small tiles (D, E <= 64) stream at HBM bandwidth with
        # one program per SM (H100: 128 unsegmented programs beat 256 segmented ones, whose state pass re-reads k
        # and v); larger tiles are latency-bound per chunk and want two per SM once they segment at all.
        sms = num_sms(device)
        # fixed-length plans over 64 fill one wave too: one program per SM with its `|few` configs (TMA, 3 stages)
        # and a state pass split finer (`_state_split`) beat two per SM (H100, H=16, B=1, T=64k, attention kernels
        # fwd / fwd+bwd: D=E=128 0.569 / 1.940 vs 0.629 / 2.165 ms; D=256 x E=128 1.044 / 3.668 vs 1.074 / 3.699)
        target = opts.programs or (1 if small or cu_seqlens is None else 2) * sms
        eblocks = cdiv(dv, 64)  # E-blocks of 64 per (row, head)
        units = b * h * eblocks  # unsegmented programs
        if opts.seg_len:
            seg_len = opts.seg_len  # a multiple of 16: every config's chunk divides it
        elif cu_seqlens is None and small and 16 * units >= 7 * sms and 2 * units <= sms and PREFIX_MAX_SEGS >= 2:
            # small tiles filling 7/16 to 1/2 of a wave: two segments, the second building its own start state
            # (PREFIX: no state pass, scan or extra launch); at most one program per SM
            seg_len = _round_seg(cdiv(t, 2))
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
            seg_len = _round_seg(cdiv(t, nseg))
        else:
            seg_len = _round_seg(cdiv(total * h * eblocks, target))
        self.seg_len = seg_len
        self.varlen = cu_seqlens is not None
        self.segs = self.seqinfo = None
        self.prefix = False
        self.state_split = 1  # sub-segments per segment in the state-only pass (fixed length)
        if cu_seqlens is None:
            self.n = b
            self.nseg = cdiv(t, seg_len)
            self.g_total = b * self.nseg
            self.segmented = self.nseg > 1
            self.prefix = small and 1 < self.nseg <= PREFIX_MAX_SEGS
            if self.segmented and not self.prefix:
                self.state_split = _state_split(seg_len, self.nseg, b * (self.nseg - 1) * h * eblocks, sms)
        else:
            bounds = cu_seqlens.tolist()
            self.n = len(bounds) - 1
            segs, info = [], []
            for i, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
                ns = max(1, cdiv(e - a, seg_len))
                info.append((len(segs), ns, e - a))
                for j in range(ns):
                    st = a + j * seg_len
                    segs.append((i, st, min(st + seg_len, e), int(j == 0) | (int(j == ns - 1) << 1)))
            self.nseg = 1
            self.g_total = len(segs)
            self.segmented = any(ns > 1 for _, ns, _ in info)
            # asynchronous copies (the sources are pageable: staged at once, so they may be freed)
            self.segs = torch.tensor(segs, dtype=torch.int32).to(device, non_blocking=True)
            self.seqinfo = torch.tensor(info, dtype=torch.int32).to(device, non_blocking=True)
        # tuned apart: tiles over 64 with at most one wave of programs, where the configs that win with many programs
        # lose (H100, D=256 fwd: C=32, 4 warps 0.91 vs 1.17 ms for 8 warps at 2048 programs; at 128, one per SM,
        # 8 warps and 3 stages win: 1.05 vs 1.09; D=128 at 128 programs: 3 stages, 0.55 vs 0.64 with 2)
        self.key_suffix = "|few" if not small and self.g_total * h * eblocks <= sms else ""


def backward_plans(b: int, t: int, h: int, d: int, e: int, cu_seqlens: torch.Tensor | None,
                   device: torch.device) -> tuple[Plan, Plan]:
    """Plans of the passes whose E-blocks span D (dq, dk) and E (dv; the forward's). When both cut sequences into
    segments they share the forward's cut, so dq reuses the forward's start states and dk the dv pass's instead of
    each building its own (a state pass over two tensors and a scan each; D=256, E=128, T=64k, B=1 cut at 16k
    and 8k before)."""
    plan_e = Plan(b, t, h, e, cu_seqlens, device, dims=(d, e))
    if plan_e.segmented or d == e:
        # the forward's cut gives dq and dk their start states for free, even where their own plan would not cut
        # (H100, D=256 x E=128, B=2, T=32k: 128 unsegmented dq/dk programs of 32k tokens, one per SM, 4.5 ms
        # fwd+bwd against 3.3 at T=16k)
        return plan_e, plan_e
    return Plan(b, t, h, d, cu_seqlens, device, dims=(d, e)), plan_e
