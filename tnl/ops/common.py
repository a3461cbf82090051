"""Helpers every op shares: when a Triton kernel may run, and the dtype sums accumulate in."""

from __future__ import annotations

import importlib.util

import torch

from ..settings import triton_interpret


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half, bf16 and fp32 inputs; fp64 for fp64 inputs (the float64 references in the tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Looked up once, without importing Triton (ops stay importable with torch alone); a plain constant, so code that
# torch.compile traces reads it without a cache wrapper Dynamo warns about.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_usable(x: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on `x`: a CUDA tensor (any tensor under TRITON_INTERPRET=1) and Triton
    importable. Callers add their own conditions (dtype, shape limits, `torch.compiler.is_compiling()`)."""
    if x.device.type != "cuda" and not triton_interpret():
        return False
    return TRITON_INSTALLED
