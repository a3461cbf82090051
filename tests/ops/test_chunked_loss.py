"""Fused linear cross-entropy in the model (loss_chunk_size > 0, no full logits) gives the plain loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from tnl.model import TransnormerConfig, TransnormerForCausalLM


def _model():
    torch.manual_seed(0)
    cfg = TransnormerConfig(vocab_size=97, decoder_embed_dim=32, decoder_layers=2, decoder_attention_heads=4,
                            glu_dim=48, attn_backend="torch")
    return TransnormerForCausalLM(cfg).double()


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_loss_and_grads_match_full_logits(shift, chunk):
    model = _model()
    ids = torch.randint(0, 97, (3, 21))
    labels = torch.randint(0, 97, (3, 21))
    labels[0, :5] = -100  # ignored positions
    ref = model(input_ids=ids, labels=labels, shift_labels=shift).loss
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    # independent check of the plain path: the formula written out
    logits = model(input_ids=ids).logits
    pred, tgt = (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)
    # (both paths take the cross-entropy in fp32, as training does)
    assert ref.item() == pytest.approx(F.cross_entropy(pred.reshape(-1, 97), tgt.reshape(-1)).item(), rel=1e-6)
    out = model(input_ids=ids, labels=labels, shift_labels=shift, loss_chunk_size=chunk)
    assert out.logits is None
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-7, check_dtype=False)  # fused keeps float64
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
