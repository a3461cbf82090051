"""The Triton attention's planner: how a call's sequences are cut into segments (tnl/ops/lightning_attn/plan.py).

The properties the measured rules in plan.py serve are under test (the cut covers each sequence, fills one wave of
programs without starting a partial second, PREFIX where it saves launches, a state pass split only until it
streams), over a grid of shapes on a simulated H100, not the segment counts themselves. The numeric results of every
cut are checked against float64 in test_lightning_attn_triton.py."""

import pytest
import torch

pytest.importorskip("triton")

from tnl.ops.lightning_attn import plan as P  # noqa: E402
from tnl.ops.lightning_attn.options import override_kernel_options  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def h100(monkeypatch):
    monkeypatch.setattr(P, "num_sms", lambda device: 132)


SHAPES = [(b, t, h) for h in (8, 16) for b, t in [(1, 65536), (2, 32768), (3, 16384), (4, 16384), (5, 16384),
                                                    (8, 8192), (1, 16384), (1, 4096), (2, 4096), (1, 1024),
                                                    (16, 4096), (64, 1024)]]
DIMS = [(64, 64), (128, 128), (256, 128)]


def _programs(p, b: int, h: int, e: int) -> int:
    return b * p.nseg * h * -(-e // 64)  # one per (row, segment, head, E-block of 64)


@pytest.mark.parametrize("dims", DIMS)
def test_cut_covers_each_sequence_in_aligned_segments(dims, h100):
    """Every token lies in exactly one segment; segments are multiples of every chunk size and long enough that
    their state pass stays a small part of the work."""
    d, e = dims
    for b, t, h in SHAPES:
        p = P.Plan(b, t, h, e, None, CPU, dims=dims)
        assert (p.nseg - 1) * p.seg_len < t <= p.nseg * p.seg_len, (b, t, h)
        assert p.seg_len % P.SEG_ALIGN == 0 and p.seg_len >= P.MIN_SEG
        assert p.segmented == (p.nseg > 1) and p.g_total == b * p.nseg


@pytest.mark.parametrize("dims", DIMS)
def test_cut_fills_one_wave_and_never_starts_a_partial_second(dims, h100):
    """A call whose unsegmented programs leave most of the GPU idle is cut into segments, up to one wave of
    programs (a partial extra wave costs more than the cut saves); one that fills most of a wave is not cut (its
    state pass would re-read k and v for nothing)."""
    d, e = dims
    small = d <= 64 and e <= 64
    for b, t, h in SHAPES:
        p = P.Plan(b, t, h, e, None, CPU, dims=dims)
        unsegmented = _programs(p, b, h, e) // p.nseg
        if p.nseg > 1:
            assert _programs(p, b, h, e) <= 132, (b, t, h)
            if p.seg_len > P.MIN_SEG:  # not limited by the shortest segment: at least 7/16 of a wave busy
                assert 16 * _programs(p, b, h, e) >= 7 * 132, (b, t, h)
        if unsegmented >= (0.5 if small else 0.75) * 132:
            assert p.nseg == 1, (b, t, h)
        if unsegmented < (7 / 16 if small else 0.5) * 132 and t >= 2 * P.MIN_SEG:
            assert p.nseg > 1, (b, t, h)


@pytest.mark.parametrize("dims", DIMS)
def test_two_small_tile_segments_need_no_state_pass(dims, h100):
    """PREFIX (one launch instead of a state pass, a scan and the main pass) serves exactly the fixed-length plans of
    two segments with tiles of at most 64; no other plan relies on it."""
    d, e = dims
    for b, t, h in SHAPES:
        p = P.Plan(b, t, h, e, None, CPU, dims=dims)
        assert p.prefix == (d <= 64 and e <= 64 and p.nseg == 2), (b, t, h)
        if p.prefix:
            assert p.state_split == 1
    cu = torch.tensor([0, 30, 80], dtype=torch.int32)
    assert not P.Plan(1, 80, 4, 16, cu, CPU, dims=(16, 16)).prefix  # varlen: never


@pytest.mark.parametrize("dims", DIMS)
def test_state_pass_splits_only_until_it_can_stream(dims, h100):
    """The state-only pass cuts segments into sub-segments while it has under 3 programs per SM with tokens to read
    (one per SM reads k and v well below bandwidth), at most 16 per sequence, none under 1024 tokens."""
    d, e = dims
    for b, t, h in SHAPES:
        p = P.Plan(b, t, h, e, None, CPU, dims=dims)
        r = p.state_split
        assert r >= 1 and r & (r - 1) == 0
        if r > 1:
            working = b * (p.nseg - 1) * h * -(-e // 64)  # programs of the segments whose states are read
            assert working * r // 2 < 3 * 132, (b, t, h)  # the last doubling was still needed
            assert p.nseg * r <= P.MAX_STATE_SUBS and p.seg_len // r >= P.MIN_STATE_SUB


def test_tiles_over_64_with_at_most_one_wave_get_their_own_tuning_keys(h100):
    """Configs that win with one wave of long programs (3 stages, TMA) lose with many programs: such calls are tuned
    apart, so neither choice is applied to the other."""
    assert P.Plan(4, 16384, 16, 128, None, CPU, dims=(128, 128)).key_suffix == "|few"  # 128 programs
    assert P.Plan(1, 65536, 16, 128, None, CPU, dims=(256, 128)).key_suffix == "|few"  # one wave of segments
    assert P.Plan(8, 16384, 16, 128, None, CPU, dims=(128, 128)).key_suffix == ""  # 256 programs
    assert P.Plan(1, 65536, 16, 64, None, CPU, dims=(64, 64)).key_suffix == ""  # small tiles


def test_kernel_options_override_the_cut(h100):
    """KernelOptions(seg_len=...) sets the segment length; KernelOptions(programs=...) the program count that
    segments aim at, in place of one wave."""
    assert P.Plan(8, 8192, 16, 64, None, CPU, dims=(64, 64)).nseg == 1
    with override_kernel_options(seg_len=2048):
        plan = P.Plan(8, 8192, 16, 64, None, CPU, dims=(64, 64))
        assert (plan.seg_len, plan.nseg, plan.segmented) == (2048, 4, True)
    for programs in (64, 256, 512):
        with override_kernel_options(programs=programs):
            plan = P.Plan(1, 65536, 16, 64, None, CPU, dims=(64, 64))
            assert programs // 2 < 16 * plan.nseg <= programs


def test_backward_shares_the_forward_cut_when_both_plans_segment(monkeypatch):
    """The dq and dk passes take the forward's cut where both would segment, so they reuse the start states the
    forward and dv passes built (a state pass fewer each). D=16 (1 E-block of 64 in the dq/dk passes) x E=80 (2 in
    the forward/dv): on their own the plans cut T=256 into 8 and 4 segments."""
    monkeypatch.setattr(P, "SEG_ALIGN", 32)
    monkeypatch.setattr(P, "MIN_SEG", 32)
    with override_kernel_options(programs=8):
        assert P.Plan(1, 256, 1, 16, None, CPU, dims=(16, 80)).nseg == 8
        plan_d, plan_e = P.backward_plans(1, 256, 1, 16, 80, None, CPU)
        assert plan_e.nseg == 4 and plan_d.seg_len == plan_e.seg_len
