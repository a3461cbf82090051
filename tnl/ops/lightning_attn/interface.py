"""`lightning_attn`: the public entry point. Validates inputs, handles varlen and picks a backend."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...settings import debug
from ..common import accumulation_dtype, triton_usable
from .checks import check_qk_activation
from .chunk import chunk_lightning_attn
from .cumsum import cumsum_lightning_attn
from .naive import naive_lightning_attn

BACKENDS = ("auto", "torch", "naive", "triton", "cumsum")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(msg: str) -> None:
    raise ValueError(f"lightning_attn: {msg}")


def _validate(q, k, v, decay, initial_state, cu_seqlens) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            _fail(f"{name} must be a 4-D tensor [B, T, heads, dim], got shape {tuple(getattr(x, 'shape', ()))}")
        if x.dtype not in _FLOAT_DTYPES:
            _fail(f"{name} has dtype {x.dtype}; use float16, bfloat16, float32 or float64")
    if not (q.dtype == k.dtype == v.dtype):
        _fail(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    b, t, h, d = q.shape
    if k.shape[:2] != (b, t) or v.shape[:2] != (b, t):
        _fail(f"q, k, v must share [B, T]; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != d:
        _fail(f"k head dim {k.shape[3]} != q head dim {d}")
    hkv = k.shape[2]
    if v.shape[2] != hkv:
        _fail(f"k has {hkv} heads but v has {v.shape[2]}; they must match")
    if h % hkv != 0:
        _fail(f"q heads ({h}) must be a multiple of k/v heads ({hkv}) for grouped heads")
    if t == 0:
        _fail("sequence length T is 0; pass at least one token")
    if not isinstance(decay, torch.Tensor) or decay.shape != (h,):
        _fail(f"decay must be a tensor of shape [{h}] (one rate per q head), got {tuple(getattr(decay, 'shape', ()))}")
    if not decay.is_floating_point():
        _fail(f"decay must be a floating tensor, got {decay.dtype}")
    # value checks read device data only where that costs no synchronisation (CPU tensors) or under TNL_DEBUG=1
    if not torch.compiler.is_compiling() and (decay.device.type == "cpu" or debug()) and bool((decay < 0).any()):
        _fail("decay rates must be >= 0 (the per-step factor is exp(-decay)); negative rates make the state blow up")
    for name, x in (("k", k), ("v", v), ("decay", decay)):
        if x.device != q.device:
            _fail(f"{name} is on {x.device} but q is on {q.device}; move them to one device")
    n = b
    if cu_seqlens is not None:
        if b != 1:
            _fail(f"cu_seqlens needs a packed batch of one (B = 1), got B = {b}; flatten the batch first")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            _fail("cu_seqlens must be a 1-D int32 tensor of N+1 offsets [0, ..., T]")
        if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
            cs = cu_seqlens.tolist()
            if cs[0] != 0 or cs[-1] != t or any(a > b_ for a, b_ in zip(cs[:-1], cs[1:])):
                _fail(f"cu_seqlens must rise from 0 to T = {t}, got {cs[:4]}...{cs[-2:]}")
        n = cu_seqlens.numel() - 1
    if initial_state is not None:
        e = v.shape[3]
        if initial_state.shape != (n, h, d, e):
            _fail(f"initial_state must have shape [{n}, {h}, {d}, {e}], got {tuple(initial_state.shape)}")


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The backend `lightning_attn(q, ..., backend=backend)` runs ('auto': Triton for CUDA tensors below float64
    where Triton is installed, else torch)."""
    if backend not in BACKENDS:
        _fail(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        use_triton = q.device.type == "cuda" and q.dtype != torch.float64 and triton_usable(q)
        return "triton" if use_triton else "torch"
    return backend


def _time_flipped(fn: Callable) -> Callable:
    """A single-sequence backend run from the sequence's end: on copies flipped in time, its output flipped back."""

    def run(q, k, v, decay, scale, initial_state, output_final_state):
        o, final = fn(q.flip(1), k.flip(1), v.flip(1), decay, scale, initial_state, output_final_state)
        return o.flip(1), final

    return run


def _per_sequence(fn: Callable, q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens):
    """Run a single-sequence backend over each packed sequence of a varlen batch."""
    offsets = cu_seqlens.tolist()
    outs, finals = [], []
    for i, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
        if end == start:
            state0 = initial_state[i : i + 1] if initial_state is not None else None
            if output_final_state:  # an empty sequence's final state is its initial state, in the states' dtype
                acc = accumulation_dtype(q.dtype)
                zero = q.new_zeros(1, q.shape[2], q.shape[3], v.shape[-1], dtype=acc)
                finals.append(state0.to(acc) if state0 is not None else zero)
            continue
        state0 = initial_state[i : i + 1] if initial_state is not None else None
        o, f = fn(q[:, start:end], k[:, start:end], v[:, start:end], decay, scale, state0, output_final_state)
        outs.append(o)
        finals.append(f)
    o = torch.cat(outs, dim=1)
    return o, (torch.cat(finals, dim=0) if output_final_state else None)


def lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
    qk_activation: str | None = None,
    qk_activated: tuple[torch.Tensor, torch.Tensor] | None = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal linear attention with per-head exponential decay (Lightning Attention-2).

    Per head: S_t = exp(-decay) * S_{t-1} + k_t^T v_t and o_t = scale * q_t S_t, with S_0 = initial_state.
    q, k: [B, T, H, D] (k may have Hkv heads, H % Hkv == 0); v: [B, T, Hkv, E]; decay: [H].
    cu_seqlens: int32 (or int64) offsets [N+1] of N sequences packed in B = 1; each has its own initial/final state.
    Pass it on the CPU (it may stay there while q is on the GPU): the call then never synchronises the device, as
    segments are planned on the host and their tables reach the GPU by asynchronous copies. A cu_seqlens on the
    GPU is read back once per call, which waits for the GPU.
    No call synchronises the device otherwise: checks that need tensor values (decay >= 0, cu_seqlens rising from
    0 to T) run where the tensor is on the CPU, and for device tensors only with TNL_DEBUG=1.
    qk_activation: None, or "silu" to apply SiLU to q and k first (the TNL feature map); the Triton backend
    does it inside its kernels, so SiLU(q), SiLU(k) are never written or kept for backward.
    qk_activated: (SiLU(q), SiLU(k)) already computed by the caller (with qk_activation="silu"; q, k stay raw).
    The Triton backend then loads them as they are (faster than activating on load) and its backward multiplies
    dq, dk by SiLU'(q), SiLU'(k) as it writes them; gradients reach the raw q, k, none the activated copies.
    backend: "auto" (Triton for CUDA tensors below float64, else "torch"), "triton", "torch" (blockwise
    PyTorch), "naive" (masked quadratic, tests) or "cumsum" (standard linear attention: every [D, E] state
    materialised by a cumulative sum, O(T D E) memory; a baseline for benchmarks).
    reverse: each sequence (each packed one under cu_seqlens) runs from its end: S_t = exp(-decay) * S_{t+1} +
    k_t^T v_t, o_t = scale * q_t S_t, initial_state entering after the last token and final_state the state after
    the first; the same as the forward call on inputs flipped in time, its output flipped back. The Triton kernels
    walk time backwards (nothing is copied); the PyTorch backends flip copies.
    Returns (o [B, T, H, E] in q's dtype, final_state [N, H, D, E] fp32 or None).
    """
    if cu_seqlens is not None and cu_seqlens.device.type != "cpu" and not torch.compiler.is_compiling():
        # segments are planned on the host: a device tensor is read back here, once (a synchronisation)
        cu_seqlens = cu_seqlens.cpu()
    _validate(q, k, v, decay, initial_state, cu_seqlens)
    check_qk_activation(q, k, qk_activation, qk_activated, _fail)
    name = resolve_backend(backend, q)
    if name == "triton":
        if not triton_usable(q):
            _fail("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1) and the Triton kernel; "
                  "use backend='torch' on this device")
        from .triton_entry import triton_lightning_attn

        return triton_lightning_attn(
            q, k, v, decay, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, qk_activation=qk_activation,
            qk_activated=qk_activated, reverse=reverse,
        )
    if qk_activation == "silu":
        q, k = qk_activated if qk_activated is not None else (F.silu(q), F.silu(k))
    fn = {"naive": naive_lightning_attn, "cumsum": cumsum_lightning_attn}.get(name, chunk_lightning_attn)
    if reverse:
        fn = _time_flipped(fn)
    if cu_seqlens is not None:
        return _per_sequence(fn, q, k, v, decay, scale, initial_state, output_final_state, cu_seqlens)
    return fn(q, k, v, decay, scale, initial_state, output_final_state)
