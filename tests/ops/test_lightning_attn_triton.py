"""Triton lightning attention under TRITON_INTERPRET=1 (CPU), against the float64 recurrence.

Triton decides interpret-or-compile when it is imported, so these tests run in a child process started with
TRITON_INTERPRET=1 (tests/helpers/interpret.py); inside it each test also sets the variable through monkeypatch.
Segment lengths are forced with KernelOptions (multiples of 16, the interpreter's chunk).
"""


import pytest
import torch

from tests.helpers.attn_reference import recurrence, rel_error
from tests.helpers.interpret import IN_CHILD, run_interpreted

pytest.importorskip("triton")

if not IN_CHILD:  # the kernel tests below run in a child process under the interpreter (tests/interpret.py)

    def test_triton_kernels_interpreted():
        run_interpreted(__file__, timeout=900, TNL_AUTOTUNE="0")


from tnl.ops.lightning_attn import passes, plan, tuning  # noqa: E402
from tnl.ops.lightning_attn import triton_entry as E  # noqa: E402
from tnl.ops.lightning_attn import triton_kernels as K  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def scans(monkeypatch):
    """Counts `_scan_kernel` launches (one per segmented varlen pass that builds its own start states): the tests
    that use it guard launches saved, a cost every call pays on the GPU."""
    launches = []
    kernel = K._scan_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(K, "_scan_kernel", Counting())
    return launches


@pytest.fixture
def state_passes(monkeypatch):
    """Counts state-only `_chunk_kernel` launches (one per segmented pass that builds its own start states;
    fixed-length main passes then chain them themselves, varlen ones through `_scan_kernel`): a state pass re-reads
    k and v, so the tests that use it guard passes saved."""
    grids = []
    kernel = K._chunk_kernel

    class Counting:
        def __getitem__(self, grid):
            def go(*args, **kw):
                if not kw["WRITE_O"]:
                    grids.append(grid)
                return kernel[grid](*args, **kw)
            return go

    monkeypatch.setattr(K, "_chunk_kernel", Counting())
    return grids


def _inputs(b, t, h, hkv, d, e, dtype=torch.float32, state=True, n=None):
    q = torch.randn(b, t, h, d).to(dtype)
    k = torch.randn(b, t, hkv, d).to(dtype)
    v = torch.randn(b, t, hkv, e).to(dtype)
    decay = torch.rand(h) * 0.5
    s0 = torch.randn(n or b, h, d, e) if state else None
    return q, k, v, decay, s0


def _check_all(q, k, v, decay, s0, scale=1.0, cu=None, tol=1e-5, grad=True):
    leaves = [x.requires_grad_() for x in (q, k, v, s0) if x is not None]
    o, final = E.triton_lightning_attn(q, k, v, decay, scale=scale, initial_state=s0, output_final_state=True,
                                        cu_seqlens=cu)
    assert o.dtype == q.dtype and final.dtype == torch.float32
    o_ref, f_ref = recurrence(q.detach(), k.detach(), v.detach(), decay, scale,
                              s0.detach() if s0 is not None else None, cu_seqlens=cu)
    assert rel_error(o, o_ref) < tol, f"o {rel_error(o, o_ref)}"
    assert rel_error(final, f_ref) < tol, f"final {rel_error(final, f_ref)}"
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
        assert rel_error(g, g_ref) < tol, f"d{name} {rel_error(g, g_ref)}"


def _check_silu_fold(q, k, v, decay, s0, silu: bool, scale: float = 0.6):
    """o, final state and every gradient against the float64 recurrence, with SiLU on q and k folded into the
    kernels when `silu`."""
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    o, final = E.triton_lightning_attn(q, k, v, decay, scale=scale, initial_state=s0, output_final_state=True,
                                        qk_activation="silu" if silu else None)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    act = torch.nn.functional.silu if silu else (lambda x: x)
    o_r, f_r = recurrence(act(ref[0]), act(ref[1]), ref[2], decay, scale, ref[3])
    go, gf = torch.randn(o.shape, dtype=torch.float64), torch.randn(final.shape, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref)
    for name, got, want in zip("o final dq dk dv ds0".split(), (o, final, *grads), (o_r, f_r, *grads_r)):
        assert rel_error(got, want) < 1e-5, f"{name} {rel_error(got, want)}"


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


_FOLDED = [  # B, T, H, Hkv, D, E, seg_len, varlen
    (2, 37, 4, 2, 16, 32, None, False),  # grouped heads: dk's SiLU' uses the kv head's raw k
    (2, 70, 2, 1, 16, 16, 32, False),  # segmented: the state passes apply SiLU too
    (1, 83, 4, 2, 16, 16, 32, True),
]


@pytest.mark.parametrize("case,given", [(c, False) for c in _FOLDED] + [(c, True) for c in _FOLDED])
def test_silu_folded_into_kernels_matches_silu_then_attention(case, given, options):
    """qk_activation="silu": raw q, k in; output, final state and gradients w.r.t. the raw q, k (and v, state)
    equal the float64 recurrence applied to SiLU(q), SiLU(k). `given`: the caller also passes SiLU(q), SiLU(k)
    (qk_activated): the kernels load those and backward applies SiLU' to dq, dk, so gradients reach the raw q, k
    once, not again through the copies."""
    b, t, h, hkv, d, e, seg, varlen = case
    options(seg_len=seg)
    cu = torch.tensor([0, 5, 5, 70, 83], dtype=torch.int32) if varlen else None
    q, k, v, decay, s0 = _inputs(b, t, h, hkv, d, e, n=4 if varlen else None)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    silu = torch.nn.functional.silu
    o, final = E.triton_lightning_attn(q, k, v, decay, scale=0.7, initial_state=s0, output_final_state=True,
                                        cu_seqlens=cu, qk_activation="silu",
                                        qk_activated=(silu(q), silu(k)) if given else None)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    o_r, f_r = recurrence(silu(ref[0]), silu(ref[1]), ref[2], decay, 0.7, ref[3], cu_seqlens=cu)
    assert rel_error(o, o_r) < 1e-5 and rel_error(final, f_r) < 1e-5
    go, gf = torch.randn(o.shape, dtype=torch.float64), torch.randn(final.shape, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref)
    for name, g, g_r in zip("q k v s0".split(), grads, grads_r):
        assert rel_error(g, g_r) < 1e-5, f"d{name} {rel_error(g, g_r)}"


def test_activated_q_k_are_checked():
    q, k, v, decay, _ = _inputs(1, 8, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="qk_activated needs qk_activation='silu'"):
        E.triton_lightning_attn(q, k, v, decay, qk_activated=(q, k))
    with pytest.raises(ValueError, match=r"qk_activated must match q \(1, 8, 2, 16\)"):
        E.triton_lightning_attn(q, k, v, decay, qk_activation="silu", qk_activated=(q[:, :4], k))


def test_gradient_through_final_state_only():
    q, k, v, decay, s0 = _inputs(1, 30, 2, 2, 16, 16)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    _, final = E.triton_lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True)
    grads = torch.autograd.grad(final.square().sum(), leaves, allow_unused=True)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    _, f_r = recurrence(*ref[:3], decay, 1.0, ref[3])
    grads_r = torch.autograd.grad(f_r.square().sum(), ref, allow_unused=True)
    for g, g_r in zip(grads, grads_r):
        if g_r is None:  # q does not reach the final state
            assert g is None or g.abs().max() == 0
        else:
            assert rel_error(g, g_r) < 1e-5


def test_no_initial_state_and_no_final_state():
    q, k, v, decay, _ = _inputs(1, 33, 2, 2, 16, 16, state=False)
    o, final = E.triton_lightning_attn(q, k, v, decay)
    assert final is None
    o_ref, _ = recurrence(q, k, v, decay)
    assert rel_error(o, o_ref) < 1e-5


def test_segmented_long_sequence(options):
    options(seg_len=32)  # 3 segments: state pass + main passes chaining its contributions
    q, k, v, decay, s0 = _inputs(2, 70, 2, 1, 16, 16)
    _check_all(q, k, v, decay, s0, scale=0.5)


@pytest.mark.parametrize("shape", [(2, 70, 4, 2, 32, 16), (1, 70, 2, 2, 16, 48)])  # D != E, grouped heads
def test_segmented_backward_reuses_start_states_two_state_passes_fewer(shape, scans, state_passes, options):
    """Eager: the dq pass reads the forward's segment start states and the dk pass the dv pass's, both transposed
    (same plan), instead of building their own: two state passes per call, not four, and no scan."""
    options(seg_len=32)
    q, k, v, decay, s0 = _inputs(*shape)
    _check_all(q, k, v, decay, s0, scale=0.7)
    assert len(state_passes) == 1 + 1  # forward (S, reused by dq); backward: R, built for dv and reused by dk
    assert not scans  # fixed length: the main passes chain the contributions themselves


def test_backward_shares_the_forward_cut_two_state_passes_fewer(state_passes, options, monkeypatch):
    """D=16 (1 E-block of 64 in the dq/dk passes) x E=80 (2 in the forward/dv): on their own the plans cut T=256
    into 8 and 4 segments (test_attn_plan.py); the backward uses the forward's cut, so dq and dk reuse start states
    (two state passes in all) and the results stay exact."""
    options(programs=8)
    monkeypatch.setattr(plan, "SEG_ALIGN", 32)
    monkeypatch.setattr(plan, "MIN_SEG", 32)
    q, k, v, decay, s0 = _inputs(1, 256, 1, 1, 16, 80)
    _check_all(q, k, v, decay, s0, scale=0.3)
    assert len(state_passes) == 1 + 1  # forward (reused by dq) and dv (reused by dk)


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, segment length, sub-segments per segment
        (2, 70, 2, 1, 32, 16, 32, 2),  # grouped heads, D != E; the last segment is 6 tokens
        (1, 150, 2, 2, 16, 48, 64, 4),  # E > D; the last segment's second sub-segment is partial
        (2, 100, 2, 2, 16, 16, 32, 2),  # D = E, four segments
    ],
)
def test_state_pass_split_into_sub_segments(case, scans, state_passes, options, monkeypatch):
    """A state-only pass with too few programs cuts each segment into sub-segments; each main-pass program chains
    those before its segment and stores only segment start states (initial state and dfinal entering at either
    end): the same results as the float64 recurrence, and no scan launch (the main passes chain)."""
    b, t, h, hkv, d, e, seg, r = case
    options(seg_len=seg)
    monkeypatch.setattr(plan, "SEG_ALIGN", 16)
    monkeypatch.setattr(plan, "MIN_STATE_SUB", 16)
    monkeypatch.setattr(plan, "STATE_PROGRAMS_PER_SM", 64)
    cut = plan.Plan(b, t, h, e, None, torch.device("cpu"), dims=(d, e))
    assert (cut.state_split, cut.prefix) == (r, False)  # the case takes the path under test
    _check_all(*_inputs(b, t, h, hkv, d, e), scale=0.8)
    assert not scans  # fixed length: the main passes chain the sub-segments themselves
    assert len(state_passes) == 2


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, SiLU folded
        (2, 50, 4, 2, 32, 16, False),  # grouped heads, D != E, a partial last chunk
        (1, 45, 2, 2, 16, 48, True),  # E > D, SiLU folded: the prefix loop applies it too
        (2, 50, 2, 1, 16, 16, False),  # D = E, one kv head
    ],
)
def test_two_segments_build_their_start_states_in_the_main_pass_no_state_pass(case, state_passes, options):
    """Two segments (PREFIX): the second segment's program runs the state-only loop over the first segment itself,
    from the initial state; no state pass or scan is launched (one launch instead of three), and the states it
    leaves behind are what the dq and dk passes read."""
    b, t, h, hkv, d, e, silu = case
    options(seg_len=32)
    assert plan.Plan(b, t, h, e, None, torch.device("cpu"), dims=(d, e)).prefix
    _check_silu_fold(*_inputs(b, t, h, hkv, d, e), silu)
    assert not state_passes


@pytest.mark.parametrize("seg", [None, 32])
def test_varlen_matches_per_sequence(seg, options):
    options(seg_len=seg)
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
    monkeypatch.setattr(tuning, "INTERPRET_CONFIG", tuning.INTERPRET_CONFIG + (1,))
    monkeypatch.setattr(tuning, "_CHOSEN", {})  # earlier tests' choices (the plain config) are remembered per key
    made = []
    real = passes._descriptor
    monkeypatch.setattr(passes, "_descriptor", lambda x, rows, cols: made.append((rows, cols)) or real(x, rows, cols))
    return made


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, seg_len, SiLU folded
        (2, 37, 4, 2, 16, 32, None, False),  # odd T (the last chunk runs past T), grouped heads, D != E
        (1, 50, 2, 1, 48, 24, None, True),  # D and E below their tiles (zero-filled columns), SiLU folded
        (2, 70, 2, 1, 16, 16, 32, False),  # 3 segments: the state pass reads through descriptors too
        (2, 50, 2, 2, 32, 16, 32, True),  # 2 segments: PREFIX (its loop reads through pointers)
    ],
)
def test_tma_configs_match_recurrence(case, tma_launches, options):
    """The chunk loop's tiles through TMA descriptors (copy engine; zero fill outside the tensor instead of masks):
    same outputs and gradients as the float64 recurrence, in both directions, with and without segments."""
    b, t, h, hkv, d, e, seg, silu = case
    options(seg_len=seg)
    _check_silu_fold(*_inputs(b, t, h, hkv, d, e), silu)
    # q, k, v, o descriptors for the forward and each of the dq, dv, dk passes: the TMA path ran
    assert len(tma_launches) >= 16


def test_tma_config_runs_through_pointers_where_descriptors_cannot(tma_launches, options):
    """A TMA choice (shipped or cached) stays valid for any call: inputs off 16-byte alignment, varlen (a chunk may
    cross a sequence end, which TMA cannot mask) and KernelOptions(tma=False) run the same config through
    pointers."""
    q, k, v, decay, s0 = _inputs(1, 24, 2, 2, 16, 16)
    q, k, v = (torch.randn(x.numel() + 1)[1:].view(x.shape) for x in (q, k, v))  # 4 bytes past 16-byte boundaries
    assert not passes._tma_ok(q) and passes._tma_ok(s0)
    _check_all(q, k, v, decay, s0)  # every pass reads two of q, k, v
    cu = torch.tensor([0, 5, 24], dtype=torch.int32)
    _check_all(*_inputs(1, 24, 2, 2, 16, 16, n=2), cu=cu)
    options(tma=False)
    _check_all(*_inputs(1, 24, 2, 2, 16, 16))
    assert tma_launches == []


def test_low_precision_error():
    q, k, v, decay, _ = _inputs(1, 64, 2, 2, 32, 32, state=False)
    o_ref, _ = recurrence(q, k, v, decay)
    for dtype in (torch.bfloat16, torch.float16):
        o, _ = E.triton_lightning_attn(q.to(dtype), k.to(dtype), v.to(dtype), decay)
        assert o.dtype == dtype
        assert rel_error(o, o_ref) < 2e-2, f"{dtype}: {rel_error(o, o_ref)}"


def test_bf16_gradients():
    q, k, v, decay, s0 = _inputs(1, 40, 2, 1, 16, 16, dtype=torch.bfloat16)
    _check_all(q, k, v, decay, s0, tol=3e-2)


def test_public_entry_dispatches_to_triton():
    from tnl.ops import lightning_attn

    q, k, v, decay, s0 = _inputs(1, 20, 2, 2, 16, 16)
    o, final = lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True, backend="triton")
    o_ref, f_ref = recurrence(q, k, v, decay, 1.0, s0)
    assert rel_error(o, o_ref) < 1e-5 and rel_error(final, f_ref) < 1e-5


def test_bad_input_one_line_error(monkeypatch):
    q, k, v, decay, _ = _inputs(1, 8, 2, 2, 16, 16, state=False)
    with pytest.raises(ValueError, match="float64") as info:
        E.triton_lightning_attn(q.double(), k.double(), v.double(), decay)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="head dims"):
        E.triton_lightning_attn(torch.randn(1, 4, 1, 300), torch.randn(1, 4, 1, 300), v[:, :4, :1], decay[:1])
    with pytest.raises(ValueError, match="qk_activation must be None or 'silu'"):
        E.triton_attn_forward(q, k, v, decay, qk_activation="gelu")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="CUDA"):
        E.triton_lightning_attn(q, k, v, decay)


def test_repeat_calls_skip_the_config_choice(monkeypatch):
    """The per-launch path must not re-derive candidates or consult the tuner on every call (it dominated the
    time of small forward+backward calls on an H100); a new shape class still gets its own choice."""
    calls = []
    real = tuning.candidates
    monkeypatch.setattr(tuning, "candidates", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    monkeypatch.setattr(tuning, "_CHOSEN", {})
    q, k, v, decay, _ = _inputs(1, 40, 2, 2, 16, 16, state=False)
    o1 = E.triton_lightning_attn(q, k, v, decay)[0]
    first = len(calls)
    assert first == 1  # one forward pass, unsegmented
    o2 = E.triton_lightning_attn(q, k, v, decay)[0]
    assert len(calls) == first and torch.equal(o1, o2)
    E.triton_lightning_attn(*_inputs(1, 40, 2, 2, 32, 16, state=False)[:4])  # new D: a new choice
    assert len(calls) == first + 1


def test_compiled_custom_ops_match_eager_function():
    """Eager calls go through a plain autograd.Function, compiled ones through the custom ops and their registered
    autograd: both paths must give the same outputs and gradients (initial state, final state, SiLU fold)."""
    q, k, v, decay, s0 = _inputs(1, 24, 2, 1, 16, 16)

    def f(q, k, v, s0):
        o, final = E.triton_lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True,
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
def test_compiled_segmented_matches_recurrence(case, state_passes, options):
    """The custom ops' segmented path against the float64 recurrence. Fixed-length plans hand the forward's segment
    states to backward (one scan fewer: counted); varlen plans cannot (their fake shapes would depend on
    cu_seqlens' values), so their dq pass builds the states again. Two segments (PREFIX): the states the forward's
    main pass left behind are kept for the dq pass, and no scan runs."""
    varlen = case == "varlen"
    options(seg_len=32 if case == "two_segments" else 16)
    cu = torch.tensor([0, 7, 7, 40, 80], dtype=torch.int32) if varlen else None
    b, t = {"fixed": (2, 40), "varlen": (1, 80), "two_segments": (2, 60)}[case]
    q, k, v, decay, s0 = _inputs(b, t, 2, 1, 16, 32, n=4 if varlen else None)

    def f(q, k, v, s0):
        return E.triton_lightning_attn(q, k, v, decay, scale=0.5, initial_state=s0, output_final_state=True,
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
        assert rel_error(got, want) < 1e-5
    # forward, dq (varlen only), dv (shared with dk); none with two segments
    assert len(state_passes) == {"fixed": 2, "varlen": 3, "two_segments": 0}[case]


def test_compiled_dynamic_shapes_follow_segment_count(options):
    """dynamic=True: the fake implementation derives the kept start states' shape from symbolic B and T, so one
    graph serves lengths with different segment counts."""
    options(seg_len=16)
    decay = torch.rand(2) * 0.5

    def f(q, k, v):
        return E.triton_lightning_attn(q, k, v, decay, scale=0.5)[0]

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
            assert rel_error(got, want) < 1e-5
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("varlen", [False, True])
def test_custom_ops_pass_opcheck(varlen, options):
    """torch.library.opcheck: schema, autograd registration and the fake implementations' output shapes (the kept
    segment states' shape is derived from the plan) against real runs, segmented."""
    options(seg_len=16)
    cu = torch.tensor([0, 7, 7, 40], dtype=torch.int32) if varlen else None
    q, k, v, decay, s0 = _inputs(1 if varlen else 3, 40, 2, 2, 16, 16, n=3)
    q, k, v, s0 = (x.requires_grad_() for x in (q, k, v, s0))
    torch.library.opcheck(passes.fwd_op, (q, k, v, decay, 0.5, s0, True, cu, False))
    qa, ka = (torch.nn.functional.silu(x).detach().requires_grad_() for x in (q, k))
    torch.library.opcheck(passes.fwd_op, (q, k, v, decay, 0.5, s0, True, cu, True, qa, ka))


def test_custom_ops_keep_their_names():
    """Compiled graphs and exports name the ops tnl::lightning_attn_fwd and tnl::lightning_attn_bwd."""
    assert torch.ops.tnl.lightning_attn_fwd.default._schema.name == "tnl::lightning_attn_fwd"
    assert torch.ops.tnl.lightning_attn_bwd.default._schema.name == "tnl::lightning_attn_bwd"


def test_torch_compile_no_graph_break():
    q, k, v, decay, s0 = _inputs(1, 16, 2, 2, 16, 16)

    def f(q, k, v, s0):
        o, final = E.triton_lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True)
        return o.sum() + final.sum()

    explain = torch._dynamo.explain(f)(q, k, v, s0)
    assert explain.graph_break_count == 0


if not IN_CHILD:  # in the parent process only the child-process runner above is collected
    for _name in [n for n in globals() if n.startswith("test_") and n != "test_triton_kernels_interpreted"]:
        del globals()[_name]
