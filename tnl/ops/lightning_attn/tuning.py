"""Launch configs of the lightning attention kernels: the candidates, and the choice among them.

A config is (chunk C, E-block BE, num_warps, num_stages[, 1: the chunk loop's tiles through TMA descriptors]).
The choice is made once per (device, tuning key, segment length) and process: the user's cached result under
`cache_dir()/autotune/`, else the shipped table for this GPU model (`tuned_configs.py`), else a timed run of every
candidate whose results are checked against another config's (a miscompiled config can be the fastest).
`TNL_AUTOTUNE=retune` ignores the table and the cache (tuning each key once per process and overwriting the cache),
`TNL_AUTOTUNE=0` turns tuning off (the first valid candidate is used).
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import triton
import triton.testing
from triton.runtime.errors import OutOfResources

from ...atomic import write_text_atomic
from ...settings import autotune_mode, cache_dir, triton_interpret
from .options import kernel_options
from .plan import device_tag, pow2
from .tuned_configs import TUNED

# the main passes; the first entry is the untuned default
MAIN_CONFIGS = [
    (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (128, 64, 8, 2), (64, 64, 4, 3),
    (32, 128, 8, 2), (32, 64, 8, 3),
]
STATE_CONFIGS = [(64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2)]
# The same with the chunk loop's tiles through TMA descriptors (sm_90+, fixed-length plans): H100, one program per
# SM, T=16k forward: D=E=128 0.42 vs 0.55 ms, D=256 x E=128 0.88 vs 1.05
TMA_CONFIGS = [(64, 64, 4, 3, 1), (64, 64, 8, 3, 1), (64, 64, 4, 2, 1), (64, 64, 8, 2, 1), (32, 64, 8, 3, 1),
               (128, 64, 8, 2, 1)]
SMALL_CONFIGS = [(32, 64, 4, 2), (32, 32, 4, 1), (16, 32, 4, 1)]
INTERPRET_CONFIG = (16, 32, 4, 1)


def miscompiled(c: int, be: int, w: int) -> bool:
    """Configs that Triton 3.6 compiles wrongly on sm_90 (H100, H200): C=64 chunks with E-blocks of 32 or less and
    4 warps give wrong outputs (relative error 0.5-7) or illegal memory accesses whenever the operands take the
    register path into the dots: SiLU folded into q and k (D=48-128), or q, k, v at addresses that are not 16-byte
    aligned (D=64-256); aligned plain inputs happen to come out right. Every other config, and the interpreter,
    match float64 (`python -m tools.probe_attn_configs --excluded --init --misaligned`)."""
    return c >= 64 and be <= 32 and w == 4


def candidates(configs, dk: int, dv: int, seg_len: int, fp32: bool, tma: bool = False) -> list[tuple]:
    """Valid configs for this call, in order; `tma`: add the TMA variants (kept last: untuned defaults stay)."""
    if triton_interpret():
        c, be, w, s, *rest = INTERPRET_CONFIG
        return [(c, min(be, pow2(dv)), w, s, *rest)]
    bd = pow2(dk)
    if fp32 or bd >= 256:  # big tiles: start from a config that fits in shared memory
        configs = SMALL_CONFIGS + list(configs)
    out = []
    for c, be, w, s, *rest in configs + SMALL_CONFIGS + (TMA_CONFIGS if tma else []):
        be = min(be, pow2(dv))
        cfg = (c, be, w, s, *rest)
        if seg_len % c or (bd >= 256 and c > 64) or cfg in out or miscompiled(c, be, w):
            continue
        out.append(cfg)
    # fp32 (3xTF32) variants take several seconds each to compile; tuning all of them would make a first fp32
    # call take minutes. The small tiles are the ones that fit with fp32 operands anyway.
    return out[:3] if fp32 else out


# ---------------------------------------------------------------------------------------------- choice and cache

_LOCK = threading.Lock()
_MEMORY: dict[str, list] = {}
_LOADED: set[str] = set()
_TUNED_HERE: set[str] = set()  # keys benchmarked by this process (what `retune` trusts)


def _cache_file(tag: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)
    return cache_dir() / "autotune" / f"lightning_attn_{safe}.json"


def _load(tag: str) -> None:
    if tag in _LOADED:
        return
    _LOADED.add(tag)
    try:
        data = json.loads(_cache_file(tag).read_text())
        for key, cfg in data.items():
            _MEMORY.setdefault(f"{tag}|{key}", cfg)
    except (OSError, ValueError):
        pass


def _save(tag: str) -> None:
    prefix = f"{tag}|"
    data = {k[len(prefix):]: v for k, v in _MEMORY.items() if k.startswith(prefix)}
    try:
        write_text_atomic(_cache_file(tag), json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home only costs re-tuning


def enabled() -> bool:
    return autotune_mode() != "0" and not triton_interpret()


def shipped(tag: str, key: str, configs: Sequence) -> list | None:
    """The shipped choice for this GPU model and key, if any and if it is one of this call's valid `configs`."""
    if autotune_mode() == "retune":
        return None
    gpu = tag.rsplit("-triton", 1)[0]
    cfg = TUNED.get(gpu, {}).get(key)
    if cfg is None or list(cfg) not in [list(c) for c in configs]:
        return None
    return list(cfg)


def _is_device_fault(exc: Exception) -> bool:
    """A sticky CUDA error (illegal address, device-side assert, ...), unlike a config that does not fit."""
    msg = str(exc).lower()
    return "illegal memory access" in msg or "device-side assert" in msg or "illegal instruction" in msg \
        or "misaligned address" in msg or "unspecified launch failure" in msg


def pick(tag: str, key: str, configs: Sequence[list], bench: Callable[[list], float],
         verify: Callable[[list, list], bool] | None = None) -> list:
    """Return the fastest config for `key` on device `tag`; `bench(cfg)` runs it and returns ms (raises if it
    cannot run). `verify(cfg, ref)`: whether cfg's results agree with those of `ref`, the timed config with the
    smallest tile (product of its first two entries). A compiler can miscompile one config of a kernel (Triton 3.6
    on sm_90 did: `miscompiled`), so the fastest config that agrees wins, and the ones that disagree are named; when
    the two disagree, a third config decides which of them is wrong."""
    full = f"{tag}|{key}"
    with _LOCK:
        _load(tag)
        # a remembered choice counts only while it is still a candidate (candidate lists change between versions)
        fresh = full in _TUNED_HERE or autotune_mode() != "retune"
        if fresh and full in _MEMORY and list(_MEMORY[full]) in [list(c) for c in configs]:
            return _MEMORY[full]
    known = shipped(tag, key, configs)  # costs no timing: used with tuning off too
    if known is not None:
        return known
    if not enabled():
        return configs[0]
    timed = []
    for cfg in configs:
        try:
            timed.append((bench(cfg), cfg))
        except Exception as exc:  # out of shared memory / registers, or it does not compile: skip the candidate
            if _is_device_fault(exc):  # the CUDA context is lost: every later launch would fail, name this one
                raise RuntimeError(f"lightning_attn autotune: a GPU fault surfaced while timing candidate config {cfg} "
                                   f"for {key} ({exc}); CUDA errors are asynchronous, so find the faulting kernel with "
                                   "CUDA_LAUNCH_BLOCKING=1 or python -m tools.probe_attn_configs") from exc
    if not timed:
        return configs[0]
    timed.sort(key=lambda x: x[0])
    best = timed[0][1]
    if verify is not None and len(timed) > 1:
        by_tile = sorted((cfg for _, cfg in timed), key=lambda c: c[0] * c[1])
        rejected = []  # (config, the config it was compared with): the smallest tile's own check uses the next one
        for _, cfg in timed:
            ref = by_tile[0] if by_tile[0] != cfg else by_tile[1]
            if verify(cfg, ref):
                best = cfg
                break
            # which of the two is wrong? a third config breaks the tie (else a broken reference would reject all)
            third = next((c for c in by_tile if c != cfg and c != ref), None)
            if third is not None and verify(cfg, third) and not verify(ref, third):
                best = cfg
                rejected.append(f"{ref} (vs {cfg} and {third})")
                break
            rejected.append(f"{cfg} (vs {ref})")
        else:
            raise RuntimeError(f"lightning_attn autotune: no candidate config for {key} agrees with the smallest-tile "
                               f"config: {', '.join(rejected)} on this GPU and Triton version (miscompiled?); run "
                               "python -m tools.probe_attn_configs, or use the torch attention backend")
        if rejected:
            warnings.warn(f"lightning_attn autotune: configs for {key} disagree with the smallest-tile config, "
                          f"{', '.join(rejected)}, on this GPU and Triton version (miscompiled?) and are left out; "
                          "python -m tools.probe_attn_configs --excluded checks every config against float64",
                          stacklevel=2)
    with _LOCK:
        _MEMORY[full] = best
        _TUNED_HERE.add(full)
        _save(tag)
    return best


# (device, tuning key, segment length, autotune mode, kernel options) -> the config that launched. Launch cost
# matters: at D=64 the kernels of a forward+backward run for less time than choosing their configs did (H100).
_CHOSEN: dict[tuple, tuple] = {}


def _agree(a: torch.Tensor, b: torch.Tensor, exact_inputs: bool) -> bool:
    """Two configs' results agree up to rounding (a miscompiled config is off by O(1)). With bf16/fp16 inputs the
    chunk size changes where operands are rounded, even for fp32 outputs such as states."""
    tol = 1e-3 if exact_inputs else 5e-2
    a, b = a.float(), b.float()
    if not torch.isfinite(b).all():
        return True  # the inputs carry inf/nan: nothing to compare
    return bool((a - b).norm() <= tol * b.norm() + 1e-6)


def launch_tuned(device: torch.device, key: str, seg_len: int, cands: Callable[[], list[tuple]],
                 launch: Callable[[tuple], None], outputs: Callable[[], list[torch.Tensor]],
                 exact_inputs: bool) -> None:
    """Run `launch(cfg)` with the tuned choice among `cands()`; a choice that does not fit this GPU (untuned or
    stale) falls back to the others, smallest tiles first. The choice is remembered per process. `outputs()`: the
    tensors a launch writes, compared between configs when tuning (see `pick`); `exact_inputs`: fp32 inputs (tight
    agreement expected)."""
    memo = (device.type, device.index, key, seg_len, autotune_mode(), kernel_options())
    cfg = _CHOSEN.get(memo)
    if cfg is not None:
        return launch(cfg)
    configs = cands()

    def bench(cfg):
        return triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20, return_mode="median")

    def verify(cfg, ref):
        launch(tuple(ref))
        want = [x.clone() for x in outputs()]
        launch(tuple(cfg))
        return all(_agree(x, y, exact_inputs) for x, y in zip(outputs(), want))

    best = tuple(pick(device_tag(device), key, [list(x) for x in configs], bench, verify))
    order = [best] + [c for c in reversed(configs) if c != best]
    for i, cfg in enumerate(order):
        try:
            launch(cfg)
        except OutOfResources:
            if i == len(order) - 1:
                raise
            continue
        _CHOSEN[memo] = cfg
        return
