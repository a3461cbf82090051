"""Launch configs of the Triton attention (tnl/ops/lightning_attn/tuning.py): candidates, the shipped tables, the
on-disk cache and the check that leaves out configs whose results disagree. No kernel runs here: the launches are
stand-ins."""

import itertools

import pytest
import torch

pytest.importorskip("triton")

from tnl.ops.lightning_attn import tuning as T  # noqa: E402
from tnl.ops.lightning_attn.options import override_kernel_options  # noqa: E402
from tnl.ops.lightning_attn.tuned_configs import TUNED  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_tuner(tmp_path, monkeypatch):
    """What a new process starts with: nothing remembered, nothing loaded from disk, nothing tuned here; a private
    cache folder; tuning on (outside the interpreter)."""
    monkeypatch.setenv("TNL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TNL_AUTOTUNE", "1")
    _forget_tuning()
    monkeypatch.setattr(T, "_CHOSEN", {})
    yield
    _forget_tuning()


def _forget_tuning():
    T._MEMORY.clear()
    T._LOADED.clear()
    T._TUNED_HERE.clear()


def test_candidates_leave_out_miscompiled_configs():
    """Triton 3.6 miscompiles C=64, BE<=32, 4-warp launches on sm_90 (wrong outputs with SiLU folded or misaligned
    inputs, on H100 and H200): no candidate list holds one, whatever E caps the E-block to, nor the shipped table."""
    seen = 0
    for (dk, dv), fp32, tma in itertools.product(((64, 64), (64, 32), (128, 128), (256, 128), (48, 16)),
                                                 (False, True), (False, True)):
        cands = T.candidates(T.MAIN_CONFIGS, dk, dv, 16384, fp32, tma=tma)
        assert cands and not any(c >= 64 and be <= 32 and w == 4 for c, be, w, *_ in cands), (dk, dv)
        # TMA variants come last (untuned defaults unchanged), never for fp32 (3xTF32 compiles too slowly)
        flags = [len(c) == 5 for c in cands]
        assert flags == sorted(flags) and (any(flags) == (tma and not fp32)), (dk, dv, fp32, tma)
        seen += len(cands)
    assert seen > 20
    for table in TUNED.values():
        assert not any(T.miscompiled(*cfg[:3]) for cfg in table.values())


def test_every_listed_config_is_a_candidate_somewhere():
    """No config list holds an entry that every call leaves out (a dead config)."""
    for c, be, w, s, *rest in T.MAIN_CONFIGS + T.STATE_CONFIGS + T.TMA_CONFIGS + T.SMALL_CONFIGS:
        # with E = 128 (E-blocks up to 128) and D = 128, every config keeps its own E-block
        cands = T.candidates([(c, be, w, s, *rest)], 128, 128, 16384, False, tma=True)
        assert (c, be, w, s, *rest) in cands, (c, be, w, s, *rest)


def test_shipped_configs_are_kernel_candidates():
    allowed = {tuple(c) for c in T.MAIN_CONFIGS + T.STATE_CONFIGS + T.SMALL_CONFIGS + T.TMA_CONFIGS}
    for gpu, table in TUNED.items():
        assert table, gpu
        for key, cfg in table.items():
            role, dims, dtype, rev, init, seg, *suffix = key.split("|")
            assert role in ("fwd", "dq", "dk", "dv", "state") and dtype in ("bfloat16", "float16", "float32")
            assert [int(x) for x in dims.split("x")] and rev[:3] == "rev" and init[:4] == "init" and seg[:3] == "seg"
            assert suffix in ([], ["few"]) or (role == "state" and suffix == ["sub"]), key
            assert tuple(cfg) in allowed or (cfg[0], min(cfg[1], 64), cfg[2], cfg[3]) in allowed, (key, cfg)


def test_autotune_cache_roundtrip(tmp_path):
    calls = []

    def bench(cfg):
        calls.append(cfg)
        if cfg == [3]:
            raise RuntimeError("out of resources")
        return float(cfg[0])

    best = T.pick("dev-test", "k1", [[5], [2], [3]], bench)
    assert best == [2] and len(calls) == 3
    assert list((tmp_path / "autotune").glob("*.json"))
    assert not [p for p in (tmp_path / "autotune").iterdir() if p.name.startswith(".")]  # no temporary file left
    _forget_tuning()
    assert T.pick("dev-test", "k1", [[5], [2]], bench) == [2] and len(calls) == 3  # from disk
    # a remembered choice that is no longer a candidate is tuned again
    assert T.pick("dev-test", "k1", [[5], [4]], bench) == [4] and len(calls) == 5


def test_shipped_configs_used_without_tuning_unless_retune(monkeypatch):
    monkeypatch.setitem(T.TUNED, "GPU X", {"k2": (2, 2, 2, 2)})
    calls = []

    def bench(cfg):
        calls.append(cfg)
        return float(sum(cfg))

    cands = [[1, 1, 1, 1], [2, 2, 2, 2]]
    assert T.pick("GPU X-triton9", "k2", cands, bench) == [2, 2, 2, 2] and not calls
    # a shipped choice that is not valid for this call (not among its candidates) is not used
    assert T.pick("GPU X-triton9", "k2", [[1, 1, 1, 1]], bench) == [1, 1, 1, 1] and len(calls) == 1
    # a new process (memory from the disk cache only): retune ignores the shipped table and the cached result
    _forget_tuning()
    monkeypatch.setenv("TNL_AUTOTUNE", "retune")
    assert T.pick("GPU X-triton9", "k2", cands, bench) == [1, 1, 1, 1] and len(calls) == 3
    assert T.pick("GPU X-triton9", "k2", cands, bench) == [1, 1, 1, 1] and len(calls) == 3  # once per process
    monkeypatch.setenv("TNL_AUTOTUNE", "1")  # without retune, the disk cache counts
    _forget_tuning()
    assert T.pick("GPU X-triton9", "k2", [[3, 3, 3, 3], [1, 1, 1, 1]], bench) == [1, 1, 1, 1]
    assert len(calls) == 3


def test_autotune_off_takes_the_shipped_choice_else_the_first_candidate(monkeypatch):
    monkeypatch.setenv("TNL_AUTOTUNE", "0")
    monkeypatch.setitem(T.TUNED, "GPU W", {"k0": (1,)})
    never = lambda cfg: pytest.fail("timed with tuning off")  # noqa: E731
    assert T.pick("GPU W-triton9", "k0", [[4], [1]], never) == [1]  # a listed GPU: its tuned table, no timing
    assert T.pick("GPU W-triton9", "k9", [[4], [1]], never) == [4]  # a key it does not list
    assert T.pick("GPU V-triton9", "k0", [[4], [1]], never) == [4]  # a GPU it does not list


def test_autotune_skips_configs_that_do_not_fit_but_stops_at_a_device_fault():
    from triton.runtime.errors import OutOfResources

    def bench(cfg):
        if cfg == [1]:
            raise OutOfResources(300000, 232448, "shared memory")
        if cfg == [2]:
            raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")
        return 1.0

    assert T.pick("GPU Y-triton9", "k3", [[1], [3]], bench) == [3]
    with pytest.raises(RuntimeError, match=r"GPU fault surfaced while timing candidate config \[2\] for k4"):
        T.pick("GPU Y-triton9", "k4", [[3], [2]], bench)


def test_autotune_leaves_out_configs_whose_results_disagree():
    """A miscompiled config can be the fastest (Triton 3.6, sm_90): the tuner compares the fastest config's results
    with those of the smallest-tile config and takes the fastest that agrees, warning about the others."""
    ms = {(64, 32): 1.0, (64, 64): 2.0, (16, 32): 5.0, (32, 64): 3.0}
    wrong = {(64, 32)}
    checks = []

    def verify(cfg, ref):
        checks.append((tuple(cfg), tuple(ref)))
        return tuple(cfg) not in wrong and tuple(ref) not in wrong

    cands = [list(c) for c in ms]
    with pytest.warns(UserWarning, match=r"configs for k5 disagree with the smallest-tile config, \[64, 32\] \(vs "
                                         r"\[16, 32\]\), on"):
        assert T.pick("GPU Z-triton9", "k5", cands, lambda c: ms[tuple(c)], verify) == [64, 64]
    # a disagreement asks a third config; (64, 32) disagrees with it too
    assert checks == [((64, 32), (16, 32)), ((64, 32), (32, 64)), ((64, 64), (16, 32))]
    # the smallest tile is the fastest: checked against the next smallest
    checks.clear()
    fast_small = {(16, 32): 0.5, (64, 64): 2.0, (32, 64): 3.0}
    assert T.pick("GPU Z-triton9", "k6", [list(c) for c in fast_small], lambda c: fast_small[tuple(c)],
                  verify) == [16, 32]
    assert checks == [((16, 32), (32, 64))]
    # the smallest tile itself disagrees: the warning names the config it was compared with
    with pytest.warns(UserWarning, match=r"\[16, 32\] \(vs \[32, 64\]\)"):
        assert T.pick("GPU Z-triton9", "k8", [list(c) for c in fast_small], lambda c: fast_small[tuple(c)],
                      lambda cfg, ref: tuple(cfg) != (16, 32)) == [64, 64]
    # the reference itself is wrong: a third config shows which side is (otherwise every config would be rejected)
    ranked = {(64, 64): 1.0, (32, 64): 2.0, (16, 32): 3.0}

    def agree(cfg, ref):
        return (16, 32) not in (tuple(cfg), tuple(ref))

    with pytest.warns(UserWarning, match=r"\[16, 32\] \(vs \[64, 64\] and \[32, 64\]\)"):
        assert T.pick("GPU Z-triton9", "k9", [list(c) for c in ranked], lambda c: ranked[tuple(c)], agree) == [64, 64]
    # nothing agrees: a one-line error instead of a silent choice
    with pytest.raises(RuntimeError, match="no candidate config for k7 agrees"):
        T.pick("GPU Z-triton9", "k7", cands, lambda c: ms[tuple(c)], lambda cfg, ref: False)
    # remembered choices are not re-verified
    checks.clear()
    assert T.pick("GPU Z-triton9", "k5", cands, lambda c: ms[tuple(c)], verify) == [64, 64] and not checks


def test_launch_tuning_compares_real_outputs(monkeypatch):
    """The launcher's verify runs the reference and the candidate on the pass's real buffers and compares what they
    wrote: a candidate that writes something else is rejected."""
    calls = []

    def launch(cfg):
        calls.append(tuple(cfg))  # the tuner passes lists, the launch path tuples
        out.copy_(base * (3.0 if tuple(cfg) == (64, 32, 4, 2) else 1.0))

    base = torch.randn(64)
    out = torch.empty(64)
    monkeypatch.setattr(T.triton.testing, "do_bench",
                        lambda fn, **kw: fn() or {(64, 32, 4, 2): 1.0}.get(calls[-1], 2.0))
    monkeypatch.setenv("TNL_AUTOTUNE", "retune")
    with pytest.warns(UserWarning, match="disagree"):
        T.launch_tuned(torch.device("cpu"), "verify-test", 512,
                       lambda: [(64, 32, 4, 2), (32, 64, 4, 2), (16, 32, 4, 1)], launch, lambda: [out], True)
    assert calls[-1] == (32, 64, 4, 2) and torch.equal(out, base)


def test_launch_choice_is_remembered_per_key_and_mode(monkeypatch):
    """Later launches of a key reuse the first choice without asking for candidates again (that lookup dominated
    small calls on an H100); another segment length, kernel options or autotune mode chooses again."""
    asked, launched = [], []

    def cands():
        asked.append(1)
        return [(32, 64, 4, 2), (16, 32, 4, 1)]

    monkeypatch.setenv("TNL_AUTOTUNE", "0")
    for _ in range(3):
        T.launch_tuned(torch.device("cpu"), "memo-test", 512, cands, launched.append, lambda: [], True)
    assert len(asked) == 1 and launched == [(32, 64, 4, 2)] * 3
    T.launch_tuned(torch.device("cpu"), "memo-test", 1024, cands, launched.append, lambda: [], True)  # new length
    assert len(asked) == 2
    with override_kernel_options(tma=False):
        T.launch_tuned(torch.device("cpu"), "memo-test", 512, cands, launched.append, lambda: [], True)
    assert len(asked) == 3
    monkeypatch.setenv("TNL_AUTOTUNE", "retune")
    monkeypatch.setattr(T.triton.testing, "do_bench", lambda fn, **kw: fn() or 1.0)
    T.launch_tuned(torch.device("cpu"), "memo-test", 512, cands, launched.append, lambda: [], True)
    assert len(asked) == 4
