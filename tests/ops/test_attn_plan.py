"""The Triton attention's planner: how a call's sequences are cut into segments (tnl/ops/lightning_attn/plan.py).

These rules are the behaviour under test: each case is a measured choice (see the comments in plan.py). The numeric
results of every cut are checked against float64 in test_lightning_attn_triton.py."""

import pytest
import torch

pytest.importorskip("triton")

from tnl.ops.lightning_attn import plan as P  # noqa: E402
from tnl.ops.lightning_attn.options import override_kernel_options  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def h100(monkeypatch):
    monkeypatch.setattr(P, "num_sms", lambda device: 132)


def test_plan_segments_small_tiles_less(h100):
    # one program per SM saturates HBM for D, E <= 64; larger tiles want two per SM before segments pay off
    assert P.Plan(8, 8192, 16, 64, None, CPU, dims=(64, 64)).nseg == 1  # 128 programs
    assert P.Plan(8, 8192, 16, 64, None, CPU, dims=(128, 128)).nseg == 1  # 128 programs: most of a wave
    assert P.Plan(4, 8192, 16, 64, None, CPU, dims=(128, 128)).nseg == 2  # 64 programs: 128 segmented
    assert P.Plan(1, 65536, 16, 64, None, CPU, dims=(64, 64)).nseg == 8
    # 64 and 48 programs: two segments, the second building its start state in the main pass (PREFIX)
    for b in (4, 3):
        plan = P.Plan(b, 16384, 16, 64, None, CPU, dims=(64, 64))
        assert plan.nseg == 2 and plan.prefix
    assert P.Plan(5, 16384, 16, 64, None, CPU, dims=(64, 64)).nseg == 1  # 80 programs: over half a wave
    assert not P.Plan(8, 8192, 16, 128, None, CPU, dims=(128, 128)).prefix  # larger tiles: state pass + scan
    assert not P.Plan(2, 40, 4, 16, torch.tensor([0, 30, 80], dtype=torch.int32), CPU, dims=(16, 16)).prefix  # varlen
    assert P.Plan(1, 65536, 16, 128, None, CPU, dims=(128, 128)).nseg == 4  # 2 E-blocks x 16 heads x 4 = 128 programs
    # D or E > 64: no segments while the unsegmented programs fill most of a wave; below, one wave of segments
    assert P.Plan(4, 16384, 16, 128, None, CPU, dims=(128, 128)).nseg == 1  # 128 programs
    assert P.Plan(2, 16384, 16, 128, None, CPU, dims=(128, 128)).nseg == 2  # 64 programs
    assert P.Plan(4, 16384, 16, 128, None, CPU, dims=(256, 128)).nseg == 1  # 128 programs
    assert P.Plan(2, 32768, 16, 128, None, CPU, dims=(256, 128)).nseg == 2  # 64 programs
    assert P.Plan(1, 65536, 16, 128, None, CPU, dims=(256, 128)).nseg == 4  # 32 programs
    # varlen plans over 64 still aim at two programs per SM
    cu = torch.tensor([0, 30000, 65536], dtype=torch.int32)
    assert P.Plan(1, 65536, 16, 128, cu, CPU, dims=(128, 128)).seg_len == 8192  # 2 x 65,536 x 16 / 264 rounded
    # the state pass cuts finer until about 3 programs per SM have tokens to read, within 16 sub-segments per row
    assert P.Plan(1, 65536, 16, 128, None, CPU, dims=(128, 128)).state_split == 4  # 3 x 4 x 32 = 384 programs
    assert P.Plan(2, 32768, 16, 128, None, CPU, dims=(256, 128)).state_split == 8  # 2 x 1 x 8 x 32 = 512
    assert P.Plan(1, 65536, 16, 64, None, CPU, dims=(64, 64)).state_split == 2  # 8 segments: 16 sub-segments
    assert P.Plan(4, 16384, 16, 64, None, CPU, dims=(64, 64)).state_split == 1  # PREFIX: no state pass


def test_tiles_over_64_with_at_most_one_wave_get_their_own_tuning_keys(h100):
    assert P.Plan(4, 16384, 16, 128, None, CPU, dims=(128, 128)).key_suffix == "|few"  # 128 programs
    assert P.Plan(1, 65536, 16, 128, None, CPU, dims=(256, 128)).key_suffix == "|few"  # one wave of segments
    assert P.Plan(8, 16384, 16, 128, None, CPU, dims=(128, 128)).key_suffix == ""  # 256 programs
    assert P.Plan(1, 65536, 16, 64, None, CPU, dims=(64, 64)).key_suffix == ""  # small tiles


def test_kernel_options_override_the_cut(h100):
    with override_kernel_options(seg_len=2048):
        plan = P.Plan(8, 8192, 16, 64, None, CPU, dims=(64, 64))
        assert (plan.seg_len, plan.nseg, plan.segmented) == (2048, 4, True)
    assert P.Plan(8, 8192, 16, 64, None, CPU, dims=(64, 64)).nseg == 1
    # the program count segments aim at: 8 segments x 16 heads at 128 programs, 2x that at 256
    assert P.Plan(1, 65536, 16, 64, None, CPU, dims=(64, 64)).nseg == 8
    with override_kernel_options(programs=256):
        assert P.Plan(1, 65536, 16, 64, None, CPU, dims=(64, 64)).nseg == 16


def test_backward_shares_the_forward_cut_when_both_plans_segment(monkeypatch):
    # D=16 (1 E-block of 64 in the dq/dk passes) x E=80 (2 in the forward/dv): on their own the plans cut T=256
    # into 8 and 4 segments; the backward uses the forward's cut, so dq and dk can reuse its start states
    monkeypatch.setattr(P, "SEG_ALIGN", 32)
    monkeypatch.setattr(P, "MIN_SEG", 32)
    with override_kernel_options(programs=8):
        assert P.Plan(1, 256, 1, 16, None, CPU, dims=(16, 80)).nseg == 8
        plan_d, plan_e = P.backward_plans(1, 256, 1, 16, 80, None, CPU)
        assert plan_e.nseg == 4 and plan_d.seg_len == plan_e.seg_len
