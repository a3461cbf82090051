"""`lightning_attn(reverse=True)` on the Triton backend under TRITON_INTERPRET=1 (CPU): each sequence from its end,
against the float64 recurrence on time-flipped inputs (tests/helpers/attn_reference.py), output, final state and
every gradient, initial state included, on each path of the kernels' plan (one segment, state pass with chained
segments, sub-segments, two PREFIX segments, varlen with its scan, TMA descriptors, the compiled custom ops).
Runs in a child process like test_lightning_attn_triton.py."""


import pytest
import torch

from tests.helpers.attn_reference import rel_error, reverse_recurrence
from tests.helpers.interpret import IN_CHILD, run_interpreted

pytest.importorskip("triton")

if not IN_CHILD:

    def test_reverse_kernels_interpreted():
        run_interpreted(__file__, timeout=900, TNL_AUTOTUNE="0")


from tnl.ops import lightning_attn  # noqa: E402
from tnl.ops.lightning_attn import passes, plan, tuning  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(b, t, h, hkv, d, e, n=None):
    q, k = torch.randn(b, t, h, d), torch.randn(b, t, hkv, d)
    v = torch.randn(b, t, hkv, e)
    return q, k, v, torch.rand(h) * 0.5, torch.randn(n or b, h, d, e)


def _check(q, k, v, decay, s0, cu=None, scale=0.7, silu=False, fn=None):
    """Reverse output, final state and gradients (q, k, v, s0) against the flipped float64 recurrence."""
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]

    def call(q, k, v, s0):
        return lightning_attn(q, k, v, decay, scale=scale, initial_state=s0, output_final_state=True, cu_seqlens=cu,
                              backend="triton", qk_activation="silu" if silu else None, reverse=True)

    o, final = fn(call, *leaves) if fn else call(*leaves)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    act = torch.nn.functional.silu if silu else (lambda x: x)
    o_r, f_r = reverse_recurrence(act(ref[0]), act(ref[1]), ref[2], decay, scale, ref[3], cu_seqlens=cu)
    go, gf = torch.randn(o.shape, dtype=torch.float64), torch.randn(final.shape, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * go).sum() + (final.double() * gf).sum(), leaves)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), ref)
    for name, got, want in zip("o final dq dk dv ds0".split(), (o, final, *grads), (o_r, f_r, *grads_r)):
        assert rel_error(got, want) < 1e-5, f"{name} {rel_error(got, want)}"


@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, seg_len, SiLU folded
        (2, 37, 4, 2, 16, 32, None, False),  # one segment, odd T (a partial chunk at the start in reverse)
        (1, 21, 1, 1, 144, 24, None, False),  # D pads to 256 (the early state update)
        (2, 70, 2, 1, 16, 16, 32, True),  # 3 segments: state pass, main passes chaining it; SiLU folded
        (2, 50, 4, 2, 32, 16, 32, False),  # 2 segments: PREFIX (the first segment builds its start from the end)
    ],
)
def test_reverse_matches_flipped_recurrence(case, options):
    b, t, h, hkv, d, e, seg, silu = case
    options(seg_len=seg)
    _check(*_inputs(b, t, h, hkv, d, e), silu=silu)


def test_reverse_state_pass_split_into_sub_segments(options, monkeypatch):
    """Sub-segment contributions chained from the sequence's end (the last segment's second sub-segment partial)."""
    options(seg_len=64)
    monkeypatch.setattr(plan, "SEG_ALIGN", 16)
    monkeypatch.setattr(plan, "MIN_STATE_SUB", 16)
    monkeypatch.setattr(plan, "STATE_PROGRAMS_PER_SM", 64)
    b, t, h, d, e = 1, 150, 2, 16, 48
    assert plan.Plan(b, t, h, e, None, torch.device("cpu"), dims=(d, e)).state_split > 1
    _check(*_inputs(b, t, h, h, d, e), scale=0.8)


@pytest.mark.parametrize("seg", [None, 16])
def test_reverse_varlen_runs_each_packed_sequence_from_its_end(seg, options):
    """Each packed sequence (an empty and a one-token one among them) from its own end, with its own initial and
    final state; segmented: the scan chains segment states from each sequence's end."""
    options(seg_len=seg)
    cu = torch.tensor([0, 5, 5, 6, 70, 83], dtype=torch.int32)
    _check(*_inputs(1, 83, 4, 2, 16, 16, n=5), cu=cu)


@pytest.fixture
def tma_launches(monkeypatch):
    monkeypatch.setattr(tuning, "INTERPRET_CONFIG", tuning.INTERPRET_CONFIG + (1,))
    monkeypatch.setattr(tuning, "_CHOSEN", {})
    made = []
    real = passes._descriptor
    monkeypatch.setattr(passes, "_descriptor", lambda x, rows, cols: made.append((rows, cols)) or real(x, rows, cols))
    return made


@pytest.mark.parametrize("seg", [None, 32])
def test_reverse_through_tma_descriptors(seg, tma_launches, options):
    """Reverse reads the same chunks as forward, last first: the descriptor path serves it (no negative strides)."""
    options(seg_len=seg)
    _check(*_inputs(2, 70, 2, 1, 16, 32))
    assert len(tma_launches) >= 16  # q, k, v, o descriptors in the forward and each backward pass


def test_reverse_through_compiled_custom_ops(options):
    """torch.compile traces the custom ops: reverse reaches their forward and their registered backward."""
    options(seg_len=16)
    torch._dynamo.reset()
    _check(*_inputs(2, 40, 2, 1, 16, 32), fn=lambda call, *xs: torch.compile(call, backend="aot_eager",
                                                                                fullgraph=True)(*xs))


def test_reverse_custom_op_passes_opcheck(options):
    options(seg_len=16)
    q, k, v, decay, s0 = _inputs(3, 40, 2, 2, 16, 16)
    q, k, v, s0 = (x.requires_grad_() for x in (q, k, v, s0))
    torch.library.opcheck(passes.fwd_op, (q, k, v, decay, 0.5, s0, True, None, False, None, None, True))


@pytest.mark.parametrize("reverse", [False, True])
def test_layer_interface_on_triton(reverse):
    """lightning_attn_layer on the Triton backend: decay -g_gamma from the formula written out here, scale
    1/sqrt(D), packed sequences with one initial state each, grouped kv heads."""
    from tests.helpers.attn_reference import recurrence
    from tnl.ops import lightning_attn_layer

    h, d, layer_idx, num_layers = 4, 16, 1, 3
    cu = torch.tensor([0, 9, 30, 41], dtype=torch.int32)
    q, k, v, _, s0 = _inputs(1, 41, h, 2, d, 16, n=3)
    o, final = lightning_attn_layer(q, k, v, layer_idx, num_layers, initial_state=s0, reverse=reverse, cu_seqlens=cu,
                                    backend="triton")
    decay = torch.tensor([(8 / h) * (1 - layer_idx / num_layers) * i for i in range(h)], dtype=torch.float64)
    ref = reverse_recurrence if reverse else recurrence
    o_r, f_r = ref(q, k, v, decay, d ** -0.5, s0, cu_seqlens=cu)
    assert rel_error(o, o_r) < 1e-5 and rel_error(final, f_r) < 1e-5


if not IN_CHILD:
    for _name in [n for n in globals() if n.startswith("test_") and n != "test_reverse_kernels_interpreted"]:
        del globals()[_name]
