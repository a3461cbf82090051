import pytest
import torch

from tests.helpers.attn_reference import recurrence, reverse_recurrence
from tnl.ops import lightning_attn, recurrent_lightning_attn_step

SHAPES = [  # B, T, H, Hkv, D, E
    (2, 1, 2, 2, 8, 8),
    (2, 37, 4, 2, 12, 20),  # T prime, D != E, grouped heads
    (1, 130, 3, 1, 16, 8),  # T not divisible by the block (64), H not a power of two
    (3, 64, 2, 2, 5, 7),
]


def _inputs(b, t, h, hkv, d, e, dtype=torch.float32, state=True, n=None):
    q = torch.randn(b, t, h, d, dtype=dtype)
    k = torch.randn(b, t, hkv, d, dtype=dtype)
    v = torch.randn(b, t, hkv, e, dtype=dtype)
    decay = torch.rand(h, dtype=torch.float32) * 0.5
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    s0 = torch.randn(n or b, h, d, e, dtype=state_dtype) if state else None
    return q, k, v, decay, s0


@pytest.mark.parametrize("backend", ["torch", "naive", "cumsum"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_state_match_recurrence(backend, shape):
    q, k, v, decay, s0 = _inputs(*shape, dtype=torch.float64)
    o, final = lightning_attn(q, k, v, decay, scale=0.7, initial_state=s0, output_final_state=True, backend=backend)
    o_ref, f_ref = recurrence(q, k, v, decay, 0.7, s0)
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(final, f_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["torch", "naive", "cumsum"])
def test_gradients_match_recurrence(backend):
    q, k, v, decay, s0 = _inputs(2, 70, 4, 2, 6, 10, dtype=torch.float64)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    o, final = lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True, backend=backend)
    go, gf = torch.randn_like(o), torch.randn_like(final)
    grads = torch.autograd.grad((o * go).sum() + (final * gf).sum(), leaves)
    o_ref, f_ref = recurrence(q, k, v, decay, 1.0, s0)
    grads_ref = torch.autograd.grad((o_ref * go).sum() + (f_ref * gf).sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("backend", ["torch", "naive", "cumsum"])
def test_qk_activation_silu_is_silu_then_attention(backend):
    q, k, v, decay, s0 = _inputs(2, 37, 4, 2, 6, 10, dtype=torch.float64)
    o, final = lightning_attn(q, k, v, decay, scale=0.7, initial_state=s0, output_final_state=True,
                              backend=backend, qk_activation="silu")
    o_ref, f_ref = recurrence(torch.nn.functional.silu(q), torch.nn.functional.silu(k), v, decay, 0.7, s0)
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(final, f_ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="qk_activation"):
        lightning_attn(q, k, v, decay, backend=backend, qk_activation="gelu")
    # SiLU(q), SiLU(k) given by the caller: used as they are, gradients reach q, k through the caller's SiLU
    leaves = [x.clone().requires_grad_() for x in (q, k)]
    acts = tuple(torch.nn.functional.silu(x) for x in leaves)
    o2 = lightning_attn(*leaves, v, decay, scale=0.7, initial_state=s0, backend=backend, qk_activation="silu",
                        qk_activated=acts)[0]
    torch.testing.assert_close(o2, o_ref, rtol=1e-9, atol=1e-9)
    go = torch.randn_like(o2)
    q_r, k_r = (x.clone().requires_grad_() for x in (q, k))
    o_r2 = recurrence(torch.nn.functional.silu(q_r), torch.nn.functional.silu(k_r), v, decay, 0.7, s0)[0]
    for g, g_r in zip(torch.autograd.grad((o2 * go).sum(), leaves), torch.autograd.grad((o_r2 * go).sum(), (q_r, k_r))):
        torch.testing.assert_close(g, g_r, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="qk_activated needs qk_activation='silu'"):
        lightning_attn(q, k, v, decay, backend=backend, qk_activated=(q, k))
    with pytest.raises(ValueError, match="qk_activated must match q"):
        lightning_attn(q, k, v, decay, backend=backend, qk_activation="silu", qk_activated=(q[:, :5], k))


def test_low_precision_forward_is_close():
    q, k, v, decay, s0 = _inputs(1, 100, 2, 2, 16, 16, state=False)
    o_ref, _ = recurrence(q, k, v, decay)
    for dtype in (torch.bfloat16, torch.float16):
        o, _ = lightning_attn(q.to(dtype), k.to(dtype), v.to(dtype), decay, backend="torch")
        assert o.dtype == dtype
        err = (o.double() - o_ref).norm() / o_ref.norm()
        assert err < 2e-2, f"{dtype}: relative error {err:.3g}"


@pytest.mark.parametrize("backend", ["torch", "naive", "cumsum"])
def test_varlen_matches_per_sequence_recurrence(backend):
    cu = torch.tensor([0, 5, 5, 70, 83], dtype=torch.int32)  # includes an empty sequence
    q, k, v, decay, s0 = _inputs(1, 83, 4, 2, 8, 6, dtype=torch.float64, n=4)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    o, final = lightning_attn(q, k, v, decay, initial_state=s0, output_final_state=True, cu_seqlens=cu,
                              backend=backend)
    o_ref, f_ref = recurrence(q, k, v, decay, 1.0, s0, cu_seqlens=cu)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(final, f_ref)
    go = torch.randn_like(o)
    grads = torch.autograd.grad((o * go).sum() + final.sum(), leaves)
    grads_ref = torch.autograd.grad((o_ref * go).sum() + f_ref.sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_recurrent_step_continues_chunked_prefill():
    q, k, v, decay, s0 = _inputs(2, 33, 4, 2, 8, 8, dtype=torch.float64)
    o_ref, f_ref = recurrence(q, k, v, decay, 0.5, s0)
    _, state = lightning_attn(q[:, :20], k[:, :20], v[:, :20], decay, scale=0.5, initial_state=s0,
                              output_final_state=True)
    for t in range(20, 33):
        o_t, state = recurrent_lightning_attn_step(q[:, t], k[:, t], v[:, t], decay, state, scale=0.5)
        torch.testing.assert_close(o_t, o_ref[:, t])
    torch.testing.assert_close(state, f_ref)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: {**a, "q": a["q"][0]}, "4-D"),
        (lambda a: {**a, "decay": a["decay"][:1]}, "decay must be a tensor of shape"),
        (lambda a: {**a, "decay": -a["decay"]}, "decay rates must be >= 0"),
        (lambda a: {**a, "k": a["k"].repeat(1, 1, 2, 1)[:, :, :3], "v": a["v"].repeat(1, 1, 2, 1)[:, :, :3]},
         "multiple of k/v heads"),
        (lambda a: {**a, "v": a["v"][:, :, :1]}, "k has 2 heads but v has 1"),
        (lambda a: {**a, "cu_seqlens": torch.tensor([0, 3, 10], dtype=torch.int32)}, "B = 1"),
        (lambda a: {**a, "initial_state": torch.randn(1, 4, 8, 8)}, "initial_state must have shape"),
        (lambda a: {**a, "k": a["k"].half()}, "share one dtype"),
        (lambda a: {**a, "backend": "cuda"}, "unknown backend"),
        (lambda a: {**a, "backend": "triton"}, "backend='triton' needs a CUDA tensor"),
    ],
)
def test_bad_input_gets_one_line_error(mutate, message, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, decay, _ = _inputs(2, 10, 4, 2, 8, 8, state=False)
    args = mutate({"q": q, "k": k, "v": v, "decay": decay})
    kwargs = {key: args.pop(key) for key in ("cu_seqlens", "initial_state", "backend") if key in args}
    with pytest.raises(ValueError, match=message) as info:
        lightning_attn(args["q"], args["k"], args["v"], args["decay"], **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cumsum_backend_is_exact_at_steep_decay_and_long_blocks(dtype):
    """The materialised-state baseline keeps steep rates exact (rescaling by lambda^-s would overflow: 8 * T >> 88)
    through three levels of its blockwise cumulative sum (T > 64 * 64, not a multiple of 64)."""
    q, k, v, _, s0 = _inputs(1, 4200, 3, 3, 2, 3, dtype=dtype)
    decay = torch.tensor([0.0, 0.01, 8.0])
    o, final = lightning_attn(q, k, v, decay, scale=0.3, initial_state=s0, output_final_state=True, backend="cumsum")
    o_ref, f_ref = recurrence(q, k, v, decay, 0.3, s0)
    assert torch.isfinite(o).all()
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(o.double(), o_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(final.double(), f_ref, rtol=tol, atol=tol)


def test_model_attn_backend_cumsum_reaches_the_op(monkeypatch):
    """The model's `attn_backend` passes "cumsum" through to `lightning_attn` (a standard-linear-attention model for
    benchmarks), with the logits of the blockwise backend."""
    from tnl.model import TransnormerConfig, TransnormerForCausalLM
    from tnl.ops.lightning_attn import interface

    calls = []
    real = interface.cumsum_lightning_attn
    monkeypatch.setattr(interface, "cumsum_lightning_attn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    base = dict(vocab_size=61, decoder_embed_dim=32, decoder_layers=2, decoder_attention_heads=4, hidden_dim=32,
                glu_dim=48, linear_use_lrpe_list=[1, 0], pad_token_id=0)
    torch.manual_seed(0)
    model = TransnormerForCausalLM(TransnormerConfig(**base, attn_backend="cumsum")).double().eval()
    ref = TransnormerForCausalLM(TransnormerConfig(**base, attn_backend="torch")).double().eval()
    ref.load_state_dict(model.state_dict())
    ids = torch.randint(1, 61, (2, 70))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    assert len(calls) == 2  # one per layer


@pytest.mark.parametrize("backend", ["torch", "naive", "cumsum"])
@pytest.mark.parametrize("varlen", [False, True])
def test_reverse_matches_recurrence_on_flipped_inputs(backend, varlen):
    """reverse=True runs each sequence (each packed one) from its end: output, final state (after the first token)
    and gradients, initial state included, equal the float64 recurrence on time-flipped inputs."""
    cu = torch.tensor([0, 5, 5, 70, 83], dtype=torch.int32) if varlen else None
    b, t = (1, 83) if varlen else (2, 70)
    q, k, v, decay, s0 = _inputs(b, t, 4, 2, 8, 6, dtype=torch.float64, n=4 if varlen else None)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    o, final = lightning_attn(q, k, v, decay, scale=0.6, initial_state=s0, output_final_state=True, cu_seqlens=cu,
                              backend=backend, reverse=True)
    o_ref, f_ref = reverse_recurrence(q, k, v, decay, 0.6, s0, cu_seqlens=cu)
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(final, f_ref, rtol=1e-9, atol=1e-9)
    go, gf = torch.randn_like(o), torch.randn_like(final)
    grads = torch.autograd.grad((o * go).sum() + (final * gf).sum(), leaves)
    grads_ref = torch.autograd.grad((o_ref * go).sum() + (f_ref * gf).sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-8)
