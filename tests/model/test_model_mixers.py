"""Softmax and hybrid token mixers, SwiGLU and sinusoidal positions against direct formulas (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tnl.model import TransnormerConfig, TransnormerForCausalLM
from tnl.model.baselines import HybridAttention, SoftmaxAttention
from tnl.model.layers import MixerInputs, decay_rates

B, T, D_MODEL, H = 2, 11, 24, 4


def cfg(**kw) -> TransnormerConfig:
    base = dict(vocab_size=37, decoder_embed_dim=D_MODEL, decoder_layers=2, decoder_attention_heads=H,
                hidden_dim=32, glu_dim=40, pad_token_id=0)
    base.update(kw)
    return TransnormerConfig(**base)


def rms(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return y * w if w is not None else y


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) by pos * base^(-2i/D). x: [T, D]."""
    d = x.shape[-1]
    half = d // 2
    freq = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    ang = pos[:, None].double() * freq
    x1, x2 = x[:, :half], x[:, half:]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)


def softmax_reference(mod: SoftmaxAttention, x: torch.Tensor, window: int | None, theta: float) -> torch.Tensor:
    """Per head: softmax(q k^T / sqrt(D)) over allowed keys, GQA head h reads kv head h // group."""
    h, hkv, dh = mod.num_heads, mod.num_kv_heads, mod.head_dim
    q = (x @ mod.q_proj.weight.T).view(B, T, h, dh)
    k = (x @ mod.k_proj.weight.T).view(B, T, hkv, dh)
    v = (x @ mod.v_proj.weight.T).view(B, T, hkv, dh)
    pos = torch.arange(T)
    out = torch.zeros(B, T, h, dh, dtype=torch.float64)
    for bi in range(B):
        for hi in range(h):
            kv = hi // (h // hkv)
            qh, kh = q[bi, :, hi], k[bi, :, kv]
            if mod.qk_norm:
                qh, kh = rms(qh, mod.q_norm.weight), rms(kh, mod.k_norm.weight)
            if mod.rope:
                qh, kh = rope(qh, pos, theta), rope(kh, pos, theta)
            scores = qh @ kh.T / math.sqrt(dh)
            allowed = pos[None, :] <= pos[:, None]
            if window is not None:
                allowed &= pos[None, :] > pos[:, None] - window
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[bi, :, hi] = scores.softmax(-1) @ v[bi, :, kv]
    return out.reshape(B, T, h * dh) @ mod.out_proj.weight.T


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(num_key_value_heads=2, qk_norm=True),
        dict(sliding_window=4, rope_theta=500.0),
        dict(position_encoding="none", num_key_value_heads=1),
    ],
)
def test_softmax_attention_matches_direct_formula(kw):
    c = cfg(token_mixer="softmax", **kw)
    mod = SoftmaxAttention(c, 0).double()
    if c.qk_norm:
        with torch.no_grad():
            mod.q_norm.weight.uniform_(0.5, 1.5)
            mod.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(B, T, D_MODEL, dtype=torch.float64)
    got = mod(x, MixerInputs(torch.arange(T)[None], None, None, None, None))
    want = softmax_reference(mod, x, c.sliding_window, c.rope_theta)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block,hkv,group", [(4, 4, 256), (3, 2, 256), (16, 4, 256), (3, 2, 6), (2, 4, 3), (4, 1, 8)])
def test_hybrid_attention_matches_direct_formula(block, hkv, group):
    """o_t = softmax over keys of t's block up to t  +  SRMSNorm_head(sum_{s before t's block} lambda^(t-s)
    silu(q_t) silu(k_s)^T v_s), with q, k before RoPE in the linear part. T = 11 is not a multiple of the block;
    small `group_tokens` split the cross-block part into several groups (of one or two blocks) carrying a state."""
    c = cfg(token_mixer="hybrid", hybrid_block_size=block, num_key_value_heads=hkv)
    mod = HybridAttention(c, 1).double()
    mod.group_tokens = group
    x = torch.randn(B, T, D_MODEL, dtype=torch.float64)
    got = mod(x, MixerInputs(torch.arange(T)[None], None, None, None, None))

    h, dh, group = H, mod.head_dim, H // hkv
    q = (x @ mod.q_proj.weight.T).view(B, T, h, dh)
    k = (x @ mod.k_proj.weight.T).view(B, T, hkv, dh)
    v = (x @ mod.v_proj.weight.T).view(B, T, hkv, dh)
    rates = decay_rates(c, 1)
    pos = torch.arange(T)
    blk = pos // block
    out = torch.zeros(B, T, h, dh, dtype=torch.float64)
    for bi in range(B):
        for hi in range(h):
            kv = hi // group
            qr, kr = rope(q[bi, :, hi], pos, c.rope_theta), rope(k[bi, :, kv], pos, c.rope_theta)
            same_block_causal = (blk[None] == blk[:, None]) & (pos[None] <= pos[:, None])
            scores = (qr @ kr.T / math.sqrt(dh)).masked_fill(~same_block_causal, float("-inf"))
            soft = scores.softmax(-1) @ v[bi, :, kv]
            lam = math.exp(-rates[hi])
            lin = torch.zeros(T, dh, dtype=torch.float64)
            for t in range(T):
                for s in range(blk[t] * block):
                    lin[t] += lam ** (t - s) * (F.silu(q[bi, t, hi]) @ F.silu(k[bi, s, kv])) * v[bi, s, kv]
            out[bi, :, hi] = soft + rms(lin)
    want = out.reshape(B, T, h * dh) @ mod.out_proj.weight.T
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_swiglu_channel_mixer_and_sinusoidal_positions():
    c = cfg(token_mixer="softmax", channel_mixer="swiglu", position_encoding="sinusoidal", decoder_layers=1)
    model = TransnormerForCausalLM(c).double().eval()
    ids = torch.randint(1, 37, (B, T))
    out = model(ids, output_hidden_states=True)
    emb = model.model.embed_tokens.weight[ids] * math.sqrt(D_MODEL)
    half = D_MODEL // 2
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    pe = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], -1)
    torch.testing.assert_close(out.hidden_states[0], emb + pe, rtol=1e-12, atol=1e-12)
    layer = model.model.layers[0]
    x = torch.randn(B, T, D_MODEL, dtype=torch.float64)
    cm = layer.channel_mixer
    want = (F.silu(x @ cm.l1.weight.T) * (x @ cm.l2.weight.T)) @ cm.l3.weight.T
    torch.testing.assert_close(cm(x), want, rtol=1e-12, atol=1e-12)


def test_transformer_baseline_parameter_names():
    model = TransnormerForCausalLM(cfg(token_mixer="softmax", channel_mixer="swiglu", qk_norm=True))
    names = set(model.state_dict())
    for p in ("q_proj", "k_proj", "v_proj", "out_proj", "q_norm", "k_norm"):
        assert f"model.layers.1.token_mixer.{p}.weight" in names
    assert not any("lrpe" in n for n in names)
