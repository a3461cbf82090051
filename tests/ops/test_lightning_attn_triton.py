"""Triton lightning attention under TRITON_INTERPRET=1 (CPU), against the float64 recurrence.

Triton decides interpret-or-compile when it is imported, so these tests run in a child process started with
TRITON_INTERPRET=1 (tests/interpret.py); inside it each test also sets the variable through monkeypatch.
"""

import itertools

import pytest
import torch

from tests.helpers.attn_reference import recurrence
from tests.helpers.interpret import IN_CHILD, run_interpreted

pytest.importorskip("triton")

if not IN_CHILD:  # the kernel tests below run in a child process under the interpreter (tests/interpret.py)

    def test_triton_kernels_interpreted():
        run_interpreted(__file__, timeout=900, TNL_AUTOTUNE="0")


from tnl.ops.lightning_attn import chunk_triton as CT  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("TNL_ATTN_SEG_LEN", raising=False)


@pytest.fixture
def scans(monkeypatch):
    """The grids of every `_scan_kernel` launch (one per segmented pass that builds its own start states)."""
    grids = []
    kernel = CT._k._scan_kernel

    class Counting:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(CT._k, "_scan_kernel", Counting())
    return grids


@pytest.fixture
def state_passes(monkeypatch):
    """The grids of every state-only `_chunk_kernel` launch (one per segmented pass that builds its own start
    states; fixed-length main passes then chain them themselves, varlen ones through `_scan_kernel`)."""
    grids = []
    kernel = CT._k._chunk_kernel

    class Counting:
        def __getitem__(self, grid):
            def go(*args, **kw):
                if not kw["WRITE_O"]:
                    grids.append(grid)
                return kernel[grid](*args, **kw)
            return go

    monkeypatch.setattr(CT._k, "_chunk_kernel", Counting())
    return grids


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(b, t, h, hkv, d, e, dtype=torch.float32, state=True, n=None):
    q = torch.randn(b, t, h, d).to(dtype)
    k = torch.randn(b, t, hkv, d).to(dtype)
    v = torch.randn(b, t, hkv, e).to(dtype)
    decay = torch.rand(h) * 0.5
    s0 = torch.randn(n or b, h, d, e) if state else None
    return q, k, v, decay, s0


def _check_all(q, k, v, decay, s0, scale=1.0, cu=None, tol=1e-5, grad=True):
    leaves = [x.requires_grad_() for x in (q, k, v, s0) if x is not None]
    o, final = CT.triton_lightning_attn(q, k, v, decay, scale=scale, initial_state=s0, output_final_state=True,
                                        cu_seqlens=cu)
    assert o.dtype == q.dtype and final.dtype == torch.float32
    o_ref, f_ref = recurrence(q.detach(), k.detach(), v.detach(), decay, scale,
                              s0.detach() if s0 is not None else None, cu_seqlens=cu)
    assert _rel(o, o_ref) < tol, f"o {_rel(o, o_ref)}"
    assert _rel(final, f_ref) < tol, f"final {_rel(final, f_ref)}"
    if not grad:
        return
    go, gf = torch.randn(o.shape, dtype=torch.float64), torch.randn(final.shape, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    qr, kr, vr = ref_leaves[:3]
    sr = ref_leaves[3] if s0 is not None else None
    o_r, f_r = recurrence(qr, kr, vr, decay, scale, sr, cu_seqlens=cu)
    grads_ref = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref_leaves)
    for name, g, g_ref in zip("q k v s0".split(), grads, grads_ref):
        assert g.dtype == leaves["q k v s0".split().index(name)].dtype
        assert _rel(g, g_ref) < tol, f"d{name} {_rel(g, g_ref)}"


def _check_silu_fold(q, k, v, decay, s0, silu: bool, scale: float = 0.6):
    """o, final state and every gradient against the float64 recurrence, with SiLU on q and k folded into the
    kernels when `silu`."""
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    o, final = CT.triton_lightning_attn(q, k, v, decay, scale=scale, initial_state=s0, output_final_state=True,
                                        qk_activation="silu" if silu else None)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    act = torch.nn.functional.silu if silu else (lambda x: x)
    o_r, f_r = recurrence(act(ref[0]), act(ref[1]), ref[2], decay, scale, ref[3])
    go, gf = torch.randn(o.shape, dtype=torch.float64), torch.randn(final.shape, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref)
    for name, got, want in zip("o final dq dk dv ds0".split(), (o, final, *grads), (o_r, f_r, *grads_r)):
        assert _rel(got, want) < 1e-5, f"{name} {_rel(got, want)}"


@pytest.mark.parametrize(
    "shape",
    [  # B, T, H, Hkv, D, E
        (2, 1, 2, 2, 16, 16),  # one token
        (2, 37, 4, 2, 16, 32),  # odd T, grouped heads, D != E
        (1, 50, 2, 1, 48, 24),  # odd D (48 pads to 64), E not a power of two
        (1, 20, 2, 2, 64, 32),  # D = 2E (LRPE-like)
        (1, 21, 1, 1, 144, 24),  # D pads to 256 (LRPE on 128-dim heads)
    ],
)
def test_forward_backward_match_recurrence(shape):
    q, k, v, decay, s0 = _inputs(*shape)
    _check_all(q, k, v, decay, s0, scale=0.7)


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, seg_len, varlen
        (2, 37, 4, 2, 16, 32, None, False),  # odd T, grouped heads, D != E
        (1, 50, 2, 1, 48, 24, None, False),  # padded D and E
        (2, 70, 2, 1, 16, 16, "32", False),  # segmented: shared state pass + scan
        (1, 83, 4, 2, 16, 16, "32", True),  # varlen with an empty sequence, segmented
        (1, 1, 2, 2, 16, 16, None, False),  # one token
    ],
)
def test_fused_dkdv_backward_matches_recurrence(case, monkeypatch):
    """TNL_ATTN_BWD=fused: dK and dV from one reverse pass, same contract as the split passes."""
    b, t, h, hkv, d, e, seg, varlen = case
    monkeypatch.setenv("TNL_ATTN_BWD", "fused")
    if seg:
        monkeypatch.setenv("TNL_ATTN_SEG_LEN", seg)
    assert CT._fused_dkdv_enabled(d, e)
    cu = torch.tensor([0, 5, 5, 70, 83], dtype=torch.int32) if varlen else None
    q, k, v, decay, s0 = _inputs(b, t, h, hkv, d, e, n=4 if varlen else None)
    _check_all(q, k, v, decay, s0, scale=0.7, cu=cu)
    q, k, v, decay, _ = _inputs(b, t, h, hkv, d, e, state=False)
    _check_all(q, k, v, decay, None, cu=cu)  # without initial state (no d initial_state output)


_FOLDED = [  # B, T, H, Hkv, D, E, seg_len, varlen, bwd
    (2, 37, 4, 2, 16, 32, None, False, "split"),  # grouped heads: dk's SiLU' uses the kv head's raw k
    (2, 70, 2, 1, 16, 16, "32", False, "split"),  # segmented: the state passes apply SiLU too
    (1, 83, 4, 2, 16, 16, "32", True, "split"),
    (2, 37, 4, 2, 16, 32, None, False, "fused"),
    (1, 83, 4, 2, 16, 16, "32", True, "fused"),
]


@pytest.mark.parametrize(
    "case,given",
    [(c, False) for c in _FOLDED] + [(_FOLDED[i], True) for i in (0, 2, 3)],
)
def test_silu_folded_into_kernels_matches_silu_then_attention(case, given, monkeypatch):
    """qk_activation="silu": raw q, k in; output, final state and gradients w.r.t. the raw q, k (and v, state)
    equal the float64 recurrence applied to SiLU(q), SiLU(k). `given`: the caller also passes SiLU(q), SiLU(k)
    (qk_activated): the kernels load those and backward applies SiLU' to dq, dk, so gradients reach the raw q, k
    once, not again through the copies."""
    b, t, h, hkv, d, e, seg, varlen, bwd = case
    monkeypatch.setenv("TNL_ATTN_BWD", bwd)
    if seg:
        monkeypatch.setenv("TNL_ATTN_SEG_LEN", seg)
    cu = torch.tensor([0, 5, 5, 70, 83], dtype=torch.int32) if varlen else None
    q, k, v, decay, s0 = _inputs(b, t, h, hkv, d, e, n=4 if varlen else None)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    silu = torch.nn.functional.silu
    o, final = CT.triton_lightning_attn(q, k, v, decay, scale=0.7, initial_state=s0, output_final_state=True,
                                        cu_seqlens=cu, qk_activation="silu",
                                        qk_activated=(silu(q), silu(k)) if given else None)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    o_r, f_r = recurrence(silu(ref[0]), silu(ref[1]), ref[2], decay, 0.7, ref[3], cu_seqlens=cu)
    assert _rel(o, o_r) < 1e-5 and _rel(final, f_r) < 1e-5
    go, gf = torch.randn(o.shape, dtype=torch.float64), torch.randn(final.shape, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref)
    for name, g, g_r in zip("q k v s0".split(), grads, grads_r):
        assert _rel(g, g_r) < 1e-5, f"d{name} {_rel(g, g_r)}"


def test_activated_q_k_are_checked():
    q, k, v, decay, _ = _inputs(1, 8, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="qk_activated needs qk_activation='silu'"):
        CT.triton_lightning_attn(q, k, v, decay, qk_activated=(q, k))
    with pytest.raises(ValueError, match=r"qk_activated must match q \(1, 8, 2, 16\)"):
        CT.triton_lightning_attn(q, k, v, decay, qk_activation="silu", qk_activated=(q[:, :4], k))


def test_backward_form_from_environment(monkeypatch):
    monkeypatch.delenv("TNL_ATTN_BWD", raising=False)
    assert not CT._fused_dkdv_enabled(64, 64)  # split by default
    monkeypatch.setenv("TNL_ATTN_BWD", "fused")
    assert CT._fused_dkdv_enabled(128, 128) and not CT._fused_dkdv_enabled(256, 128)  # R must fit in registers
    monkeypatch.setenv("TNL_ATTN_BWD", "fast")
    with pytest.raises(ValueError, match="TNL_ATTN_BWD='fast' is not one of split, fused"):
        CT._fused_dkdv_enabled(64, 64)


def test_plan_segments_small_tiles_less(monkeypatch):
    # one program per SM saturates HBM for D, E <= 64; larger tiles want two per SM before segments pay off
    monkeypatch.setattr(CT, "_num_sms", lambda device: 132)
    monkeypatch.delenv("TNL_ATTN_PROGRAMS", raising=False)
    cpu = torch.device("cpu")
    assert CT._Plan(8, 8192, 16, 64, None, cpu, dims=(64, 64)).nseg == 1  # 128 programs
    assert CT._Plan(8, 8192, 16, 64, None, cpu, dims=(128, 128)).nseg == 1  # 128 programs: most of a wave
    assert CT._Plan(4, 8192, 16, 64, None, cpu, dims=(128, 128)).nseg == 2  # 64 programs: 128 segmented
    assert CT._Plan(1, 65536, 16, 64, None, cpu, dims=(64, 64)).nseg == 8
    # 64 and 48 programs: two segments, the second building its start state in the main pass (PREFIX)
    for b in (4, 3):
        plan = CT._Plan(b, 16384, 16, 64, None, cpu, dims=(64, 64))
        assert plan.nseg == 2 and plan.prefix
    assert CT._Plan(5, 16384, 16, 64, None, cpu, dims=(64, 64)).nseg == 1  # 80 programs: over half a wave
    assert not CT._Plan(8, 8192, 16, 128, None, cpu, dims=(128, 128)).prefix  # larger tiles: state pass + scan
    assert not CT._Plan(2, 40, 4, 16, torch.tensor([0, 30, 80], dtype=torch.int32), cpu, dims=(16, 16)).prefix  # varlen
    assert CT._Plan(1, 65536, 16, 128, None, cpu, dims=(128, 128)).nseg == 4  # 2 E-blocks x 16 heads x 4 = 128 programs
    # D or E > 64: no segments while the unsegmented programs fill most of a wave; below, one wave of segments
    assert CT._Plan(4, 16384, 16, 128, None, cpu, dims=(128, 128)).nseg == 1  # 128 programs
    assert CT._Plan(2, 16384, 16, 128, None, cpu, dims=(128, 128)).nseg == 2  # 64 programs
    assert CT._Plan(4, 16384, 16, 128, None, cpu, dims=(256, 128)).nseg == 1  # 128 programs
    assert CT._Plan(2, 32768, 16, 128, None, cpu, dims=(256, 128)).nseg == 2  # 64 programs
    assert CT._Plan(1, 65536, 16, 128, None, cpu, dims=(256, 128)).nseg == 4  # 32 programs
    # varlen plans over 64 still aim at two programs per SM
    cu = torch.tensor([0, 30000, 65536], dtype=torch.int32)
    assert CT._Plan(1, 65536, 16, 128, cu, cpu, dims=(128, 128)).seg_len == 8192  # 2 x 65,536 x 16 / 264 rounded
    # the state pass cuts finer until about 3 programs per SM have tokens to read, within 16 sub-segments per row
    assert CT._Plan(1, 65536, 16, 128, None, cpu, dims=(128, 128)).state_split == 4  # 3 x 4 x 32 = 384 programs
    assert CT._Plan(2, 32768, 16, 128, None, cpu, dims=(256, 128)).state_split == 8  # 2 x 1 x 8 x 32 = 512
    assert CT._Plan(1, 65536, 16, 64, None, cpu, dims=(64, 64)).state_split == 2  # 8 segments: 16 sub-segments
    assert CT._Plan(4, 16384, 16, 64, None, cpu, dims=(64, 64)).state_split == 1  # PREFIX: no state pass


def test_tiles_over_64_with_one_wave_are_tuned_apart(monkeypatch):
    keys = []
    real = CT._launch_tuned
    monkeypatch.setattr(CT, "_launch_tuned", lambda device, key, *a: keys.append(key) or real(device, key, *a))
    for d, e in ((256, 32), (128, 32), (64, 32)):
        q, k, v, decay, _ = _inputs(1, 20, 1, 1, d, e, state=False)
        CT.triton_lightning_attn(q.requires_grad_(), k, v, decay)[0].sum().backward()
    large, medium, small = keys[:2], keys[2:4], keys[4:]  # fwd and dq passes each (k, v need no gradient)
    for tiles in (large, medium):
        assert [x.split("|")[0] for x in tiles] == ["fwd", "dq"] and all(x.endswith("|few") for x in tiles)
    assert small and not any(x.endswith("|few") for x in small)


def test_candidates_leave_out_miscompiled_configs(monkeypatch):
    """Triton 3.6 miscompiles C=64, BE<=32, 4-warp launches on sm_90 (wrong outputs with SiLU folded or misaligned
    inputs, on H100 and H200): no candidate list holds one, whatever E caps the E-block to, nor the shipped table."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    seen = 0
    for (dk, dv), fp32, tma in itertools.product(((64, 64), (64, 32), (128, 128), (256, 128), (48, 16)),
                                                 (False, True), (False, True)):
        cands = CT._candidates(CT._MAIN_CONFIGS, dk, dv, 16384, fp32, tma=tma)
        assert cands and not any(c >= 64 and be <= 32 and w == 4 for c, be, w, *_ in cands), (dk, dv)
        # TMA variants come last (untuned defaults unchanged), never for fp32 (3xTF32 compiles too slowly)
        flags = [len(c) == 5 for c in cands]
        assert flags == sorted(flags) and (any(flags) == (tma and not fp32)), (dk, dv, fp32, tma)
        seen += len(cands)
    assert seen > 20
    from tnl.ops.lightning_attn.tuned_configs import TUNED

    for table in TUNED.values():
        assert not any(CT._miscompiled(*cfg[:3]) for cfg in table.values())


def test_fused_dkdv_bf16(monkeypatch):
    monkeypatch.setenv("TNL_ATTN_BWD", "fused")
    q, k, v, decay, s0 = _inputs(1, 40, 2, 1, 16, 16, dtype=torch.bfloat16)
    _check_all(q, k, v, decay, s0, tol=3e-2)


def test_gradient_through_final_state_only():
    q, k, v, decay, s0 = _inputs(1, 30, 2, 2, 16, 16)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    _, final = CT.triton_lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True)
    grads = torch.autograd.grad(final.square().sum(), leaves, allow_unused=True)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    _, f_r = recurrence(*ref[:3], decay, 1.0, ref[3])
    grads_r = torch.autograd.grad(f_r.square().sum(), ref, allow_unused=True)
    for g, g_r in zip(grads, grads_r):
        if g_r is None:  # q does not reach the final state
            assert g is None or g.abs().max() == 0
        else:
            assert _rel(g, g_r) < 1e-5


def test_no_initial_state_and_no_final_state():
    q, k, v, decay, _ = _inputs(1, 33, 2, 2, 16, 16, state=False)
    o, final = CT.triton_lightning_attn(q, k, v, decay)
    assert final is None
    o_ref, _ = recurrence(q, k, v, decay)
    assert _rel(o, o_ref) < 1e-5


def test_segmented_long_sequence(monkeypatch):
    monkeypatch.setenv("TNL_ATTN_SEG_LEN", "32")  # 3 segments: state pass + scan + main pass
    q, k, v, decay, s0 = _inputs(2, 70, 2, 1, 16, 16)
    _check_all(q, k, v, decay, s0, scale=0.5)


@pytest.mark.parametrize("shape", [(2, 70, 4, 2, 32, 16), (1, 70, 2, 2, 16, 48)])  # D != E, grouped heads
def test_segmented_backward_reuses_start_states(shape, scans, state_passes, monkeypatch):
    # eager: the dq pass reads the forward's segment start states and the dk pass the dv pass's, both transposed
    # (same plan), instead of building their own
    monkeypatch.setenv("TNL_ATTN_SEG_LEN", "32")
    q, k, v, decay, s0 = _inputs(*shape)
    _check_all(q, k, v, decay, s0, scale=0.7)
    assert len(state_passes) == 1 + 1  # forward (S, reused by dq); backward: R, built for dv and reused by dk
    assert not scans  # fixed length: the main passes chain the contributions themselves


def test_backward_shares_the_forward_cut_when_both_plans_segment(state_passes, monkeypatch):
    # D=16 (1 E-block of 64 in the dq/dk passes) x E=80 (2 in the forward/dv): on their own the plans cut T=256
    # into 8 and 4 segments; the backward uses the forward's cut, so dq and dk reuse start states
    monkeypatch.setenv("TNL_ATTN_PROGRAMS", "8")
    monkeypatch.setattr(CT, "_SEG_ALIGN", 32)
    monkeypatch.setattr(CT, "_MIN_SEG", 32)
    cpu = torch.device("cpu")
    assert CT._Plan(1, 256, 1, 16, None, cpu, dims=(16, 80)).nseg == 8
    plan_d, plan_e = CT._backward_plans(1, 256, 1, 16, 80, None, cpu)
    assert plan_e.nseg == 4 and plan_d.seg_len == plan_e.seg_len
    q, k, v, decay, s0 = _inputs(1, 256, 1, 1, 16, 80)
    _check_all(q, k, v, decay, s0, scale=0.3)
    assert len(state_passes) == 1 + 1  # forward (reused by dq) and dv (reused by dk)


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, segment length, sub-segments per segment, backward form
        (2, 70, 2, 1, 32, 16, 32, 2, "split"),  # grouped heads, D != E; the last segment is 6 tokens
        (1, 150, 2, 2, 16, 48, 64, 4, "split"),  # E > D; the last segment's second sub-segment is partial
        (2, 100, 2, 2, 16, 16, 32, 2, "fused"),  # the fused dK/dV pass's state pass splits too
    ],
)
def test_state_pass_split_into_sub_segments(case, scans, state_passes, monkeypatch):
    """A state-only pass with too few programs cuts each segment into sub-segments; each main-pass program chains
    those before its segment (the scan, for the fused dK/dV pass) and stores only segment start states (initial
    state and dfinal entering at either end)."""
    b, t, h, hkv, d, e, seg, r, bwd = case
    monkeypatch.setenv("TNL_ATTN_SEG_LEN", str(seg))
    monkeypatch.setenv("TNL_ATTN_BWD", bwd)
    monkeypatch.setattr(CT, "_SEG_ALIGN", 16)
    monkeypatch.setattr(CT, "_MIN_STATE_SUB", 16)
    monkeypatch.setattr(CT, "_STATE_PROGRAMS_PER_SM", 64)
    plan = CT._Plan(b, t, h, e, None, torch.device("cpu"), dims=(d, e))
    assert (plan.nseg, plan.state_split, plan.prefix) == (-(-t // seg), r, False)
    keys = []
    tuned = CT._launch_tuned
    monkeypatch.setattr(CT, "_launch_tuned", lambda device, key, *a: keys.append(key) or tuned(device, key, *a))
    _check_all(*_inputs(b, t, h, hkv, d, e), scale=0.8)
    assert len(scans) == (1 if bwd == "fused" else 0)  # only a state-only call scans (the fused pass's R)
    assert sorted(x.split("|")[3] for x in keys if x.startswith("state|") and x.endswith("|sub")) == ["rev0", "rev1"]
    # forward and dv, each over every sub-segment
    assert len(state_passes) == 2 and all(g[2] == b * -(-t // (seg // r)) for g in state_passes)


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, SiLU folded, backward form
        (2, 50, 4, 2, 32, 16, False, "split"),  # grouped heads, D != E, a partial last chunk
        (1, 45, 2, 2, 16, 48, True, "split"),  # E > D, SiLU folded: the prefix loop applies it too
        (2, 50, 2, 1, 16, 16, False, "fused"),  # the fused dK/dV pass builds R's start states the classic way
    ],
)
def test_two_segments_build_their_start_states_in_the_main_pass(case, state_passes, monkeypatch):
    """Two segments (PREFIX): the second segment's program runs the state-only loop over the first segment itself,
    from the initial state; no state pass or scan is launched, and the states it leaves behind are what the dq and
    dk passes read."""
    b, t, h, hkv, d, e, silu, bwd = case
    monkeypatch.setenv("TNL_ATTN_SEG_LEN", "32")
    monkeypatch.setenv("TNL_ATTN_BWD", bwd)
    assert CT._Plan(b, t, h, e, None, torch.device("cpu"), dims=(d, e)).prefix
    _check_silu_fold(*_inputs(b, t, h, hkv, d, e), silu)
    assert len(state_passes) == (1 if bwd == "fused" else 0)


@pytest.mark.parametrize("seg", [None, "32"])
def test_varlen_matches_per_sequence(seg, monkeypatch):
    if seg:
        monkeypatch.setenv("TNL_ATTN_SEG_LEN", seg)
    cu = torch.tensor([0, 5, 5, 70, 83], dtype=torch.int32)  # includes an empty sequence
    q, k, v, decay, s0 = _inputs(1, 83, 4, 2, 16, 16, n=4)
    _check_all(q, k, v, decay, s0, cu=cu)


def test_varlen_without_initial_state():
    cu = torch.tensor([0, 17, 40], dtype=torch.int32)
    q, k, v, decay, _ = _inputs(1, 40, 2, 2, 16, 16, state=False)
    _check_all(q, k, v, decay, None, cu=cu)


def test_non_contiguous_inputs():
    q, k, v, decay, s0 = _inputs(1, 24, 4, 4, 16, 16)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, T, H, D] view with H-major strides
    k = torch.randn(1, 24, 4, 32)[..., ::2]  # last-dim stride 2
    _check_all(q, k, v, decay, s0)


@pytest.fixture
def tma_launches(monkeypatch):
    """Every pass runs the interpreter's config as a TMA config; returns the (rows, cols) of each descriptor built."""
    monkeypatch.setattr(CT, "_INTERPRET_CONFIG", CT._INTERPRET_CONFIG + (1,))
    monkeypatch.setattr(CT, "_CHOSEN", {})  # earlier tests' choices (the plain config) are remembered per key
    made = []
    real = CT._descriptor
    monkeypatch.setattr(CT, "_descriptor", lambda x, rows, cols: made.append((rows, cols)) or real(x, rows, cols))
    return made


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, seg_len, SiLU folded
        (2, 37, 4, 2, 16, 32, None, False),  # odd T (the last chunk runs past T), grouped heads, D != E
        (1, 50, 2, 1, 48, 24, None, True),  # D and E below their tiles (zero-filled columns), SiLU folded
        (2, 70, 2, 1, 16, 16, "32", False),  # 3 segments: the state pass reads through descriptors too
        (2, 50, 2, 2, 32, 16, "32", True),  # 2 segments: PREFIX (its loop reads through pointers)
    ],
)
def test_tma_configs_match_recurrence(case, tma_launches, state_passes, monkeypatch):
    """The chunk loop's tiles through TMA descriptors (copy engine; zero fill outside the tensor instead of masks):
    same outputs and gradients as the float64 recurrence, in both directions, with and without segments."""
    b, t, h, hkv, d, e, seg, silu = case
    if seg:
        monkeypatch.setenv("TNL_ATTN_SEG_LEN", seg)
    _check_silu_fold(*_inputs(b, t, h, hkv, d, e), silu)
    # q, k, v, o descriptors for the forward and each of the dq, dv, dk passes (plus k, v for state passes)
    assert len(tma_launches) >= 16 and (16, 32 if d > 16 else 16) in tma_launches
    assert len(state_passes) == (2 if seg and t > 2 * int(seg) else 0)


def test_tma_config_runs_through_pointers_where_descriptors_cannot(tma_launches, monkeypatch):
    """A TMA choice (shipped or cached) stays valid for any call: inputs off 16-byte alignment, varlen (a chunk may
    cross a sequence end, which TMA cannot mask) and TNL_ATTN_TMA=0 run the same config through pointers."""
    q, k, v, decay, s0 = _inputs(1, 24, 2, 2, 16, 16)
    q, k, v = (torch.randn(x.numel() + 1)[1:].view(x.shape) for x in (q, k, v))  # 4 bytes past 16-byte boundaries
    assert not CT._tma_ok(q) and CT._tma_ok(s0)
    _check_all(q, k, v, decay, s0)  # every pass reads two of q, k, v
    cu = torch.tensor([0, 5, 24], dtype=torch.int32)
    _check_all(*_inputs(1, 24, 2, 2, 16, 16, n=2), cu=cu)
    monkeypatch.setenv("TNL_ATTN_TMA", "0")
    _check_all(*_inputs(1, 24, 2, 2, 16, 16))
    assert tma_launches == []
    monkeypatch.setenv("TNL_ATTN_TMA", "yes")
    with pytest.raises(ValueError, match="TNL_ATTN_TMA='yes' is not 0 or 1"):
        CT.triton_lightning_attn(*_inputs(1, 24, 2, 2, 16, 16)[:4])


def test_low_precision_error():
    q, k, v, decay, _ = _inputs(1, 64, 2, 2, 32, 32, state=False)
    o_ref, _ = recurrence(q, k, v, decay)
    for dtype in (torch.bfloat16, torch.float16):
        o, _ = CT.triton_lightning_attn(q.to(dtype), k.to(dtype), v.to(dtype), decay)
        assert o.dtype == dtype
        assert _rel(o, o_ref) < 2e-2, f"{dtype}: {_rel(o, o_ref)}"


def test_bf16_gradients():
    q, k, v, decay, s0 = _inputs(1, 40, 2, 1, 16, 16, dtype=torch.bfloat16)
    _check_all(q, k, v, decay, s0, tol=3e-2)


def test_decode_continues_prefill():
    q, k, v, decay, s0 = _inputs(2, 21, 4, 2, 16, 16)
    o_ref, f_ref = recurrence(q, k, v, decay, 0.5, s0)
    _, state = CT.triton_lightning_attn(q[:, :16], k[:, :16], v[:, :16], decay, scale=0.5, initial_state=s0,
                                        output_final_state=True)
    for t in range(16, 21):
        o_t = CT.triton_lightning_attn_decode(q[:, t], k[:, t], v[:, t], decay, state, scale=0.5)
        assert _rel(o_t, o_ref[:, t]) < 1e-5
    o_t = CT.triton_lightning_attn_decode(q[:, :1], k[:, :1], v[:, :1], decay, state.clone(), scale=0.5)
    assert o_t.shape == (2, 1, 4, 16)
    assert _rel(state, f_ref) < 1e-5


def test_public_entry_dispatches_to_triton():
    from tnl.ops import lightning_attn

    q, k, v, decay, s0 = _inputs(1, 20, 2, 2, 16, 16)
    o, final = lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True, backend="triton")
    o_ref, f_ref = recurrence(q, k, v, decay, 1.0, s0)
    assert _rel(o, o_ref) < 1e-5 and _rel(final, f_ref) < 1e-5


def test_bad_input_one_line_error(monkeypatch):
    q, k, v, decay, _ = _inputs(1, 8, 2, 2, 16, 16, state=False)
    with pytest.raises(ValueError, match="float64") as info:
        CT.triton_lightning_attn(q.double(), k.double(), v.double(), decay)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="head dims"):
        CT.triton_lightning_attn(torch.randn(1, 4, 1, 300), torch.randn(1, 4, 1, 300), v[:, :4, :1], decay[:1])
    with pytest.raises(ValueError, match="state must be float32"):
        CT.triton_lightning_attn_decode(q[:, 0], k[:, 0], v[:, 0], decay, torch.zeros(1, 2, 16, 16).half())
    for name, bad in (("TNL_ATTN_SEG_LEN", "100"), ("TNL_ATTN_SEG_LEN", "-32"), ("TNL_ATTN_PROGRAMS", "x")):
        with monkeypatch.context() as m:
            m.setenv(name, bad)
            with pytest.raises(ValueError, match=f"{name}='{bad}' is not a positive integer") as info:
                CT.triton_lightning_attn(q, k, v, decay)
            assert "\n" not in str(info.value)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="CUDA"):
        CT.triton_lightning_attn(q, k, v, decay)


def _forget_tuning():
    """What a new process starts with: nothing remembered, nothing loaded from disk, nothing tuned here."""
    from tnl.ops.lightning_attn import autotune

    autotune._MEMORY.clear()
    autotune._LOADED.clear()
    autotune._TUNED_HERE.clear()


def test_autotune_cache_roundtrip(tmp_path, monkeypatch):
    from tnl.ops.lightning_attn import autotune

    monkeypatch.setenv("TNL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TNL_AUTOTUNE", "1")
    calls = []

    def bench(cfg):
        calls.append(cfg)
        if cfg == [3]:
            raise RuntimeError("out of resources")
        return float(cfg[0])

    best = autotune.pick("dev-test", "k1", [[5], [2], [3]], bench)
    assert best == [2] and len(calls) == 3
    assert list((tmp_path / "autotune").glob("*.json"))
    _forget_tuning()
    assert autotune.pick("dev-test", "k1", [[5], [2]], bench) == [2] and len(calls) == 3  # from disk
    # a remembered choice that is no longer a candidate is tuned again
    assert autotune.pick("dev-test", "k1", [[5], [4]], bench) == [4] and len(calls) == 5


def test_shipped_configs_used_without_tuning_unless_retune(tmp_path, monkeypatch):
    from tnl.ops.lightning_attn import autotune

    monkeypatch.setenv("TNL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TNL_AUTOTUNE", "1")
    monkeypatch.setitem(autotune.TUNED, "GPU X", {"k2": (2, 2, 2, 2)})
    _forget_tuning()
    calls = []

    def bench(cfg):
        calls.append(cfg)
        return float(sum(cfg))

    cands = [[1, 1, 1, 1], [2, 2, 2, 2]]
    assert autotune.pick("GPU X-triton9", "k2", cands, bench) == [2, 2, 2, 2] and not calls
    # a shipped choice that is not valid for this call (not among its candidates) is not used
    assert autotune.pick("GPU X-triton9", "k2", [[1, 1, 1, 1]], bench) == [1, 1, 1, 1] and len(calls) == 1
    # a new process (memory from the disk cache only): retune ignores the shipped table and the cached result
    _forget_tuning()
    monkeypatch.setenv("TNL_AUTOTUNE", "retune")
    assert autotune.pick("GPU X-triton9", "k2", cands, bench) == [1, 1, 1, 1] and len(calls) == 3
    assert autotune.pick("GPU X-triton9", "k2", cands, bench) == [1, 1, 1, 1] and len(calls) == 3  # once per process
    monkeypatch.setenv("TNL_AUTOTUNE", "1")  # without retune, the disk cache counts
    _forget_tuning()
    assert autotune.pick("GPU X-triton9", "k2", [[3, 3, 3, 3], [1, 1, 1, 1]], bench) == [1, 1, 1, 1]
    assert len(calls) == 3


def test_autotune_skips_configs_that_do_not_fit_but_stops_at_a_device_fault(tmp_path, monkeypatch):
    from triton.runtime.errors import OutOfResources

    from tnl.ops.lightning_attn import autotune

    monkeypatch.setenv("TNL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TNL_AUTOTUNE", "1")
    _forget_tuning()

    def bench(cfg):
        if cfg == [1]:
            raise OutOfResources(300000, 232448, "shared memory")
        if cfg == [2]:
            raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")
        return 1.0

    assert autotune.pick("GPU Y-triton9", "k3", [[1], [3]], bench) == [3]
    with pytest.raises(RuntimeError, match=r"GPU fault surfaced while timing candidate config \[2\] for k4"):
        autotune.pick("GPU Y-triton9", "k4", [[3], [2]], bench)


def test_autotune_leaves_out_configs_whose_results_disagree(tmp_path, monkeypatch):
    """A miscompiled config can be the fastest (Triton 3.6, sm_90): the tuner compares the fastest config's results
    with those of the smallest-tile config and takes the fastest that agrees, warning about the others."""
    from tnl.ops.lightning_attn import autotune

    monkeypatch.setenv("TNL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TNL_AUTOTUNE", "1")
    _forget_tuning()
    ms = {(64, 32): 1.0, (64, 64): 2.0, (16, 32): 5.0, (32, 64): 3.0}
    wrong = {(64, 32)}
    checks = []

    def verify(cfg, ref):
        checks.append((tuple(cfg), tuple(ref)))
        return tuple(cfg) not in wrong and tuple(ref) not in wrong

    cands = [list(c) for c in ms]
    with pytest.warns(UserWarning, match=r"configs for k5 disagree with the smallest-tile config, \[64, 32\] \(vs "
                                         r"\[16, 32\]\), on"):
        assert autotune.pick("GPU Z-triton9", "k5", cands, lambda c: ms[tuple(c)], verify) == [64, 64]
    # a disagreement asks a third config; (64, 32) disagrees with it too
    assert checks == [((64, 32), (16, 32)), ((64, 32), (32, 64)), ((64, 64), (16, 32))]
    # the smallest tile is the fastest: checked against the next smallest
    checks.clear()
    fast_small = {(16, 32): 0.5, (64, 64): 2.0, (32, 64): 3.0}
    assert autotune.pick("GPU Z-triton9", "k6", [list(c) for c in fast_small], lambda c: fast_small[tuple(c)],
                         verify) == [16, 32]
    assert checks == [((16, 32), (32, 64))]
    # the smallest tile itself disagrees: the warning names the config it was compared with
    with pytest.warns(UserWarning, match=r"\[16, 32\] \(vs \[32, 64\]\)"):
        assert autotune.pick("GPU Z-triton9", "k8", [list(c) for c in fast_small], lambda c: fast_small[tuple(c)],
                             lambda cfg, ref: tuple(cfg) != (16, 32)) == [64, 64]
    # the reference itself is wrong: a third config shows which side is (otherwise every config would be rejected)
    ranked = {(64, 64): 1.0, (32, 64): 2.0, (16, 32): 3.0}

    def agree(cfg, ref):
        return (16, 32) not in (tuple(cfg), tuple(ref))

    with pytest.warns(UserWarning, match=r"\[16, 32\] \(vs \[64, 64\] and \[32, 64\]\)"):
        assert autotune.pick("GPU Z-triton9", "k9", [list(c) for c in ranked], lambda c: ranked[tuple(c)],
                             agree) == [64, 64]
    # nothing agrees: a one-line error instead of a silent choice
    with pytest.raises(RuntimeError, match="no candidate config for k7 agrees"):
        autotune.pick("GPU Z-triton9", "k7", cands, lambda c: ms[tuple(c)], lambda cfg, ref: False)
    # remembered choices are not re-verified
    checks.clear()
    assert autotune.pick("GPU Z-triton9", "k5", cands, lambda c: ms[tuple(c)], verify) == [64, 64] and not checks


def test_launch_tuning_compares_real_outputs(tmp_path, monkeypatch):
    """chunk_triton's verify runs the reference and the candidate on the pass's real buffers and compares what they
    wrote: a candidate that writes something else is rejected."""
    calls = []

    def launch(cfg):
        calls.append(tuple(cfg))  # the tuner passes lists, the launch path tuples
        out.copy_(base * (3.0 if tuple(cfg) == (64, 32, 4, 2) else 1.0))

    base = torch.randn(64)
    out = torch.empty(64)
    monkeypatch.setattr(CT.triton.testing, "do_bench", lambda fn, **kw: fn() or {(64, 32, 4, 2): 1.0}.get(calls[-1],
                                                                                                         2.0))
    monkeypatch.setenv("TNL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("TNL_AUTOTUNE", "retune")
    _forget_tuning()
    CT._CHOSEN.clear()
    with pytest.warns(UserWarning, match="disagree"):
        CT._launch_tuned(torch.device("cpu"), "verify-test", 512, lambda: [(64, 32, 4, 2), (32, 64, 4, 2),
                                                                           (16, 32, 4, 1)], launch, lambda: [out], True)
    assert calls[-1] == (32, 64, 4, 2) and torch.equal(out, base)
    _forget_tuning()
    CT._CHOSEN.clear()


def test_shipped_configs_are_kernel_candidates():
    from tnl.ops.lightning_attn.tuned_configs import TUNED

    allowed = {tuple(c) for c in CT._MAIN_CONFIGS + CT._STATE_CONFIGS + CT._SMALL_CONFIGS + CT._TMA_CONFIGS}
    for gpu, table in TUNED.items():
        assert table, gpu
        for key, cfg in table.items():
            role, dims, dtype, rev, init, seg, *suffix = key.split("|")
            assert role in ("fwd", "dq", "dk", "dv", "state") and dtype in ("bfloat16", "float16", "float32")
            assert [int(x) for x in dims.split("x")] and rev[:3] == "rev" and init[:4] == "init" and seg[:3] == "seg"
            assert suffix in ([], ["few"]) or (role == "state" and suffix == ["sub"]), key
            assert tuple(cfg) in allowed or (cfg[0], min(cfg[1], 64), cfg[2], cfg[3]) in allowed, (key, cfg)


def test_launch_choice_made_once_per_shape_class(monkeypatch):
    """The per-launch path must not re-derive candidates or consult the tuner on every call (it dominated the
    time of small forward+backward calls on an H100); a new shape class still gets its own choice."""
    calls = []
    real = CT._candidates
    monkeypatch.setattr(CT, "_candidates", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    CT._CHOSEN.clear()
    q, k, v, decay, _ = _inputs(1, 40, 2, 2, 16, 16, state=False)
    o1 = CT.triton_lightning_attn(q, k, v, decay)[0]
    first = len(calls)
    assert first == 1  # one forward pass, unsegmented
    o2 = CT.triton_lightning_attn(q, k, v, decay)[0]
    assert len(calls) == first and torch.equal(o1, o2)
    CT.triton_lightning_attn(*_inputs(1, 40, 2, 2, 32, 16, state=False)[:4])  # new D: a new choice
    assert len(calls) == first + 1


def test_compiled_custom_ops_match_eager_function():
    """Eager calls go through a plain autograd.Function, compiled ones through the custom ops and their registered
    autograd: both paths must give the same outputs and gradients (initial state, final state, SiLU fold)."""
    q, k, v, decay, s0 = _inputs(1, 24, 2, 1, 16, 16)

    def f(q, k, v, s0):
        o, final = CT.triton_lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True,
                                            qk_activation="silu")
        return o, final

    results = []
    for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, s0)]
        o, final = fn(*leaves)
        grads = torch.autograd.grad((o * torch.cos(o)).sum() + final.square().sum(), leaves)
        results.append([o, final, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["fixed", "varlen", "two_segments"])
def test_compiled_segmented_matches_recurrence(case, state_passes, monkeypatch):
    """The custom ops' segmented path against the float64 recurrence. Fixed-length plans hand the forward's segment
    states to backward (one scan fewer: counted); varlen plans cannot (their fake shapes would depend on
    cu_seqlens' values), so their dq pass builds the states again. Two segments (PREFIX): the states the forward's
    main pass left behind are kept for the dq pass, and no scan runs."""
    varlen = case == "varlen"
    monkeypatch.setenv("TNL_ATTN_SEG_LEN", "32" if case == "two_segments" else "16")
    cu = torch.tensor([0, 7, 7, 40, 80], dtype=torch.int32) if varlen else None
    b, t = {"fixed": (2, 40), "varlen": (1, 80), "two_segments": (2, 60)}[case]
    q, k, v, decay, s0 = _inputs(b, t, 2, 1, 16, 32, n=4 if varlen else None)

    def f(q, k, v, s0):
        return CT.triton_lightning_attn(q, k, v, decay, scale=0.5, initial_state=s0, output_final_state=True,
                                        cu_seqlens=cu)

    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, s0)]
    torch._dynamo.reset()
    o, final = torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves)
    go, gf = torch.randn(o.shape), torch.randn(final.shape)
    grads = torch.autograd.grad((o * go).sum() + (final * gf).sum(), leaves)
    ref = [x.detach().double().requires_grad_() for x in (q, k, v, s0)]
    o_r, f_r = recurrence(*ref[:3], decay, 0.5, ref[3], cu_seqlens=cu)
    grads_r = torch.autograd.grad((o_r * go.double()).sum() + (f_r * gf.double()).sum(), ref)
    for got, want in zip([o, final, *grads], [o_r, f_r, *grads_r]):
        assert _rel(got, want) < 1e-5
    # forward, dq (varlen only), dv (shared with dk); none with two segments
    assert len(state_passes) == {"fixed": 2, "varlen": 3, "two_segments": 0}[case]


def test_compiled_dynamic_shapes_follow_segment_count(monkeypatch):
    """dynamic=True: the fake implementation derives the kept start states' shape from symbolic B and T, so one
    graph serves lengths with different segment counts."""
    monkeypatch.setenv("TNL_ATTN_SEG_LEN", "16")
    decay = torch.rand(2) * 0.5

    def f(q, k, v):
        return CT.triton_lightning_attn(q, k, v, decay, scale=0.5)[0]

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(f, backend="aot_eager", dynamic=True, fullgraph=True)
    for b, t in [(3, 40), (4, 70)]:  # 3 and 5 segments (B != H: duck sizing would tie them)
        leaves = [torch.randn(b, t, 2, 16).requires_grad_() for _ in range(3)]
        o = compiled(*leaves)
        go = torch.randn(o.shape)
        grads = torch.autograd.grad((o * go).sum(), leaves)
        ref = [x.detach().double().requires_grad_() for x in leaves]
        o_r = recurrence(*ref, decay, 0.5)[0]
        grads_r = torch.autograd.grad((o_r * go.double()).sum(), ref)
        for got, want in zip([o, *grads], [o_r, *grads_r]):
            assert _rel(got, want) < 1e-5
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("varlen", [False, True])
def test_custom_ops_pass_opcheck(varlen, monkeypatch):
    """torch.library.opcheck: schema, autograd registration and the fake implementations' output shapes (the kept
    segment states' shape is derived from the plan) against real runs, segmented."""
    monkeypatch.setenv("TNL_ATTN_SEG_LEN", "16")
    cu = torch.tensor([0, 7, 7, 40], dtype=torch.int32) if varlen else None
    q, k, v, decay, s0 = _inputs(1 if varlen else 3, 40, 2, 2, 16, 16, n=3)
    q, k, v, s0 = (x.requires_grad_() for x in (q, k, v, s0))
    torch.library.opcheck(CT._fwd_op, (q, k, v, decay, 0.5, s0, True, cu, False))
    qa, ka = (torch.nn.functional.silu(x).detach().requires_grad_() for x in (q, k))
    torch.library.opcheck(CT._fwd_op, (q, k, v, decay, 0.5, s0, True, cu, True, qa, ka))


def test_torch_compile_no_graph_break():
    q, k, v, decay, s0 = _inputs(1, 16, 2, 2, 16, 16)

    def f(q, k, v, s0):
        o, final = CT.triton_lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True)
        return o.sum() + final.sum()

    explain = torch._dynamo.explain(f)(q, k, v, s0)
    assert explain.graph_break_count == 0


if not IN_CHILD:  # in the parent process only the child-process runner above is collected
    for _name in [n for n in globals() if n.startswith("test_") and n != "test_triton_kernels_interpreted"]:
        del globals()[_name]
