"""The srms_norm ops with a `backend=` keyword, passed on where the op accepts it (a stand-in while it does not)."""

from __future__ import annotations

import functools
import inspect

from ..ops.srms_norm import gated_norm_backward as _gated_norm_backward
from ..ops.srms_norm import gated_norm_forward as _gated_norm_forward
from ..ops.srms_norm import norm_backward as _norm_backward
from ..ops.srms_norm import norm_forward as _norm_forward


def _with_backend(fn):
    if "backend" in inspect.signature(fn).parameters:
        return fn

    @functools.wraps(fn)
    def call(*args, backend: str = "auto", **kwargs):
        return fn(*args, **kwargs)

    return call


norm_forward = _with_backend(_norm_forward)
norm_backward = _with_backend(_norm_backward)
gated_norm_forward = _with_backend(_gated_norm_forward)
gated_norm_backward = _with_backend(_gated_norm_backward)
