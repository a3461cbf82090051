"""The model's attn_backend reaches lightning_attn for every backend, cumsum (standard linear attention, the speed
baseline) included: training, grouped heads, packing and decoding against the float64 formula."""

from __future__ import annotations

import pytest
import torch

from tests.model.test_model import V, make, randomize_lrpe, reference_tnl_logits
from tnl.model import TransnormerConfig
from tnl.model.configuration_transnormer import ATTN_BACKENDS
from tnl.ops.lightning_attn.interface import BACKENDS


def test_config_knows_the_ops_backends_and_refuses_others():
    assert ATTN_BACKENDS == BACKENDS
    with pytest.raises(ValueError, match="attn_backend must be one of"):
        TransnormerConfig(attn_backend="cumsm")


@pytest.mark.parametrize("backend", ["cumsum"])
@pytest.mark.parametrize("kv", [4, 2])
def test_backend_model_matches_formula_gradients_and_decoding(backend, kv):
    model = make(attn_backend=backend, num_key_value_heads=kv).double()
    randomize_lrpe(model)
    ref = make(attn_backend="torch", num_key_value_heads=kv).double()
    ref.load_state_dict(model.state_dict())
    ids = torch.randint(1, V, (2, 140))
    torch.testing.assert_close(model(ids).logits, reference_tnl_logits(model, ids), rtol=1e-9, atol=1e-9)
    model.train()
    ref.train()
    model(ids, labels=ids).loss.backward()
    ref(ids, labels=ids).loss.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
    model.eval()
    full = model(ids[:1, :80]).logits
    out = model(ids[:1, :70], use_cache=True)  # prefill through the backend, then recurrent steps
    steps = [out.logits]
    for i in range(70, 80):
        out = model(ids[:1, i : i + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    cu = torch.tensor([0, 30, 31, 90], dtype=torch.int32)
    packed = model(ids[:1, :90], cu_seqlens=cu).logits
    alone = torch.cat([model(ids[:1, a:b]).logits for a, b in ((0, 30), (30, 31), (31, 90))], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)
