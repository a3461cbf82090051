"""The evaluation benchmark's training-throughput reference: it trains real steps and leaves the model as it was."""

from __future__ import annotations

import pytest
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


def _syncs(fn) -> int:
    """How many times `fn` makes the host wait for the GPU (torch's sync debug mode, warning on each)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.gpu
def test_scoring_waits_for_the_gpu_a_fixed_number_of_times_whatever_the_amount_of_work():
    """A wait per batch or per chunk would stop the host from queueing the next forward while the GPU runs this one
    (evaluation is host-bound at small batches): window scoring syncs as often for 2 batches as for 6, stream
    scoring as often for 3 chunks per document as for 12."""
    from tnl.eval.perplexity import score_stream, score_windows

    model = make_tnl(64, seed=3).cuda().to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 90, (12,), generator=gen).tolist()
    docs = [torch.randint(1, 64, (n,), generator=gen).tolist() for n in lengths]

    def windows(d):
        return score_windows(model, d, 0, max_length=32, batch_size=4)

    def stream(chunk):
        return score_stream(model, docs, 0, chunk_size=chunk, batch_size=12)

    # every shape measured below is seen once first: a new shape may autotune a kernel, which waits for the GPU
    windows(docs[:4]), windows(docs), stream(32), stream(8)

    def waits(fn) -> int:  # the fewer of two counts: a one-off wait (an allocator growing) is not a wait per batch
        return min(_syncs(fn), _syncs(fn))

    few, many = waits(lambda: windows(docs[:4])), waits(lambda: windows(docs))
    assert few == many, f"window scoring: {few} waits for 2 batches, {many} for 6"
    few, many = waits(lambda: stream(32)), waits(lambda: stream(8))
    assert few == many, f"stream scoring: {few} waits for 3 chunks a document, {many} for 12"


def test_training_after_scoring_under_inference_mode_gets_normal_decay_tensors():
    """Scoring runs under inference_mode; a training step after it (the benchmark's reference, or training after an
    eval) must not be handed a cached decay tensor made there, which autograd refuses to save for backward."""
    from tnl.model.layers import DecayMixin

    model = make_tnl(64, seed=3)
    mixers = [m for m in model.modules() if isinstance(m, DecayMixin)]
    assert mixers
    with torch.inference_mode():
        model.eval()
        model(input_ids=torch.randint(1, 64, (1, 8)))
        assert all(m.decay(torch.device("cpu")).is_inference() for m in mixers)
    for m in mixers:
        rates = m.decay(torch.device("cpu"))
        assert not rates.is_inference()
        assert torch.equal(rates, torch.tensor(m.decay_list, dtype=torch.float32))
