"""Softmax-attention baselines with the same block, cache and training path as TNL: `SoftmaxAttention` (causal
SDPA, RoPE, GQA, optional window and q/k norm) and `HybridAttention` (softmax inside blocks of tokens, decayed
linear attention across them). `token_mixer` in the model config picks them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.common import accumulation_dtype
from .configuration_transnormer import TransnormerConfig
from .layers import (
    DecayMixin,
    HeadRMSNorm,
    MixerInputs,
    apply_rope,
    decay_rates,
    doc_ids,
    rope_cos_sin,
    srms_norm,
)

# the hybrid mixer's cross-block part works on groups of whole blocks of about this many tokens: a loop over single
# small blocks is bound by kernel launches, a group's masked [G, G] scores are cheap
GROUP_TOKENS = 128


def _attend_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, key_ok: torch.Tensor | None, window: int | None
) -> torch.Tensor:
    """Boolean [B or 1, 1, Tq, Tk] mask: causal (k_pos <= q_pos), inside the window, real keys. A query always sees
    itself so rows of pad queries are never empty (their outputs are unused)."""
    qp, kp = q_pos[:, None, :, None], k_pos[:, None, None, :]
    ok = kp <= qp
    if window is not None:
        ok = ok & (kp > qp - window)
    if key_ok is not None:
        ok = ok & key_ok[:, None, None, :]
    return ok | (kp == qp)


class SoftmaxAttention(nn.Module):
    """Transformer baseline token mixer: causal softmax attention (SDPA), RoPE, GQA, optional window and q/k norm."""

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.decoder_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_dim // self.num_heads
        d = config.decoder_embed_dim
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=config.bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=config.bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=config.bias)
        self.out_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=config.bias)
        if config.qk_norm:
            self.q_norm = HeadRMSNorm(self.head_dim, norm_backend=config.norm_backend)
            self.k_norm = HeadRMSNorm(self.head_dim, norm_backend=config.norm_backend)
        self.qk_norm = config.qk_norm
        self.rope = config.position_encoding == "rope"
        self.rope_theta = config.rope_theta
        self.window = config.sliding_window
        self.attention_dropout = config.attention_dropout
        self.norm_backend = config.norm_backend

    def project_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        return q, k, v

    def project(
        self, x: torch.Tensor, positions: torch.Tensor, raw: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = raw if raw is not None else self.project_raw(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q [B, Tq, H, D], k/v [B, Tk, Hkv, D], mask bool broadcastable to [B, H, Tq, Tk] or None (plain causal)."""
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        p = self.attention_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=p, is_causal=mask is None
        )
        return o.transpose(1, 2)

    def packed_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor
                         ) -> torch.Tensor:
        """Causal attention within each packed document (B = 1) without a T x T mask.

        A query only sees keys of its own document (and window), all within `span` = longest document (or window)
        positions back. Cut the row into chunks of `span` tokens: each chunk attends to itself and the chunk before,
        folded into the batch, so cost and mask are O(T * span) instead of O(T^2).
        """
        t = q.shape[1]
        dev = q.device
        doc = doc_ids(cu_seqlens, t)
        span = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if self.window is not None:
            span = min(span, self.window)
        span = max(span, 1)
        if 2 * span >= t:  # documents as long as the row: one masked call
            idx = torch.arange(t, device=dev)[None]
            mask = _attend_mask(idx, idx, None, self.window) & (doc[:, None] == doc[None, :])[None, None]
            return self.sdpa(q, k, v, mask)
        c = span
        nc = (t + c - 1) // c
        pad = nc * c - t
        qc = F.pad(q, (0, 0, 0, 0, 0, pad)).reshape(nc, c, q.shape[2], q.shape[3])
        # keys of chunk i: positions [(i-1)c, (i+1)c), i.e. the previous chunk and its own
        kp = F.pad(k, (0, 0, 0, 0, c, pad))[0]
        vp = F.pad(v, (0, 0, 0, 0, c, pad))[0]
        kc = kp.unfold(0, 2 * c, c).permute(0, 3, 1, 2)  # [nc, 2c, Hkv, D]
        vc = vp.unfold(0, 2 * c, c).permute(0, 3, 1, 2)
        qpos = torch.arange(nc * c, device=dev).view(nc, c)
        kpos = torch.arange(-c, nc * c, device=dev).unfold(0, 2 * c, c)  # [nc, 2c]
        doc_all = F.pad(doc, (c, pad), value=-1)  # padding belongs to no document
        dq, dk = doc_all[qpos + c], doc_all[kpos + c]
        ok = (kpos[:, None, :] <= qpos[:, :, None]) & (dk[:, None, :] == dq[:, :, None]) & (dq[:, :, None] >= 0)
        if self.window is not None:
            ok &= kpos[:, None, :] > qpos[:, :, None] - self.window
        ok |= kpos[:, None, :] == qpos[:, :, None]  # no empty rows (padding queries)
        o = self.sdpa(qc, kc, vc, ok[:, None])
        return o.reshape(1, nc * c, q.shape[2], q.shape[3])[:, :t]

    def forward(self, x: torch.Tensor, inp: MixerInputs) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.project(x, inp.positions)
        layer = inp.cache.layer(self.layer_idx) if inp.cache is not None else None
        past = 0
        if layer is not None:
            if layer.keys is not None:
                past = layer.keys.shape[1]
                k, v = torch.cat([layer.keys, k], dim=1), torch.cat([layer.values, v], dim=1)
            # with a window the next query sees only the last window - 1 keys: the cache stays bounded
            keep = k.shape[1] if self.window is None else self.window - 1
            start = max(k.shape[1] - keep, 0)
            layer.keys, layer.values = k[:, start:], v[:, start:]
            layer.seen += t
        key_ok = inp.full_key_mask if inp.full_key_mask is not None else inp.key_mask
        if key_ok is not None:
            key_ok = key_ok[:, max(key_ok.shape[1] - k.shape[1], 0) :]  # the columns of the keys held here
        if inp.cu_seqlens is not None:
            return self.out_proj(self.packed_attention(q, k, v, inp.cu_seqlens).reshape(b, t, -1))
        if past == 0 and key_ok is None and self.window is None:
            mask = None
        else:
            q_idx = torch.arange(past, past + t, device=x.device)[None]
            k_idx = torch.arange(past + t, device=x.device)[None]
            mask = _attend_mask(q_idx, k_idx, key_ok, self.window)
        o = self.sdpa(q, k, v, mask)
        return self.out_proj(o.reshape(b, t, -1))


class HybridAttention(SoftmaxAttention, DecayMixin):
    """Block-hybrid mixer: softmax attention inside each block of C tokens, decayed linear attention across blocks.

    For token t in block b (tokens [bC, bC + C)), with phi = SiLU on the same q/k (before RoPE):
      o_t = softmax_attn(q_t, k_{bC..t}, v_{bC..t}) + SRMSNorm_head(sum_{s < bC} lambda^(t-s) phi(q_t) phi(k_s)^T v_s).
    The cross-block sum is a lightning-attention state over completed blocks; the cache keeps that state plus the
    keys/values of the current partial block, so decoding costs O(C + D E) per token.
    """

    def __init__(self, config: TransnormerConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.block = config.hybrid_block_size
        self.decay_list = decay_rates(config, layer_idx)
        self.window = None
        self.group_tokens = GROUP_TOKENS

    def forward(self, x: torch.Tensor, inp: MixerInputs) -> torch.Tensor:
        b, t, _ = x.shape
        if inp.cu_seqlens is not None:  # packed documents: run each separately (baseline, not a fast path)
            outs, offs = [], inp.cu_seqlens.tolist()
            for s, e in zip(offs[:-1], offs[1:]):
                if e > s:
                    sub = MixerInputs(inp.positions[:, s:e], None, None, None, None)
                    outs.append(self.forward(x[:, s:e], sub))
            return torch.cat(outs, dim=1)
        h, dh, c = self.num_heads, self.head_dim, self.block
        # phi(q), phi(k) from the pre-RoPE projections
        raw = self.project_raw(x)
        q_raw, k_raw = raw[0], raw[1]
        q, k, v = self.project(x, inp.positions, raw)
        lq, lk = F.silu(q_raw), F.silu(k_raw)
        layer = inp.cache.layer(self.layer_idx) if inp.cache is not None else None
        state, r = None, 0
        if layer is not None and layer.keys is not None:  # prepend the cached partial block
            r = layer.keys.shape[1]
            k, v, lk = (torch.cat([a, bb], 1) for a, bb in ((layer.keys, k), (layer.values, v), (layer.lin_keys, lk)))
        if layer is not None:
            state = layer.state
        n = r + t  # tokens in the context, aligned so the context starts at a block boundary
        # validity of every context key (cached partial block included): pads stay out of both parts
        key_ok = inp.full_key_mask[:, -n:] if inp.full_key_mask is not None else None
        if key_ok is not None:
            lk = lk * key_ok[:, :, None, None].to(lk.dtype)
        if key_ok is not None:
            v = v * key_ok[:, :, None, None].to(v.dtype)
        # --- softmax inside blocks: pad to whole blocks, fold blocks into the batch
        nb = (n + c - 1) // c
        pad = nb * c - n
        qf = F.pad(q, (0, 0, 0, 0, r, pad))  # queries for cached tokens are dummies, dropped below
        kf, vf = F.pad(k, (0, 0, 0, 0, 0, pad)), F.pad(v, (0, 0, 0, 0, 0, pad))
        fold = lambda z: z.reshape(b * nb, c, z.shape[2], dh)  # noqa: E731
        idx = torch.arange(c, device=x.device)[None]
        ok = None
        if key_ok is not None:
            ok = F.pad(key_ok, (0, pad), value=False).reshape(b * nb, c)
        mask = _attend_mask(idx, idx, ok, None)
        o_soft = self.sdpa(fold(qf), fold(kf), fold(vf), mask).reshape(b, nb * c, h, dh)[:, r : r + t]
        # --- decayed linear attention across blocks, chunkwise over groups of whole blocks (about GROUP_TOKENS
        # tokens): inside a group, masked scores between different blocks; from earlier groups, the carried state
        acc = accumulation_dtype(x.dtype)
        group = h // self.num_kv_heads
        s = self.decay(x.device, acc).view(1, h, 1, 1)
        lqf = F.pad(lq, (0, 0, 0, 0, r, 0)).to(acc).transpose(1, 2)  # [B, H, n, D]
        lkf = lk.to(acc).repeat_interleave(group, 2).transpose(1, 2)
        lvf = v.to(acc).repeat_interleave(group, 2).transpose(1, 2)
        if state is None:
            state = lqf.new_zeros(b, h, dh, dh)
        size = c * max(1, self.group_tokens // c)
        pos = torch.arange(min(size, n), device=x.device)
        pairs = min(size, n) > c  # a group holds more than one block (never in a decoding step)
        if pairs:
            gap = (pos[:, None] - pos[None, :]).to(acc)  # t - s inside a group
            other_block = (pos[:, None] // c) > (pos[None, :] // c)  # s in an earlier block than t
        outs = []
        for start in range(0, n, size):
            m_ = min(size, n - start)
            p = pos[:m_].to(acc).view(1, 1, -1, 1)
            qg, kg, vg = (z[:, :, start : start + m_] for z in (lqf, lkf, lvf))
            out = torch.exp(-s * (p + 1)) * (qg @ state)
            if pairs:  # pairs of different blocks inside the group
                decay = torch.exp(-s * gap[:m_, :m_].clamp(min=0)) * other_block[:m_, :m_]  # lambda^(t-s), masked
                out = out + ((qg @ kg.transpose(-1, -2)) * decay) @ vg
            outs.append(out)
            whole = (m_ // c) * c  # completed blocks fold into the state; a partial last block stays in the cache
            if whole:
                kd = kg[:, :, :whole] * torch.exp(-s * (whole - 1 - p[:, :, :whole]))
                state = torch.exp(-s * whole) * state + kd.transpose(-1, -2) @ vg[:, :, :whole]
        o_lin = torch.cat(outs, dim=2).transpose(1, 2)[:, r : r + t]  # [B, t, H, D]
        if layer is not None:
            tail = n - (n // c) * c
            layer.state = state
            layer.keys, layer.values, layer.lin_keys = (z[:, n - tail :] for z in (k, v, lk))
            layer.seen += t
        o = o_soft.to(acc) + srms_norm(o_lin, backend=self.norm_backend)
        return self.out_proj(o.to(x.dtype).reshape(b, t, h * dh))
