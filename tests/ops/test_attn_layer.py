"""`tnl.ops.lightning_attn_layer`, the layer-aware interface, against a float64 recurrence whose decay is the
interface's formula written out here: g_gamma = -(8 / num_heads) * (1 - layer_idx / num_layers) * head_index for
head_index = 0 .. H-1, lambda = exp(g_gamma), default scale 1 / sqrt(head_dim)."""

import math

import pytest
import torch

from tests.helpers.attn_reference import flip_index
from tnl.ops import lightning_attn_layer


def g_gamma_rates(num_heads: int, layer_idx: int, num_layers: int) -> list[float]:
    return [-(8 / num_heads) * (1 - layer_idx / num_layers) * head_index for head_index in range(num_heads)]


def layer_recurrence(query, key, value, layer_idx, num_layers, scale, initial_state, bounds):
    """Token by token in float64: S = exp(g_gamma) S + k^T v, o = scale q S; `bounds`: the sequences' token ranges
    (batch row, first, end)."""
    b, t, h, d = query.shape
    e = value.shape[-1]
    group = h // key.shape[2]
    g_gamma = g_gamma_rates(h, layer_idx, num_layers)
    o = torch.zeros(b, t, h, e, dtype=torch.float64)
    finals = []
    for n, (row, start, end) in enumerate(bounds):
        per_head = []
        for head in range(h):
            s = initial_state[n, head].double() if initial_state is not None else torch.zeros(d, e, dtype=torch.float64)
            for tt in range(start, end):
                s = math.exp(g_gamma[head]) * s + torch.outer(key[row, tt, head // group].double(),
                                                             value[row, tt, head // group].double())
                o[row, tt, head] = scale * (query[row, tt, head].double() @ s)
            per_head.append(s)
        finals.append(torch.stack(per_head))
    return o, torch.stack(finals)


def _inputs(b, t, h, hkv, d, e, n):
    q, k, v = torch.randn(b, t, h, d), torch.randn(b, t, hkv, d), torch.randn(b, t, hkv, e)
    return q.double(), k.double(), v.double(), torch.randn(n, h, d, e, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["torch", "naive", "cumsum"])
@pytest.mark.parametrize(
    "case",
    [  # B, T, H, Hkv, D, E, layer_idx, num_layers, softmax_scale, varlen, reverse
        (2, 37, 4, 2, 8, 6, 0, 6, None, False, False),  # first layer: the steepest rates, grouped kv heads
        (2, 37, 4, 4, 9, 6, 4, 6, 0.3, False, False),  # an explicit scale
        (1, 50, 3, 1, 8, 8, 2, 5, None, True, False),  # packed sequences, one initial state each
        (1, 50, 4, 2, 8, 8, 1, 3, None, True, True),  # reverse, packed
        (2, 30, 2, 2, 4, 4, 3, 3, None, False, True),  # layer_idx == num_layers: no decay at all
    ],
)
def test_layer_interface_matches_recurrence(case, backend):
    b, t, h, hkv, d, e, layer_idx, num_layers, scale, varlen, reverse = case
    cu = torch.tensor([0, 11, 11, 40, 50], dtype=torch.int32) if varlen else None
    bounds = [(0, s, e_) for s, e_ in zip(cu.tolist()[:-1], cu.tolist()[1:])] if varlen else \
        [(row, 0, t) for row in range(b)]
    q, k, v, s0 = _inputs(b, t, h, hkv, d, e, len(bounds))
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    o, final = lightning_attn_layer(q, k, v, layer_idx, num_layers, softmax_scale=scale, initial_state=s0,
                                    reverse=reverse, cu_seqlens=cu, backend=backend)
    idx = flip_index(t, cu) if reverse else torch.arange(t)  # reverse: the recurrence on flipped tokens
    want_scale = 1 / math.sqrt(d) if scale is None else scale
    o_r, f_r = layer_recurrence(q[:, idx], k[:, idx], v[:, idx], layer_idx, num_layers, want_scale, s0, bounds)
    o_r = o_r[:, idx]
    torch.testing.assert_close(o, o_r, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(final, f_r, rtol=1e-9, atol=1e-9)
    go, gf = torch.randn_like(o), torch.randn_like(final)
    grads = torch.autograd.grad((o * go).sum() + (final * gf).sum(), leaves)
    grads_r = torch.autograd.grad((o_r * go).sum() + (f_r * gf).sum(), leaves)
    for g, g_r in zip(grads, grads_r):
        torch.testing.assert_close(g, g_r, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q, s0: lightning_attn_layer(q, q, q, 0, 4, cu_seqlens=torch.tensor([0, 3, 10])),
         "cu_seqlens needs a packed batch of one"),
        (lambda q, s0: lightning_attn_layer(q[:1], q[:1], q[:1], 0, 4, initial_state=s0,
                                            cu_seqlens=torch.tensor([0, 3, 6, 10])),
         "initial_state needs one state per sequence"),
        (lambda q, s0: lightning_attn_layer(q, q, q, 5, 4), "0 <= layer_idx <= num_layers"),
        (lambda q, s0: lightning_attn_layer(q, q, q, 0, 0), "num_layers >= 1"),
        (lambda q, s0: lightning_attn_layer(q[0], q[0], q[0], 0, 4), "query must be a 4-D tensor"),
    ],
)
def test_layer_interface_bad_input_is_one_line(call, message):
    q = torch.randn(2, 10, 2, 8)
    s0 = torch.randn(2, 2, 8, 8)  # two states for three sequences
    with pytest.raises(ValueError, match=message) as info:
        call(q, s0)
    assert "\n" not in str(info.value)
