"""Small autotuner for the lightning attention kernels, cached in memory and on disk.

Best configs are stored per (kernel role, shape class, dtype, device, triton version) in a JSON file under
`$TNL_CACHE_DIR/autotune/` (default `~/.cache/tnl/autotune/`), so a second process starts without tuning.
Without a cached entry, a GPU listed in `tuned_configs.py` gets the shipped choice (no tuning on a first run);
`TNL_AUTOTUNE=retune` ignores that table and the results cached by earlier processes (it tunes each key once per
process and overwrites the cache), `TNL_AUTOTUNE=0` turns tuning off (the first valid candidate is used).
"""

import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .tuned_configs import TUNED

_LOCK = threading.Lock()
_MEMORY: dict[str, dict] = {}
_LOADED: set[str] = set()
_TUNED_HERE: set[str] = set()  # keys benchmarked by this process (what `retune` trusts)


def cache_dir() -> Path:
    root = os.environ.get("TNL_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tnl"
    return base / "autotune"


def _cache_file(device_tag: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device_tag)
    return cache_dir() / f"lightning_attn_{safe}.json"


def _load(device_tag: str) -> None:
    if device_tag in _LOADED:
        return
    _LOADED.add(device_tag)
    try:
        data = json.loads(_cache_file(device_tag).read_text())
        for key, cfg in data.items():
            _MEMORY.setdefault(f"{device_tag}|{key}", cfg)
    except (OSError, ValueError):
        pass


def _save(device_tag: str) -> None:
    prefix = f"{device_tag}|"
    data = {k[len(prefix):]: v for k, v in _MEMORY.items() if k.startswith(prefix)}
    path = _cache_file(device_tag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs re-tuning


def enabled() -> bool:
    return os.environ.get("TNL_AUTOTUNE", "1") != "0" and os.environ.get("TRITON_INTERPRET") != "1"


def shipped(device_tag: str, key: str, configs: Sequence) -> list | None:
    """The shipped choice for this GPU model and key, if any and if it is one of this call's valid `configs`."""
    if os.environ.get("TNL_AUTOTUNE") == "retune":
        return None
    gpu = device_tag.rsplit("-triton", 1)[0]
    cfg = TUNED.get(gpu, {}).get(key)
    if cfg is None or list(cfg) not in [list(c) for c in configs]:
        return None
    return list(cfg)


def _is_device_fault(exc: Exception) -> bool:
    """A sticky CUDA error (illegal address, device-side assert, ...), unlike a config that does not fit."""
    msg = str(exc).lower()
    return "illegal memory access" in msg or "device-side assert" in msg or "illegal instruction" in msg \
        or "misaligned address" in msg or "unspecified launch failure" in msg


def pick(device_tag: str, key: str, configs: Sequence[dict], bench: Callable[[dict], float],
         verify: Callable[[dict, dict], bool] | None = None) -> dict:
    """Return the fastest config for `key`; `bench(cfg)` runs it and returns ms (raises if it cannot run).
    `verify(cfg, ref)`: whether cfg's results agree with those of `ref`, the timed config with the smallest tile
    (product of its first two entries). A compiler can miscompile one config of a kernel (Triton 3.6 on sm_90 did:
    chunk_triton._miscompiled), so the fastest config that agrees wins, and the ones that disagree are named; when
    the two disagree, a third config decides which of them is wrong."""
    full = f"{device_tag}|{key}"
    with _LOCK:
        _load(device_tag)
        # a remembered choice counts only while it is still a candidate (candidate lists change between versions)
        fresh = full in _TUNED_HERE or os.environ.get("TNL_AUTOTUNE") != "retune"
        if fresh and full in _MEMORY and list(_MEMORY[full]) in [list(c) for c in configs]:
            return _MEMORY[full]
    if not enabled():
        return configs[0]
    known = shipped(device_tag, key, configs)
    if known is not None:
        return known
    timed = []
    for cfg in configs:
        try:
            timed.append((bench(cfg), cfg))
        except Exception as exc:  # out of shared memory / registers, or it does not compile: skip the candidate
            if _is_device_fault(exc):  # the CUDA context is lost: every later launch would fail, name this one
                raise RuntimeError(f"lightning_attn autotune: a GPU fault surfaced while timing candidate config {cfg} "
                                   f"for {key} ({exc}); CUDA errors are asynchronous, so find the faulting kernel with "
                                   "CUDA_LAUNCH_BLOCKING=1 or scripts/probe_attn_configs.py") from exc
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
                               "scripts/probe_attn_configs.py, or set TNL_ATTN_BACKEND=torch")
        if rejected:
            warnings.warn(f"lightning_attn autotune: configs for {key} disagree with the smallest-tile config, "
                          f"{', '.join(rejected)}, on this GPU and Triton version (miscompiled?) and are left out; "
                          "scripts/probe_attn_configs.py --excluded checks every config against float64",
                          stacklevel=2)
    with _LOCK:
        _MEMORY[full] = best
        _TUNED_HERE.add(full)
        _save(device_tag)
    return best
