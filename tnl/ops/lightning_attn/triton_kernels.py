"""Triton kernels for lightning attention (Lightning Attention-2 with per-head constant decay).

One generic chunk kernel serves the forward and all three backward products. With per-head rate s
(lambda = exp(-s)) it computes, for one (E-block, head, segment) program walking its tokens chunk by
chunk with the D x BE state P in registers:

    forward order:  O_t = sout * (skv * sum_{j<=t} lambda^(t-j) (Q_t.K_j) V_j + Q_t lambda^(t-t0+1) P)
    reverse order:  the same with time mirrored (j >= t), used by dK and dV.

Roles: out = (q, k, v); dq = (do, v, k); dk = (v, do, q) reversed; dv = (k, q, do) reversed.
Long sequences are cut into segments: a state-only pass (WRITE_O=False) gives each segment's
contribution (or each sub-segment's: that pass may cut finer, so it has enough programs to stream k and v at
bandwidth), then the main pass runs in parallel, each program chaining the contributions before its segment into
its start state (CHAIN; varlen plans chain them in `_scan_kernel` instead).
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
# Lengths change from call to call (eval windows, stream chunks, varlen): without this, every new T % 16 or
# segment count compiles another variant (2-5 s each on an H100). They only enter masks and loop bounds.
_LENGTH_ARGS = ["T", "SEG_LEN", "NSEG", "KEEP_LEN", "SUB_LEN", "NSUB", "R"]


@triton.jit
def _silu(x):
    """SiLU computed in fp32, returned in x's dtype (the operand of the next dot)."""
    xf = x.to(tl.float32)
    return (xf * tl.sigmoid(xf)).to(x.dtype)


@triton.jit
def _silu_grad(x):
    """d SiLU / dx = s (1 + x (1 - s)), s = sigmoid(x), in fp32."""
    xf = x.to(tl.float32)
    sg = tl.sigmoid(xf)
    return sg * (1.0 + xf * (1.0 - sg))


@triton.jit
def _segment(g, SEGS, T, SEG_LEN, NSEG, IS_VARLEN: tl.constexpr):
    """Program g's segment: (batch row, sequence, first token, end token, first of its sequence, last of it).
    Varlen: row g of the host-built table (sequence, start, end, flags); else NSEG equal segments per row."""
    if IS_VARLEN:
        seq = tl.load(SEGS + g * 4)
        t_start = tl.load(SEGS + g * 4 + 1)
        t_end = tl.load(SEGS + g * 4 + 2)
        flags = tl.load(SEGS + g * 4 + 3)
        b = g * 0
        is_first = (flags & 1) != 0
        is_last = (flags & 2) != 0
    else:
        b = g // NSEG
        sg = g % NSEG
        seq = b
        t_start = sg * SEG_LEN
        t_end = tl.minimum(t_start + SEG_LEN, T)
        is_first = sg == 0
        is_last = sg == NSEG - 1
    return b, seq, t_start, t_end, is_first, is_last


@triton.jit
def _state_update(S, kk, vv, ls, n, shf, mt, offs_c, skv, REVERSE: tl.constexpr, PREC: tl.constexpr):
    """S <- lambda^(n - shift) S + K^T (kdec * V): the state after a chunk of n tokens."""
    if REVERSE:
        kexp = offs_c.to(tl.float32)
    else:
        kexp = (n - 1 - offs_c).to(tl.float32)
    kdec = tl.where(mt, tl.exp2(-ls * tl.maximum(kexp, 0.0)) * skv, 0.0)
    # the per-token decay goes on the C x BE value tile, not the C x BD key tile: K^T stays the loaded tile
    # (H100: 4-12% faster, most at D=256)
    vd = (vv * kdec[:, None]).to(vv.dtype)
    return S * tl.exp2(-ls * (n.to(tl.float32) - shf)) + tl.dot(tl.trans(kk), vd, input_precision=PREC)


@triton.jit
def _chunk_span(offs_c, lo, hi, c, nc, C: tl.constexpr, REVERSE: tl.constexpr):
    """Chunk c of nc over tokens [lo, hi), from the end in reverse: (first token, tokens in it, token mask)."""
    if REVERSE:
        cs = lo + (nc - 1 - c) * C
    else:
        cs = lo + c * C
    n = tl.minimum(C, hi - cs)
    return cs, n, offs_c < n


@triton.jit
def _kv_operands(kk, vv, UPCAST: tl.constexpr, ACT_K: tl.constexpr, ACT_V: tl.constexpr):
    """Loaded k and v tiles as the dots take them."""
    if UPCAST:  # the CPU interpreter cannot do bf16 arithmetic
        kk = kk.to(tl.float32)
        vv = vv.to(tl.float32)
    if ACT_K:
        kk = _silu(kk)
    if ACT_V:
        vv = _silu(vv)
    return kk, vv


@triton.jit
def _load_kv_chunk(k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_c, offs_d, offs_e, mask_d, mask_e, lo, hi, c, nc,
                   C: tl.constexpr, REVERSE: tl.constexpr, UPCAST: tl.constexpr, ACT_K: tl.constexpr,
                   ACT_V: tl.constexpr):
    """Chunk c of nc over tokens [lo, hi) (from the end in reverse): (tokens in it, token mask, token indices, k, v),
    k and v as the dots take them."""
    cs, n, mt = _chunk_span(offs_c, lo, hi, c, nc, C, REVERSE)
    t_idx = (cs + offs_c).to(tl.int64)
    kk = tl.load(k_base + t_idx[:, None] * sk_t + offs_d[None, :] * sk_d,
                 mask=mt[:, None] & mask_d[None, :], other=0.0)
    vv = tl.load(v_base + t_idx[:, None] * sv_t + offs_e[None, :] * sv_d,
                 mask=mt[:, None] & mask_e[None, :], other=0.0)
    kk, vv = _kv_operands(kk, vv, UPCAST, ACT_K, ACT_V)
    return n, mt, t_idx, kk, vv


@triton.jit
def _load_kv_chunk_tma(KD, VD, b, hk, hv, e0, offs_c, lo, hi, c, nc, C: tl.constexpr, BD: tl.constexpr,
                       BE: tl.constexpr, REVERSE: tl.constexpr, UPCAST: tl.constexpr, ACT_K: tl.constexpr,
                       ACT_V: tl.constexpr):
    """`_load_kv_chunk` through TMA descriptors over [B, T, H, dim] (fixed-length plans only: a chunk crosses
    no segment end but T, where the copy engine fills the rows and columns outside the tensor with zeros).
    Returns (tokens in it, token mask, first token, k, v)."""
    cs, n, mt = _chunk_span(offs_c, lo, hi, c, nc, C, REVERSE)
    kk = KD.load([b, cs, hk, 0]).reshape(C, BD)
    vv = VD.load([b, cs, hv, e0]).reshape(C, BE)
    kk, vv = _kv_operands(kk, vv, UPCAST, ACT_K, ACT_V)
    return n, mt, cs, kk, vv


@triton.jit
def _chain_step(P, shift, SUB, s0, i, nsub, h, H, DK, DV, tile, mask_s, ls, seq_len, SUB_LEN,
                REVERSE: tl.constexpr):
    """Step i of a chain over a sequence's sub-segment contributions (SUB, from slot s0; from the sequence's end in
    reverse): P decayed over sub-segment k, plus its contribution. Returns (P, k)."""
    if REVERSE:
        k = nsub - 1 - i
    else:
        k = i
    ln = tl.minimum(SUB_LEN, seq_len - k * SUB_LEN)
    p = SUB + ((s0 + k).to(tl.int64) * H + h) * DK * DV + tile
    return P * tl.exp2(-ls * (ln - shift).to(tl.float32)) + tl.load(p, mask=mask_s, other=0.0), k


@triton.jit
def _chain_state(S, shift, SUB, b, sg, h, H, DK, DV, tile, mask_s, ls, T, SUB_LEN, NSUB, R, REVERSE: tl.constexpr):
    """The state entering main segment sg of row b, chained from S (the initial state or zeros) through the
    contributions of the sub-segments before it (after it in reverse), R per segment, as the state pass left them
    in SUB."""
    if REVERSE:
        steps = NSUB - (sg + 1) * R
    else:
        steps = sg * R
    for i in range(0, steps):
        S, k = _chain_step(S, shift, SUB, b * NSUB, i, NSUB, h, H, DK, DV, tile, mask_s, ls, T, SUB_LEN, REVERSE)
        shift = shift * 0
    return S


@triton.jit
def _prefix_state(S, shift, k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_d, offs_e, mask_d, mask_e, ls, skv,
                  t_start, t_end, T, C: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr,
                  UPCAST: tl.constexpr, ACT_K: tl.constexpr, ACT_V: tl.constexpr):
    """The state entering a segment, built from the sequence's start (its end in reverse) by the segment's own
    program: the state-only loop over every token before it, from S (the initial state or zeros), in chunks of C
    (may be larger than the main loop's: the loop is bound by the latency of each step, not its size)."""
    offs_c = tl.arange(0, C)
    if REVERSE:
        lo = t_end
        hi = T
    else:
        lo = t_start * 0
        hi = t_start
    nc = tl.cdiv(hi - lo, C)
    for c in range(0, nc):
        n, mt, t_idx, kk, vv = _load_kv_chunk(k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_c, offs_d, offs_e, mask_d,
                                              mask_e, lo, hi, c, nc, C, REVERSE, UPCAST, ACT_K, ACT_V)
        S = _state_update(S, kk, vv, ls, n, shift.to(tl.float32), mt, offs_c, skv, REVERSE, PREC)
        shift = shift * 0
    return S


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _chunk_kernel(
    QR, KR, VR, OUT, S_INIT, PBUF, S_OUT, DECAY, SEGS, XRAW, QD, KD, VD, OD, SUB,
    sq_b, sq_t, sq_h, sq_d,
    sk_b, sk_t, sk_h, sk_d,
    sv_b, sv_t, sv_h, sv_d,
    so_b, so_t, so_h, so_d,
    si_n, si_h, si_r, si_c,
    sx_b, sx_t, sx_h, sx_d,
    T, H, GQ, GK, GV, GX, DK, DV, SEG_LEN, NSEG, KEEP_LEN, SUB_LEN, NSUB,
    skv, sout,
    BD: tl.constexpr, BE: tl.constexpr, C: tl.constexpr,
    REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, INIT_SHIFT: tl.constexpr,
    WRITE_O: tl.constexpr, STORE_FINAL: tl.constexpr, FINAL_DECAY: tl.constexpr,
    IS_VARLEN: tl.constexpr, SEGMENTED: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ACT_Q: tl.constexpr = False, ACT_K: tl.constexpr = False, ACT_V: tl.constexpr = False,
    DACT: tl.constexpr = False, P_T: tl.constexpr = False, EARLY_UPDATE: tl.constexpr = False,
    PREFIX: tl.constexpr = False, PREFIX_C: tl.constexpr = 16, TMA: tl.constexpr = False,
    CHAIN: tl.constexpr = False,
):
    # ACT_*: SiLU applied to that operand as it is loaded (q and k arrive raw: the model's feature map folded in);
    # DACT: the output is a gradient w.r.t. an activated input, so it is multiplied by SiLU'(XRAW) before storing.
    # P_T: PBUF holds segment start states built by another pass as [DV, DK] (the transpose of this pass's state).
    # PREFIX (fixed length): no state pass ran; each segment builds its start state from the tokens before it
    # (_prefix_state, in chunks of PREFIX_C) and stores it in PBUF for a later pass to read (P_T there).
    # TMA (fixed length): the chunk loop's q, k, v tiles and o come through the tensor descriptors QD, KD, VD, OD
    # (the copy engine; no address or mask registers), the rest through the pointers.
    # KEEP_LEN (state-only, fixed length): the main pass's segment length; SEG_LEN may be a sub-segment of it.
    # CHAIN (fixed length): each segment chains the state pass's sub-segment contributions (SUB: NSUB per row, of
    # SUB_LEN tokens) into its start state and stores it in PBUF for a later pass (P_T there), like PREFIX.
    pid_e = tl.program_id(0)
    h = tl.program_id(1)
    g = tl.program_id(2)
    b, seq, t_start, t_end, is_first, is_last = _segment(g, SEGS, T, SEG_LEN, NSEG, IS_VARLEN)
    if REVERSE:
        begins = is_last
        ends = is_first
    else:
        begins = is_first
        ends = is_last

    ls = tl.load(DECAY + h).to(tl.float32) * LOG2E
    offs_c = tl.arange(0, C)
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BE + tl.arange(0, BE)
    mask_d = offs_d < DK
    mask_e = offs_e < DV
    mask_s = mask_d[:, None] & mask_e[None, :]
    b64 = b.to(tl.int64)
    q_base = QR + b64 * sq_b + (h // GQ).to(tl.int64) * sq_h
    k_base = KR + b64 * sk_b + (h // GK).to(tl.int64) * sk_h
    v_base = VR + b64 * sv_b + (h // GV).to(tl.int64) * sv_h
    o_base = OUT + b64 * so_b + h.to(tl.int64) * so_h

    S = tl.zeros([BD, BE], dtype=tl.float32)
    shift = tl.full([], 0, tl.int32)
    if HAS_INIT:  # where this program's recurrence starts from the initial state
        p = S_INIT + seq.to(tl.int64) * si_n + h * si_h + offs_d[:, None] * si_r + offs_e[None, :] * si_c
        if PREFIX or CHAIN:  # every segment: its prefix starts there
            S = tl.load(p, mask=mask_s, other=0.0).to(tl.float32)
            shift = tl.full([], INIT_SHIFT, tl.int32)
        elif begins:
            S = tl.load(p, mask=mask_s, other=0.0).to(tl.float32)
            shift = tl.full([], INIT_SHIFT, tl.int32)
    if not begins:
        if SEGMENTED and WRITE_O:
            if REVERSE:
                slot = g + 1
            else:
                slot = g - 1
            ps = PBUF + (slot.to(tl.int64) * H + h) * DK * DV
            if PREFIX:
                S = _prefix_state(S, shift, k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_d, offs_e, mask_d, mask_e,
                                  ls, skv, t_start, t_end, T, PREFIX_C, REVERSE, PREC, UPCAST, ACT_K, ACT_V)
                shift = shift * 0
                tl.store(ps + offs_d[:, None] * DV + offs_e[None, :], S, mask=mask_s)
            elif CHAIN:
                tile = offs_d[:, None] * DV + offs_e[None, :]
                S = _chain_state(S, shift, SUB, b, g % NSEG, h, H, DK, DV, tile, mask_s, ls, T, SUB_LEN, NSUB,
                                 SEG_LEN // SUB_LEN, REVERSE)
                shift = shift * 0
                tl.store(ps + tile, S, mask=mask_s)
            else:
                if P_T:
                    ps += offs_d[:, None] + offs_e[None, :] * DK
                else:
                    ps += offs_d[:, None] * DV + offs_e[None, :]
                S = tl.load(ps, mask=mask_s, other=0.0)

    if CHAIN and begins:  # the row's one slot no pass reads (after its last segment): zeros, not stale memory
        if REVERSE:
            slot0 = g - (NSEG - 1)
        else:
            slot0 = g + NSEG - 1
        tl.store(PBUF + (slot0.to(tl.int64) * H + h) * DK * DV + offs_d[:, None] * DV + offs_e[None, :],
                 tl.zeros([BD, BE], dtype=tl.float32), mask=mask_s)

    if WRITE_O:
        ii = offs_c[:, None]
        jj = offs_c[None, :]
        if REVERSE:
            dist = jj - ii
        else:
            dist = ii - jj
        mdec = tl.where(dist >= 0, tl.exp2(-ls * tl.maximum(dist, 0).to(tl.float32)) * skv, 0.0)

    n_tok = t_end - t_start
    if not WRITE_O:
        # state-only pass: contributions inside the main pass's last segment (the first in reverse) are never read
        if IS_VARLEN:
            unused = ends
        elif REVERSE:
            unused = t_end <= KEEP_LEN
        else:
            unused = t_start >= ((T - 1) // KEEP_LEN) * KEEP_LEN
        if unused:
            n_tok = n_tok * 0
    nc = tl.cdiv(n_tok, C)
    for c in range(0, nc):
        if TMA:
            n, mt, cs, kk, vv = _load_kv_chunk_tma(KD, VD, b, h // GK, h // GV, pid_e * BE, offs_c, t_start, t_end,
                                                   c, nc, C, BD, BE, REVERSE, UPCAST, ACT_K, ACT_V)
            t_idx = (cs + offs_c).to(tl.int64)
        else:
            n, mt, t_idx, kk, vv = _load_kv_chunk(k_base, v_base, sk_t, sk_d, sv_t, sv_d, offs_c, offs_d, offs_e,
                                                  mask_d, mask_e, t_start, t_end, c, nc, C, REVERSE, UPCAST, ACT_K,
                                                  ACT_V)
        shf = shift.to(tl.float32)
        if EARLY_UPDATE:
            # BD=256: the state update goes first; the output reads the chunk's start state from a copy in the
            # operands' dtype (H100, interleaved: 2-5% faster at D=256, 1-2% slower at D=128)
            s_start = S.to(kk.dtype)
            S = _state_update(S, kk, vv, ls, n, shf, mt, offs_c, skv, REVERSE, PREC)
        else:
            s_start = S
        if WRITE_O:
            if TMA:
                qq = QD.load([b, cs, h // GQ, 0]).reshape(C, BD)
            else:
                qq = tl.load(q_base + t_idx[:, None] * sq_t + offs_d[None, :] * sq_d,
                             mask=mt[:, None] & mask_d[None, :], other=0.0)
            if UPCAST:
                qq = qq.to(tl.float32)
            if ACT_Q:
                qq = _silu(qq)
            if REVERSE:
                qexp = (n - offs_c).to(tl.float32) - shf
            else:
                qexp = (offs_c + 1).to(tl.float32) - shf
            qdec = tl.where(mt, tl.exp2(-ls * tl.maximum(qexp, 0.0)), 0.0)
            # the intra-chunk product accumulates onto the inter-chunk term (acc=): one C x BE accumulator live
            # instead of two (H100: 6-9% faster forward at D=128, and at D=256 with the state update below)
            o = tl.dot(qq, s_start.to(qq.dtype), input_precision=PREC) * qdec[:, None]
            a = tl.dot(qq, tl.trans(kk), input_precision=PREC) * mdec
            o = tl.dot(a.to(vv.dtype), vv, acc=o, input_precision=PREC)
            o = o * sout
            if DACT:
                x_base = XRAW + b64 * sx_b + (h // GX).to(tl.int64) * sx_h
                xr = tl.load(x_base + t_idx[:, None] * sx_t + offs_e[None, :] * sx_d,
                             mask=mt[:, None] & mask_e[None, :], other=0.0)
                o = o * _silu_grad(xr)
            if TMA:
                OD.store([b, cs, h, pid_e * BE], o.to(OUT.dtype.element_ty).reshape(1, C, 1, BE))
            else:
                tl.store(o_base + t_idx[:, None] * so_t + offs_e[None, :] * so_d, o.to(OUT.dtype.element_ty),
                         mask=mt[:, None] & mask_e[None, :])
        if not EARLY_UPDATE:
            S = _state_update(S, kk, vv, ls, n, shf, mt, offs_c, skv, REVERSE, PREC)
        shift = shift * 0

    if WRITE_O:
        if STORE_FINAL:
            if ends:
                fexp = FINAL_DECAY - shift
                fin = S * tl.exp2(-ls * fexp.to(tl.float32))
                p = S_OUT + (seq.to(tl.int64) * H + h) * DK * DV + offs_d[:, None] * DV + offs_e[None, :]
                tl.store(p, fin, mask=mask_s)
    else:
        p = S_OUT + (g.to(tl.int64) * H + h) * DK * DV + offs_d[:, None] * DV + offs_e[None, :]
        tl.store(p, S, mask=mask_s)


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _scan_kernel(
    PBUF, S_INIT, DECAY, SEQINFO,
    si_n, si_h, si_r, si_c,
    H, DK, DV, SEG_LEN,
    BD: tl.constexpr, BE: tl.constexpr,
    REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, INIT_SHIFT: tl.constexpr,
):
    """Chain a varlen plan's segment contributions (PBUF, as the state-only pass left them; SEG_LEN tokens each,
    a sequence's last one shorter) into segment start states, in place: slot k gets the state after segment k (in
    reverse: from the sequence's end through segment k). One program per (E-block, D-block, sequence and head)."""
    pid_e = tl.program_id(0)
    pid_d = tl.program_id(1)
    nh = tl.program_id(2)
    n = nh // H
    h = nh % H
    g0 = tl.load(SEQINFO + n * 3)  # the sequence's first segment, its segment count and its length
    ns = tl.load(SEQINFO + n * 3 + 1)
    seq_len = tl.load(SEQINFO + n * 3 + 2)
    ls = tl.load(DECAY + h).to(tl.float32) * LOG2E
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_e = pid_e * BE + tl.arange(0, BE)
    tile = offs_d[:, None] * DV + offs_e[None, :]
    mask_s = (offs_d < DK)[:, None] & (offs_e < DV)[None, :]
    P = tl.zeros([BD, BE], dtype=tl.float32)
    shift = tl.full([], 0, tl.int32)
    if HAS_INIT:
        p = S_INIT + n.to(tl.int64) * si_n + h * si_h + offs_d[:, None] * si_r + offs_e[None, :] * si_c
        P = tl.load(p, mask=mask_s, other=0.0).to(tl.float32)
        shift = tl.full([], INIT_SHIFT, tl.int32)
    # every segment but the last (the first in reverse), whose start state no pass reads
    for i in range(0, ns - 1):
        P, k = _chain_step(P, shift, PBUF, g0, i, ns, h, H, DK, DV, tile, mask_s, ls, seq_len, SEG_LEN, REVERSE)
        tl.store(PBUF + ((g0 + k).to(tl.int64) * H + h) * DK * DV + tile, P, mask=mask_s)
        shift = shift * 0
