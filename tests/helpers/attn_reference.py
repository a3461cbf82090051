"""Independent float64 token-by-token recurrence, written for the tests only."""

import torch


def recurrence(q, k, v, decay, scale=1.0, initial_state=None, cu_seqlens=None):
    """S_t = exp(-s) S_{t-1} + k_t^T v_t; o_t = scale q_t S_t. Returns (o, final [N, H, D, E]) in float64."""
    q, k, v, s = q.double(), k.double(), v.double(), decay.double()
    b, t, h, d = q.shape
    e = v.shape[-1]
    g = h // k.shape[2]
    bounds = cu_seqlens.tolist() if cu_seqlens is not None else None
    n = len(bounds) - 1 if bounds else b
    o = torch.zeros(b, t, h, e, dtype=torch.float64)
    finals = torch.zeros(n, h, d, e, dtype=torch.float64)
    segs = [(i, i, 0, t) for i in range(b)] if bounds is None else [
        (i, 0, bounds[i], bounds[i + 1]) for i in range(n)
    ]
    for seq, bi, start, end in segs:
        for head in range(h):
            kv = head // g
            S = initial_state[seq, head].double().clone() if initial_state is not None else torch.zeros(d, e,
                                                                                                      dtype=torch.float64)
            lam = torch.exp(-s[head])
            for tt in range(start, end):
                S = lam * S + torch.outer(k[bi, tt, kv], v[bi, tt, kv])
                o[bi, tt, head] = scale * (q[bi, tt, head] @ S)
            finals[seq, head] = S
    return o, finals


def flip_index(t, cu_seqlens=None):
    """Token order with each sequence (each packed one under cu_seqlens) reversed in place."""
    bounds = cu_seqlens.tolist() if cu_seqlens is not None else [0, t]
    return torch.cat([torch.arange(e - 1, s - 1, -1) for s, e in zip(bounds[:-1], bounds[1:])]).long()


def reverse_recurrence(q, k, v, decay, scale=1.0, initial_state=None, cu_seqlens=None):
    """The recurrence run from each sequence's end: the forward one on time-flipped inputs, its output flipped back
    (the final state is the one after each sequence's first token)."""
    idx = flip_index(q.shape[1], cu_seqlens)
    o, final = recurrence(q[:, idx], k[:, idx], v[:, idx], decay, scale, initial_state, cu_seqlens)
    return o[:, idx], final


def rel_error(a, b) -> float:
    """||a - b|| / ||b|| with `a` taken to float64 (b is the float64 reference)."""
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
