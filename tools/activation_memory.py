"""Bytes of activations a training step keeps for backward, per token and per module, on any device.

    python -m tools.activation_memory                       # tnl_385m block on the CPU, bf16 autocast
    python -m tools.activation_memory --config tnl_1b --tokens 32768
    TRITON_INTERPRET=1 python -m tools.activation_memory --compile [--keep-pointwise]   # what torch.compile keeps

Counts what autograd saves (torch.autograd.graph.saved_tensors_hooks), each storage once, during one forward of
a model with `--layers` blocks of the named config under bf16 autocast, at two sequence lengths: the difference
is the per-token cost, which does not depend on the device. Prints it per module of one block and the predicted
total for `--tokens` tokens per step at the config's full depth (plus fp32 weights, gradients and AdamW state).

`--compile` counts what a torch.compile'd model keeps instead: the graph is partitioned by the same min-cut
partitioner as Inductor's (backend "aot_eager_decomp_partition", no code generation), set up as training does
(tnl.train.compile; `--keep-pointwise` is the stock partitioner). A compiled graph saves everything at once, so
the per-block cost is the difference between `--layers` and `--layers` + 1 blocks (no per-module rows). Off CUDA
this needs TRITON_INTERPRET=1: the attention is the Triton op, opaque to the partitioner as on the GPU.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch

from tnl.model import TransnormerConfig, TransnormerForCausalLM
from tnl.settings import triton_interpret

from .count_params import count_params
from .model_configs import load_config


def saved_bytes(model: torch.nn.Module, ids: torch.Tensor, device: str,
                run: torch.nn.Module | None = None) -> dict[str, int]:
    """Bytes of distinct storages saved for backward, keyed by the innermost module that saved them. `run`: a
    compiled `model` to step instead; its graph saves everything at once, so all bytes go under "(top)"."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    by_module: dict[str, int] = defaultdict(int)
    stack: list[str] = ["(top)"]
    names = {m: n for n, m in model.named_modules()} if run is None else {}
    def enter(module, args) -> None:
        stack.append(names[module])

    def leave(module, args, output) -> None:
        stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in seen and ptr not in params:
            seen.add(ptr)
            by_module[stack[-1]] += s.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                out = (model if run is None else run)(input_ids=ids, labels=ids)
        out.loss.backward()
    finally:
        for h in handles:
            h.remove()
    return dict(by_module)


def per_block_compiled(args: argparse.Namespace) -> float:
    """Saved bytes per token of one block of the compiled model (no LRPE, as on every layer but the first)."""
    from tnl.train.compile import configure_partitioner

    configure_partitioner(recompute_pointwise=not args.keep_pointwise)
    total = {}
    for layers in (args.layers, args.layers + 1):
        for t in args.T:
            torch._dynamo.reset()
            torch.manual_seed(0)
            cfg = load_config(args.config, decoder_layers=layers, vocab_size=4096, attn_backend="triton",
                              linear_use_lrpe_list=[0] * layers)
            model = TransnormerForCausalLM(cfg).to(args.device).train()
            compiled = torch.compile(model, backend="aot_eager_decomp_partition")
            ids = torch.randint(0, 4096, (1, t), device=args.device)
            total[layers, t] = sum(saved_bytes(model, ids, args.device, run=compiled).values())
    (t0, t1), l0 = args.T, args.layers
    return ((total[l0 + 1, t1] - total[l0, t1]) - (total[l0 + 1, t0] - total[l0, t0])) / (t1 - t0)


def save_like_the_kernel() -> None:
    """Off CUDA the torch backend keeps its blockwise intermediates for backward; the Triton op keeps only its
    inputs (q, k, v, decay, initial state) and recomputes. Recomputing the torch backend in backward
    (torch.utils.checkpoint) makes the CPU count match what the GPU keeps."""
    import functools

    from torch.utils.checkpoint import checkpoint

    import tnl.model.norm_linear_attention as mixer

    attn = mixer.lightning_attn

    @functools.wraps(attn)
    def recomputed(*args, **kwargs):
        return checkpoint(attn, *args, use_reentrant=False, **kwargs)

    mixer.lightning_attn = recomputed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tnl_385m")
    ap.add_argument("--layers", type=int, default=2, help="blocks actually built (the per-block cost is scaled)")
    ap.add_argument("--T", type=int, nargs=2, default=[512, 1024], help="two sequence lengths to difference")
    ap.add_argument("--tokens", type=int, default=32768, help="tokens per step for the predicted total")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="count what torch.compile's partitioned graph keeps")
    ap.add_argument("--keep-pointwise", action="store_true",
                    help="with --compile: the stock partitioner (train.compile_recompute_pointwise=false)")
    args = ap.parse_args()
    if args.keep_pointwise and not args.compile:
        ap.error("--keep-pointwise applies to --compile only")
    full = load_config(args.config)
    depth = full.decoder_layers
    on_cuda = args.device == "cuda" or args.device.startswith("cuda:")
    if args.compile:
        if not on_cuda and not triton_interpret():
            sys.exit("--compile off CUDA needs TRITON_INTERPRET=1 (the attention must be the Triton op)")
        per_block = per_block_compiled(args)
        how = "stock partitioner" if args.keep_pointwise else "pointwise results recomputed"
        print(f"{args.config}: bytes saved for backward per token, one block, torch.compile ({how})")
        print(f"| **one block, compiled** | **{per_block:,.0f}** |")
        report_total(per_block, depth, full, args.tokens)
        return
    if not on_cuda:
        save_like_the_kernel()
    torch.manual_seed(0)
    model = TransnormerForCausalLM(load_config(args.config, decoder_layers=args.layers, vocab_size=4096))
    model = model.to(args.device).train()
    runs = []
    for t in args.T:
        ids = torch.randint(0, 4096, (1, t), device=args.device)
        runs.append(saved_bytes(model, ids, args.device))
        model.zero_grad(set_to_none=True)
    dt = args.T[1] - args.T[0]
    per_token = {k: (runs[1].get(k, 0) - runs[0].get(k, 0)) / dt for k in set(runs[0]) | set(runs[1])}
    block = {k.split(".", 3)[-1]: v for k, v in per_token.items() if k.startswith("model.layers.1.")}
    print(f"{args.config}: bytes saved for backward per token, one block (layer 1), bf16 autocast, fp32 weights")
    print("| module | bytes/token |\n|---|---|")
    for k, v in sorted(block.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:,.0f} |")
    per_block = sum(block.values())
    print(f"| **one block** | **{per_block:,.0f}** |")
    report_total(per_block, depth, full, args.tokens)


def report_total(per_block: float, depth: int, full: TransnormerConfig, tokens: int) -> None:
    n_params, _ = count_params(full)  # on the meta device: no 400M-parameter init on the CPU
    acts = per_block * depth * tokens
    states = n_params * 16  # fp32 weights + grads + two AdamW moments
    print(f"\npredicted at {tokens:,} tokens per step, {depth} blocks: activations {acts / 2**30:.1f} GiB "
          f"+ weights/grads/AdamW {states / 2**30:.1f} GiB = {(acts + states) / 2**30:.1f} GiB "
          "(plus the embedding/loss chunk and allocator slack)")


if __name__ == "__main__":
    main()
