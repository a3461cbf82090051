import math

import pytest
import torch

from tnl.train.schedule import lr_multiplier


def _lrs(name, steps=100, warmup=10, **kw):
    """Learning rates an optimizer actually sees over `steps` steps through LambdaLR."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(name, steps, warmup, **kw))
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", ["cosine", "wsd", "inverse_sqrt", "linear", "constant"])
def test_warmup_is_linear_to_the_peak(name):
    lrs = _lrs(name)
    assert lrs[:10] == pytest.approx([2.0 * (i + 1) / 10 for i in range(10)])


def test_cosine_reaches_min_ratio_with_the_cosine_shape():
    lrs = _lrs("cosine", min_lr_ratio=0.1)
    for step in (10, 40, 70, 99):
        progress = (step - 10) / 90
        assert lrs[step] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))


def test_inverse_sqrt_after_warmup():
    lrs = _lrs("inverse_sqrt", steps=400, warmup=40)
    for step in (40, 100, 399):
        assert lrs[step] == pytest.approx(2.0 * math.sqrt(40 / (step + 1)))


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    lrs = _lrs("wsd", steps=100, warmup=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lrs[10:80] == pytest.approx([2.0] * 70)
    assert lrs[90] == pytest.approx(2.0 * (1 - 10 / 20))
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="choose one of cosine, wsd"):
        lr_multiplier("exp", 10, 1)
