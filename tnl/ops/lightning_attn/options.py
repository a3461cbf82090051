"""Kernel-development overrides of the Triton lightning attention's launch plan: typed, process-wide, off by default.

    with override_kernel_options(seg_len=2048, tma=False):
        lightning_attn(q, k, v, decay, backend="triton")

Benchmarks, tools and tests use them to force a path; training and inference leave them alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """`seg_len`: tokens per segment (a positive multiple of 16, the smallest chunk; None: the planner's choice).
    `programs`: the program count that segments aim at (None: one or two per SM, see `plan.py`).
    `tma`: TMA configs may load through tensor descriptors (False: the same configs through pointers)."""

    seg_len: int | None = None
    programs: int | None = None
    tma: bool = True

    def __post_init__(self) -> None:
        s = self.seg_len
        if s is not None and (not _is_int(s) or s <= 0 or s % 16):
            raise ValueError(f"KernelOptions.seg_len={s!r} is not a positive multiple of 16; pass None for the "
                             "automatic choice")
        p = self.programs
        if p is not None and (not _is_int(p) or p <= 0):
            raise ValueError(f"KernelOptions.programs={p!r} is not a positive integer; pass None for the automatic "
                             "choice")
        if not isinstance(self.tma, bool):
            raise ValueError(f"KernelOptions.tma={self.tma!r} is not True or False; pass True for the default")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# One process-wide value, not a context variable: autograd runs backward passes on its own threads, and those must
# see the options their forward saw.
_current = KernelOptions()


def kernel_options() -> KernelOptions:
    """The options in force."""
    return _current


@contextmanager
def override_kernel_options(**changes: object) -> Iterator[KernelOptions]:
    """Replace some fields of the options in force inside the block (checked on entry; restored on exit)."""
    global _current
    unknown = set(changes) - {f.name for f in dataclasses.fields(KernelOptions)}
    if unknown:
        raise ValueError(f"override_kernel_options: no option {', '.join(sorted(unknown))}; the options are "
                         f"{', '.join(f.name for f in dataclasses.fields(KernelOptions))}")
    before = _current
    _current = dataclasses.replace(before, **changes)
    try:
        yield _current
    finally:
        _current = before
