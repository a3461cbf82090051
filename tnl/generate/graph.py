"""One TNL decode step captured in a CUDA graph.

A TNL model's decoding cache is one fixed-size state per layer, so after the prompt every step runs the same kernels
on the same addresses: the step is captured once and replayed, which removes the per-kernel launch cost that
dominates decoding at small batch (the step `check_model_gpu` times as "tnl graph").
"""

from __future__ import annotations

from typing import Any

import torch


def graph_applies(model: torch.nn.Module, cache: Any, device: torch.device) -> bool:
    """A pure TNL model (every layer a recurrent state) on a CUDA device: softmax and hybrid caches grow."""
    cfg = getattr(model, "config", None)
    layers = getattr(cache, "layers", None)
    return (device.type == "cuda" and getattr(cfg, "model_type", None) == "transnormer"
            and getattr(cfg, "token_mixer", None) == "tnl" and hasattr(cache, "make_static") and bool(layers)
            and all(getattr(layer, "state", None) is not None for layer in layers))


class GraphedDecodeStep:
    """`step(tokens [B], positions [B]) -> logits [B, V]` of a TNL model, replayed from one CUDA graph.

    The cache is switched to in-place state updates (`make_static`); positions come from `position_ids`, since the
    cache's Python-side token count is not replayed. The returned logits are the graph's output buffer: read them
    before the next call."""

    def __init__(self, model: torch.nn.Module, cache: Any, batch: int, device: torch.device) -> None:
        self.model, self.cache = model, cache
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        cache.make_static()
        saved = [layer.state.clone() for layer in cache.layers]
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm up (allocator, kernel selection) outside the graph
            for _ in range(3):
                self._step()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()
        for layer, s in zip(cache.layers, saved):  # undo the warm-up and capture updates
            layer.state.copy_(s)

    def _step(self) -> torch.Tensor:
        out = self.model(input_ids=self.tok, position_ids=self.pos, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.tok.copy_(tokens.view(-1, 1))
        self.pos.copy_(positions.view(-1, 1))
        self.graph.replay()
        return self.logits
