"""Fixtures the kernel test files share."""

import contextlib

import pytest


@pytest.fixture
def options():
    """`options(seg_len=32, ...)`: KernelOptions for the rest of the test."""
    from tnl.ops.lightning_attn.options import override_kernel_options

    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(override_kernel_options(**changes))
