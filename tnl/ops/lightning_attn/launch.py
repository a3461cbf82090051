"""Launching a @triton.jit kernel again without Triton's per-launch binding.

`JITFunction.run` binds ~60 arguments, specializes each one, builds a cache key and parses options on every launch:
~90 us of host time per launch of `_chunk_kernel` (Triton 3.6, H100 host), which is most of a D=64 forward+backward
(four launches over ~0.8 ms of GPU work). `direct(fn)[grid](...)` launches the first time through Triton, keeps the
compiled kernel it returns, and on later launches whose arguments specialize the same way calls it directly
(`CompiledKernel[grid](*args)`, the handle Triton itself launches through).

The key is a refinement of Triton's specialization (python/src/specialize.cc): a tensor by dtype and 16-byte
alignment of its address, an int by range (i32 / i64 / u64), `== 1` and divisibility by 16, constexprs by value,
launch options by value. Two launches with equal keys therefore get the same compiled kernel from Triton too.
`TNL_TRITON_DIRECT_LAUNCH=0` turns this off (every launch through `JITFunction.run`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

_I32 = range(-(2**31), 2**31)


def _spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.dtype, x.data_ptr() & 15 == 0
    if type(x) is int:
        return x in _I32, x < 2**63, x == 1, x & 15 == 0
    if type(x) is float:
        return float
    return x  # bool, None, str: by value


class DirectLauncher:
    """`launcher[grid](*args, **kwargs)` with the call convention of `JITFunction.__getitem__`."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        params = list(inspect.signature(fn.fn).parameters.values())
        self.names = [p.name for p in params]
        self.known = set(self.names)
        self.defaults = [p.default for p in params]
        self.constexpr = [kp.is_constexpr for kp in fn.params]
        self.compiled: dict[tuple, Any] = {}

    def __getitem__(self, grid: tuple):
        grid3 = tuple(grid) + (1,) * (3 - len(grid))
        return lambda *args, **kwargs: self.launch(grid3, args, kwargs)

    def launch(self, grid: tuple, args: tuple, kwargs: dict) -> None:
        full = list(args)
        for i in range(len(args), len(self.names)):
            full.append(kwargs[self.names[i]] if self.names[i] in kwargs else self.defaults[i])
        key = (
            tuple((k, v) for k, v in kwargs.items() if k not in self.known),  # num_warps, num_stages, ...
            full[0].device if isinstance(full[0], torch.Tensor) else None,
            tuple(x if const else _spec(x) for x, const in zip(full, self.constexpr)),
        )
        kernel = self.compiled.get(key)
        if kernel is None:
            kernel = self.fn[grid](*args, **kwargs)
            if kernel is not None and hasattr(kernel, "__getitem__"):
                self.compiled[key] = kernel
            return
        kernel[grid](*full)


_LAUNCHERS: dict[int, tuple[Any, Any]] = {}


def direct(fn: Any) -> Any:
    """The direct launcher of a @triton.jit kernel; `fn` itself under the interpreter, for other callables (test
    wrappers) or with TNL_TRITON_DIRECT_LAUNCH=0."""
    if os.environ.get("TNL_TRITON_DIRECT_LAUNCH", "1") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return fn
    hit = _LAUNCHERS.get(id(fn))
    if hit is not None and hit[0] is fn:
        return hit[1]
    if not (hasattr(fn, "fn") and hasattr(fn, "params")):
        return fn
    launcher = DirectLauncher(fn)
    _LAUNCHERS[id(fn)] = (fn, launcher)
    return launcher
