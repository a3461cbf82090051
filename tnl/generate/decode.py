"""The decoding loop of `tnl generate` (and of benchmarks.bench_generate): one prefill over the prompts, then one
token per step through the model's cache.

A TNL model's cache is its recurrent state, so each step costs the same whatever the context and memory stays flat;
on a GPU that step is replayed from a CUDA graph (graph.py). Softmax, hybrid and any Hugging Face causal LM decode
through the same loop with their KV caches. Prompts of a batch are left-padded: pad tokens are masked out of the
cache and positions count real tokens only, so a prompt generates the same text alone or in a batch.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .graph import GraphedDecodeStep, graph_applies
from .sampling import SamplingSettings, logits_processors, next_tokens


@dataclass
class Generation:
    """Generated token ids per row (prompt i's j-th sequence is row i * num_return_sequences + j), cut before EOS
    and after the token that completed a stop string; texts cut before the stop string."""

    tokens: list[list[int]]
    texts: list[str] | None
    prompt_tokens: int  # real (unpadded) prompt tokens read by the prefill
    prefill_seconds: float
    decode_seconds: float
    graphed: bool

    @property
    def new_tokens(self) -> int:
        return sum(map(len, self.tokens))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forward_kwargs(model: torch.nn.Module) -> tuple[str, bool]:
    params = inspect.signature(model.forward).parameters
    # transformers 5 models take the cache as `cache`, earlier ones (and tnl's) as `past_key_values`
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _output_cache(out: Any) -> Any:
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def stop_index(text: str, stop_strings: Sequence[str]) -> int:
    """Where the earliest stop string starts in `text` (-1: none)."""
    found = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(found) if found else -1


def _stop_streamer(tokenizer: Any, stop_strings: Sequence[str]) -> Any:
    """transformers' TextStreamer that prints the completion up to (not including) the first stop string: text that
    could still become a stop string is held back until it cannot."""
    from transformers import TextStreamer

    class StopStreamer(TextStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
            self.pending, self.stopped = "", False
            self.hold = max((len(s) for s in stop_strings), default=1) - 1

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if self.stopped:
                return
            self.pending += text
            cut = stop_index(self.pending, stop_strings)
            if cut >= 0:
                self.pending, self.stopped, stream_end = self.pending[:cut], True, True
            keep = 0 if stream_end else min(self.hold, len(self.pending))
            out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
            super().on_finalized_text(out, stream_end=stream_end)

    return StopStreamer()


@torch.no_grad()
def generate_ids(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    *,
    pad_token_id: int,
    tokenizer: Any = None,
    stream: bool = False,
    use_graph: bool = True,
    prefill_chunk: int = 0,
) -> Generation:
    """Generate for each prompt (token ids) `settings.num_return_sequences` continuations.

    `tokenizer`: needed for stop strings, texts and `stream` (prints the one row token by token, transformers'
    TextStreamer). `use_graph`: replay the TNL decode step from a CUDA graph where it applies. `prefill_chunk` > 0:
    a TNL model reads the prompts that many tokens at a time through its state, so the prefill's memory is bounded
    too (other models read them at once)."""
    device = _model_device(model)
    n = settings.num_return_sequences
    rows = [list(p) for p in prompts for _ in range(n)]
    width, steps = max(map(len, rows)), settings.max_new_tokens
    ids = torch.full((len(rows), width + steps), pad_token_id, dtype=torch.long)
    mask = torch.ones(len(rows), width + steps, dtype=torch.bool)
    for i, r in enumerate(rows):  # left padding
        ids[i, width - len(r): width] = torch.tensor(r, dtype=torch.long)
        mask[i, : width - len(r)] = False
    padded = not bool(mask.all())
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask[:, :width].long().cumsum(-1) - 1).clamp(min=0)
    cache_arg, keep_arg = _forward_kwargs(model)
    procs = logits_processors(settings)
    streamer = _stop_streamer(tokenizer, settings.stop_strings) if stream and len(rows) == 1 else None
    host_checks = settings.eos_token_id is not None or bool(settings.stop_strings) or streamer is not None

    _sync(device)
    start = time.perf_counter()
    cfg = getattr(model, "config", None)
    recurrent = getattr(cfg, "model_type", None) == "transnormer" and getattr(cfg, "token_mixer", None) == "tnl"
    chunk = prefill_chunk if prefill_chunk > 0 and recurrent else width
    cache = None
    for c0 in range(0, width, chunk):
        c1 = min(width, c0 + chunk)
        kwargs: dict[str, Any] = {"input_ids": ids[:, c0:c1], "position_ids": positions[:, c0:c1], "use_cache": True,
                                  "attention_mask": mask[:, :c1] if padded else None}
        if cache is not None:
            kwargs[cache_arg] = cache
        if keep_arg:
            kwargs["logits_to_keep"] = 1
        out = model(**kwargs)
        logits, cache = out.logits[:, -1], _output_cache(out)
    _sync(device)
    prefill_seconds = time.perf_counter() - start

    graphed = None
    if use_graph and graph_applies(model, cache, device):  # pads are already masked out of the states
        graphed = GraphedDecodeStep(model, cache, len(rows), device)  # capture is not decode time
        _sync(device)
    start = time.perf_counter()
    finished = [False] * len(rows)
    lengths = [steps] * len(rows)
    texts: list[str | None] = [None] * len(rows)
    pad = torch.tensor(pad_token_id, device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    last = positions[:, -1]
    for i in range(steps):
        scores = procs(ids[:, : width + i], logits.float())
        tok = torch.where(done, pad, next_tokens(scores, settings))
        ids[:, width + i] = tok
        if host_checks:
            for r, t in enumerate(tok.tolist()):
                if finished[r]:
                    continue
                if t == settings.eos_token_id:
                    finished[r], lengths[r] = True, i
                    continue
                if streamer is not None:
                    streamer.put(torch.tensor([t]))
                if settings.stop_strings:
                    text = tokenizer.decode(ids[r, width: width + i + 1].tolist(), skip_special_tokens=True)
                    cut = stop_index(text, settings.stop_strings)
                    if cut >= 0:
                        finished[r], lengths[r], texts[r] = True, i + 1, text[:cut]
            done = torch.tensor(finished, device=device)
            if all(finished):
                break
        if i == steps - 1:
            break
        pos = last + 1 + i
        if graphed is not None:
            logits = graphed(tok, pos)
        else:
            kwargs = {"input_ids": tok[:, None], "position_ids": pos[:, None], cache_arg: cache, "use_cache": True,
                      "attention_mask": mask[:, : width + i + 1] if padded else None}
            out = model(**kwargs)
            logits, cache = out.logits[:, -1], _output_cache(out)
    _sync(device)
    decode_seconds = time.perf_counter() - start
    if streamer is not None:
        streamer.end()
    if graphed is not None:
        cache.make_static(False)
    tokens = [ids[r, width: width + lengths[r]].tolist() for r in range(len(rows))]
    out_texts = None
    if tokenizer is not None:
        out_texts = [t if t is not None else tokenizer.decode(tk, skip_special_tokens=True)
                     for t, tk in zip(texts, tokens)]
    return Generation(tokens, out_texts, sum(map(len, rows)), prefill_seconds, decode_seconds, graphed is not None)
