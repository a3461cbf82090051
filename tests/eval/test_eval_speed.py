"""The evaluation benchmark's training-throughput reference: it trains real steps and leaves the model as it was."""

from __future__ import annotations

import torch

from tests.helpers.eval_common import make_tnl
from tnl.eval import fingerprint_model
from tnl.eval.bench import train_tokens_per_second


def test_training_reference_steps_update_then_restore_the_weights():
    model = make_tnl(64, seed=3)
    before = fingerprint_model(model)
    seen = []
    hook = model.lm_head.register_full_backward_hook(lambda *a: seen.append(1))
    tps = train_tokens_per_second(model, batch_size=2, seq_len=16, steps=2)
    hook.remove()
    assert tps > 0 and len(seen) == 3  # one untimed step, then the two timed ones, each with a backward pass
    assert fingerprint_model(model) == before and not model.training
    assert all(p.grad is None for p in model.parameters())
    out = model(input_ids=torch.randint(1, 64, (1, 8))).logits
    assert torch.isfinite(out).all()
