"""The model's acceptance checks, shared by the GPU tests (tests/model/test_model_gpu.py: tnl_385m, Triton vs
PyTorch) and their CPU versions (tests/model/test_model_checks.py: the tiny config, naive vs PyTorch).

1. backends: forward + backward with a fast attention backend vs the PyTorch backend; loss, logits and gradients
   must agree within fp32 / autocast tolerance.
2. compile: torch.compile as training uses it vs eager; fp32 gradients must agree, autocast errors may be at most
   1.5x eager's (this caught zero q/k/v/u gradients under compile in fp32).
3. memory: greedy decode steps after a long prompt; the cache and allocated memory must stay flat (the state is
   [B, H, D, E] per layer whatever the context length).
4. speed (CUDA): decode tokens/s next to a same-size HF Llama (SDPA + KV cache). TNL is timed eager and with the
   decode step captured in a CUDA graph (its cache has a fixed size).
Each check prints one line per comparison (shown with `pytest -s`) and returns whether it passed.
"""

from __future__ import annotations

import time

import torch

from tnl.model import TransnormerConfig, TransnormerForCausalLM


def set_backend(model: TransnormerForCausalLM, backend: str) -> None:
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _run(model, backend: str | None, kw: dict, autocast: torch.dtype | None, fn=None):
    """Loss, logits and gradients of one training step of `model`, called through `fn` (e.g. its compiled form)
    when given; `backend`: set on the model first unless None."""
    if backend is not None:
        set_backend(model, backend)
    model.zero_grad(set_to_none=True)
    with torch.autocast(model.device.type, dtype=autocast, enabled=autocast is not None):
        out = (fn if fn is not None else model)(**kw, labels=kw["input_ids"])
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach().double(), out.logits.detach().float(), grads


def _errors(run, ref) -> tuple[float, float, dict[str, float]]:
    (la, ga, gra), (lb, gb, grb) = run, ref
    return abs(la - lb).item() / abs(lb).item(), rel_err(ga, gb), {n: rel_err(gra[n], grb[n]) for n in grb}


def check_backends(cfg: TransnormerConfig, device: str, dtype: torch.dtype, pair: tuple[str, str],
                   batch: int, seq: int) -> bool:
    """fast backend vs torch backend, both judged against the torch backend in fp32.

    fp32: the two must agree closely (the kernel's fp32 path uses 3xTF32 dots). Low precision (fp32 weights,
    autocast as in training): the fast backend's error against the fp32 reference may be at most 1.5x the torch
    backend's own low-precision error (plus a small floor), per logits and per parameter gradient. Comparing the
    two low-precision runs directly is not a test: at T = 2048 the LRPE angle gradient sum_n n * (...) loses most
    of its digits in bf16 in either backend.
    """
    torch.manual_seed(0)
    model = TransnormerForCausalLM(cfg).to(device=device, dtype=torch.float32).train()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    cu = torch.tensor([0, seq // 3, seq // 3 + 1, seq], dtype=torch.int32, device=device)
    fast, slow = pair
    low = dtype if dtype != torch.float32 else None
    ok = True
    for packed in (False, True):
        kw = dict(input_ids=ids[:1], cu_seqlens=cu) if packed else dict(input_ids=ids)
        where = f"{'packed cu_seqlens' if packed else f'B={batch}'}, T={seq}"
        ref = _run(model, slow, kw, None)
        loss_e, logit_e, grad_e = _errors(_run(model, fast, kw, None), ref)
        worst = max(grad_e, key=grad_e.get)
        good = loss_e < 1e-4 and logit_e < 1e-3 and grad_e[worst] < 1e-3
        ok &= good
        print(f"[backends] fp32 {fast} vs {slow} ({where}): loss rel {loss_e:.1e}, logits rel {logit_e:.1e}, "
              f"worst grad rel {grad_e[worst]:.1e} ({worst}) -> {'OK' if good else 'FAIL'}")
        if low is None:
            continue
        f_loss, f_logit, f_grad = _errors(_run(model, fast, kw, low), ref)
        _, s_logit, s_grad = _errors(_run(model, slow, kw, low), ref)
        ratio = {n: (f_grad[n] + 1e-3) / (s_grad[n] + 1e-3) for n in s_grad}
        worst = max(ratio, key=ratio.get)
        lo = str(low).replace("torch.", "")
        good = (f_logit + 1e-3) <= 1.5 * (s_logit + 1e-3) and ratio[worst] <= 1.5 and f_loss < 1e-2
        ok &= good
        print(f"[backends] {lo} autocast vs fp32 ({where}): logits rel {fast} {f_logit:.1e} / {slow} {s_logit:.1e}; "
              f"worst grad {worst}: {fast} {f_grad[worst]:.1e} / {slow} {s_grad[worst]:.1e} "
              f"(max over params {max(f_grad.values()):.1e} / {max(s_grad.values()):.1e}) "
              f"-> {'OK' if good else 'FAIL'}")
    del model
    return ok


def check_compile(cfg: TransnormerConfig, device: str, dtype: torch.dtype, batch: int, seq: int) -> bool:
    """torch.compile as training uses it (tnl.train.compile) vs eager, on the same weights: in fp32 loss, logits and
    every gradient must agree closely; under autocast the compiled run's error against the fp32 eager run may be
    at most 1.5x the eager run's own (plus a small floor), per logits and per parameter gradient."""
    from tnl.train.compile import compile_for_training

    torch.manual_seed(0)
    model = TransnormerForCausalLM(cfg).to(device=device, dtype=torch.float32).train()
    compiled = compile_for_training(model)
    kw = dict(input_ids=torch.randint(0, cfg.vocab_size, (batch, seq), device=device))

    ref = _run(model, None, kw, None)
    loss_e, logit_e, grad_e = _errors(_run(model, None, kw, None, fn=compiled), ref)
    worst = max(grad_e, key=grad_e.get)
    ok = loss_e < 1e-5 and logit_e < 1e-4 and grad_e[worst] < 1e-3
    print(f"[compile] fp32 compiled vs eager (B={batch}, T={seq}, {cfg.decoder_layers} layers): loss rel "
          f"{loss_e:.1e}, logits rel {logit_e:.1e}, worst grad rel {grad_e[worst]:.1e} ({worst}) -> "
          f"{'OK' if ok else 'FAIL'}")
    low = dtype if dtype != torch.float32 else None
    if low is not None:
        _, c_logit, c_grad = _errors(_run(model, None, kw, low, fn=compiled), ref)
        _, e_logit, e_grad = _errors(_run(model, None, kw, low), ref)
        ratio = {n: (c_grad[n] + 1e-3) / (e_grad[n] + 1e-3) for n in e_grad}
        worst = max(ratio, key=ratio.get)
        good = (c_logit + 1e-3) <= 1.5 * (e_logit + 1e-3) and ratio[worst] <= 1.5
        ok &= good
        lo = str(low).replace("torch.", "")
        print(f"[compile] {lo} autocast vs fp32 eager: logits rel compiled {c_logit:.1e} / eager {e_logit:.1e}; "
              f"worst grad {worst}: compiled {c_grad[worst]:.1e} / eager {e_grad[worst]:.1e} -> "
              f"{'OK' if good else 'FAIL'}")
    return ok


@torch.no_grad()
def check_flat_memory(cfg: TransnormerConfig, device: str, dtype: torch.dtype, prompt: int, steps: int) -> bool:
    torch.manual_seed(0)
    model = TransnormerForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), device=device)
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    tok = out.logits[:, -1:].argmax(-1)
    cuda = device.startswith("cuda")
    mem, cache_bytes = [], []
    for _ in range(steps):
        out = model(tok, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        if cuda:
            torch.cuda.synchronize()
            mem.append(torch.cuda.memory_allocated())
        cache_bytes.append(cache.memory_bytes())
    growth = (max(mem[1:]) - min(mem[1:])) if cuda else 0  # step 0 may warm caches
    ok = len(set(cache_bytes)) == 1 and growth < 4 * 2**20
    print(f"[memory] prompt {prompt} + {steps} decode steps: cache {cache_bytes[0] / 2**20:.2f} MiB constant="
          f"{len(set(cache_bytes)) == 1}, allocated drift {growth / 2**20:.2f} MiB -> {'OK' if ok else 'FAIL'}")
    del model, cache
    return ok


class GraphedTnlDecoder:
    """One TNL decode step captured in a CUDA graph: static token / position buffers, in-place cache states."""

    def __init__(self, model: TransnormerForCausalLM, cache, batch: int, device: str) -> None:
        self.model, self.cache = model, cache
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        cache.make_static()
        saved = [layer.state.clone() for layer in cache.layers]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (allocator, kernels) outside the graph
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()
        for layer, s in zip(cache.layers, saved):  # undo the warm-up / capture updates
            layer.state.copy_(s)

    def _step(self) -> torch.Tensor:
        return self.model(input_ids=self.tok, position_ids=self.pos, past_key_values=self.cache, use_cache=True).logits

    def __call__(self, tok: torch.Tensor, pos: int) -> torch.Tensor:
        self.tok.copy_(tok)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.logits


def _time_decode(step, tok: torch.Tensor, n: int) -> float:
    for _ in range(3):  # warm-up steps are not timed
        tok = step(tok).argmax(-1)[:, -1:]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        tok = step(tok).argmax(-1)[:, -1:]
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _tnl_eager(model: TransnormerForCausalLM, ids: torch.Tensor, steps: int) -> float:
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    return _time_decode(lambda t: model(t, past_key_values=cache, use_cache=True).logits, out.logits.argmax(-1), steps)


def _tnl_graphed(model: TransnormerForCausalLM, ids: torch.Tensor, steps: int, device: str) -> float:
    out = model(ids, use_cache=True, logits_to_keep=1)
    graphed = GraphedTnlDecoder(model, out.past_key_values, ids.shape[0], device)
    pos = [ids.shape[1]]

    def step(t: torch.Tensor) -> torch.Tensor:
        logits = graphed(t, pos[0])
        pos[0] += 1
        return logits

    return _time_decode(step, out.logits.argmax(-1), steps)


def _llama_eager(model, ids: torch.Tensor, steps: int) -> float:
    out = model(ids, use_cache=True, logits_to_keep=1)
    kv = out.past_key_values
    return _time_decode(lambda t: model(t, past_key_values=kv, use_cache=True).logits, out.logits.argmax(-1), steps)


@torch.no_grad()
def check_speed(cfg: TransnormerConfig, device: str, dtype: torch.dtype, context: int, steps: int,
                batches: list[int]) -> dict[int, float]:
    """Prints a row per batch size; returns {batch: best TNL tokens/s / Llama tokens/s} (inf where Llama's KV
    cache does not fit)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.decoder_embed_dim, intermediate_size=cfg.glu_dim,
        num_hidden_layers=cfg.decoder_layers, num_attention_heads=cfg.decoder_attention_heads,
        num_key_value_heads=cfg.decoder_attention_heads, max_position_embeddings=context + steps + 16,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    tnl = TransnormerForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    llama = LlamaForCausalLM(llama_cfg).to(device=device, dtype=dtype).eval()
    n_tnl = sum(p.numel() for p in tnl.parameters())
    n_llama = sum(p.numel() for p in llama.parameters())
    print(f"[speed] TNL {n_tnl / 1e6:.1f}M vs Llama {n_llama / 1e6:.1f}M parameters, context {context}, "
          f"{steps} timed decode steps, bf16")
    ratios = {}
    for batch in batches:
        ids = torch.randint(0, cfg.vocab_size, (batch, context), device=device)
        row = {
            "tnl eager": _tnl_eager(tnl, ids, steps),
            "tnl graph": _tnl_graphed(tnl, ids, steps, device),
        }
        try:
            row["llama sdpa"] = _llama_eager(llama, ids, steps)
        except torch.OutOfMemoryError:
            row["llama sdpa"] = float("nan")
            print(f"[speed] B={batch}: Llama KV cache at {context} tokens does not fit")
        torch.cuda.empty_cache()
        tps = {k: batch * steps / v for k, v in row.items()}
        best = max(tps["tnl eager"], tps["tnl graph"])
        ratio = best / tps["llama sdpa"] if tps["llama sdpa"] == tps["llama sdpa"] else float("inf")
        print(f"[speed] B={batch:<3} " + "  ".join(f"{k}: {v:,.0f} tok/s" for k, v in tps.items())
              + f"  -> TNL/Llama {ratio:.1f}x ({'PASS' if ratio >= 5 else 'MISS'} >= 5x)")
        ratios[batch] = ratio
    return ratios
