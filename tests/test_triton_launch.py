"""The direct launcher (tnl/ops/lightning_attn/launch.py): reuses a compiled kernel only for arguments that Triton
would specialize the same way, and passes every argument in signature order."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from tnl.ops.lightning_attn import launch

triton = pytest.importorskip("triton")


def _kernel(X, Y, n, scale, BLOCK, FLAG=False, MODE="a"):  # stands in for a @triton.jit function's Python source
    pass


class _FakeJit:
    """JITFunction's launch surface: fn[grid](*args, **kwargs) compiles (counted) and returns a compiled kernel,
    whose [grid](*all_args) launches."""

    def __init__(self):
        self.fn = _kernel
        self.params = [SimpleNamespace(is_constexpr=name in ("BLOCK", "FLAG", "MODE"))
                       for name in ("X", "Y", "n", "scale", "BLOCK", "FLAG", "MODE")]
        self.compiles, self.direct_calls = [], []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.compiles.append((grid, args, kwargs))
            return _Compiled(self, len(self.compiles))
        return run


class _Compiled:
    def __init__(self, jit, tag):
        self.jit, self.tag = jit, tag

    def __getitem__(self, grid):
        return lambda *args: self.jit.direct_calls.append((self.tag, grid, args))


def test_reuses_the_compiled_kernel_only_for_the_same_specialization(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TNL_TRITON_DIRECT_LAUNCH", raising=False)
    jit = _FakeJit()
    run = launch.direct(jit)
    assert launch.direct(jit) is run and run is not jit
    x = torch.randn(64, dtype=torch.bfloat16)
    y = torch.randn(64)

    def call(x_=x, y_=y, n=32, scale=0.5, grid=(4, 2), **kw):
        run[grid](x_, y_, n, scale, BLOCK=kw.pop("BLOCK", 16), num_warps=kw.pop("num_warps", 4), **kw)

    call()
    assert len(jit.compiles) == 1 and not jit.direct_calls
    call(x_=torch.randn(64, dtype=torch.bfloat16), n=48, scale=2.0, grid=(7,))  # same specialization
    assert len(jit.compiles) == 1
    tag, grid, args = jit.direct_calls[-1]
    assert tag == 1 and grid == (7, 1, 1) and args[2:] == (48, 2.0, 16, False, "a")  # defaults filled, in order
    # each of these specializes differently in Triton, so each compiles (through Triton) once
    for change in (dict(x_=x[1:]), dict(x_=x.half()), dict(n=33), dict(n=1), dict(n=2**31), dict(BLOCK=32),
                   dict(FLAG=True), dict(MODE="b"), dict(num_warps=8)):
        before = len(jit.compiles)
        call(**change)
        call(**change)
        assert len(jit.compiles) == before + 1, change
    monkeypatch.setenv("TNL_TRITON_DIRECT_LAUNCH", "0")
    assert launch.direct(jit) is jit
    monkeypatch.delenv("TNL_TRITON_DIRECT_LAUNCH")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert launch.direct(jit) is jit
    assert launch.direct(print) is not None  # a plain callable (test wrappers) is returned as is


def test_key_refines_tritons_specialization():
    """Equal launcher keys imply equal Triton specializations (Triton's own specialization function)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    buf = torch.randn(64, dtype=torch.float32)
    values = [0, 1, 2, 15, 16, 17, 32, 48, -16, -1, 2**31 - 16, 2**31, 2**31 + 1, 2**40, 2**63 + 16, 2**63 + 3,
              0.5, 1.0, True, False, None, buf, buf[1:], buf[4:], buf.bfloat16(), buf.bfloat16()[1:],
              buf.bfloat16()[8:], buf.double()]
    pairs = 0
    for a, b in itertools.combinations(values, 2):
        if type(a) is type(b) and launch._spec(a) == launch._spec(b):
            pairs += 1
            ta = native_specialize_impl(BaseBackend, a, False, True, True)
            tb = native_specialize_impl(BaseBackend, b, False, True, True)
            assert ta == tb, (a, b, ta, tb)
    assert pairs >= 8  # the check compared something
