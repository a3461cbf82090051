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


def pick(device_tag: str, key: str, configs: Sequence[dict], bench: Callable[[dict], float]) -> dict:
    """Return the fastest config for `key`; `bench(cfg)` runs it and returns ms (raises if it cannot run)."""
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
    best, best_ms = None, float("inf")
    for cfg in configs:
        try:
            ms = bench(cfg)
        except Exception as exc:  # out of shared memory / registers, or it does not compile: skip the candidate
            if _is_device_fault(exc):  # the CUDA context is lost: every later launch would fail, name this one
                raise RuntimeError(f"lightning_attn autotune: a GPU fault surfaced while timing candidate config {cfg} "
                                   f"for {key} ({exc}); CUDA errors are asynchronous, so find the faulting kernel with "
                                   "CUDA_LAUNCH_BLOCKING=1 or scripts/probe_attn_configs.py") from exc
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        return configs[0]
    with _LOCK:
        _MEMORY[full] = best
        _TUNED_HERE.add(full)
        _save(device_tag)
    return best
