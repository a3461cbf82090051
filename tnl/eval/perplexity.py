"""Document-level perplexity the way papers report WikiText: lm-evaluation-harness's rolling log-likelihood.

Each ORIGINAL WikiText article is detokenized (lm-eval's wikitext detokenizer), tokenized without special tokens,
prefixed by the BOS token (EOS when there is none) and scored whole. Words and bytes are counted on the original
article, as lm-eval's wikitext task does, so word perplexity compares across tokenizers.

Modes:
- "window": non-overlapping windows of `max_length` predicted tokens (lm-eval's `loglikelihood_rolling`).
- "sliding": windows advance by `stride` < `max_length`; every token is scored once, with more context.
- "stream": each whole article runs through the model's recurrent state (`past_key_values`) in chunks of
  `max_length` tokens: unbounded context at constant memory, which linear attention allows. Models with a
  recurrent cache only (model_type "transnormer").
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tnl.errors import UserError

from .windows import rolling_windows

MODES = ("window", "sliding", "stream")
RECURRENT_MODEL_TYPES = ("transnormer",)


class EvalError(UserError):
    """Bad evaluation input; the message is one line naming the problem and the fix."""


def count_words(doc: str) -> int:
    """Words of an original WikiText article, counted as lm-eval's wikitext task counts them."""
    return len(re.split(r"\s+", doc))


def count_bytes(doc: str) -> int:
    return len(doc.encode("utf-8"))


def prefix_token_id(tokenizer: Any) -> int:
    """The token that conditions each document's first token: BOS, else EOS (lm-eval's `prefix_token_id`)."""
    for tid in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    raise EvalError("the tokenizer has neither a BOS nor an EOS token; one is needed as the first token's context")


def tokenize_documents(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (lm-eval encodes rolling requests that way)."""
    if not texts:
        return []
    out = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [list(map(int, ids)) for ids in out]


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _position_limit(model: torch.nn.Module) -> int | None:
    """Positions a softmax model can read at once (None: no limit, as for linear attention)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) in RECURRENT_MODEL_TYPES:
        return None
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes the cache: `cache` in transformers 5 models, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward_logits(model: torch.nn.Module, input_ids: torch.Tensor, cache: Any = None, use_cache: bool = False):
    # Right padding only: a causal model's outputs at real positions never depend on later (pad) positions,
    # so no attention mask is passed and any causal LM gives the same scores batched or not.
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": use_cache}
    if cache is not None:
        kwargs[_cache_argument(model)] = cache
    out = model(**kwargs)
    if not use_cache:
        return out.logits, None
    # transformers 5 names the field `cache` (`past_key_values` still works there, with a deprecation warning)
    cache = out.get("cache")
    return out.logits, (cache if cache is not None else out.get("past_key_values"))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the GPU: a plain copy from pageable memory synchronises the
    stream, so the host could not queue the next batch while the GPU runs this one."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but scoring must not need it
        return None
    return tqdm(total=total, desc=desc, unit="tok", disable=not enabled, leave=False)


@torch.inference_mode()
def score_windows(
    model: torch.nn.Module,
    token_lists: Sequence[Sequence[int]],
    prefix_token: int,
    *,
    max_length: int,
    stride: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[float]:
    """Summed natural-log likelihood of each token list, scored in rolling windows (fp32 log-softmax)."""
    device = torch.device(device) if device is not None else _model_device(model)
    rows = []  # (doc index, window)
    for d, toks in enumerate(token_lists):
        rows.extend((d, w) for w in rolling_windows(len(toks), max_length, stride))
    # Longest windows first: batches hold windows of similar length, so little padding.
    rows.sort(key=lambda r: r[1].end - r[1].start, reverse=True)
    loglik = [0.0] * len(token_lists)
    xs = {d: torch.tensor([prefix_token, *token_lists[d]], dtype=torch.long) for d in {d for d, _ in rows}}
    bar = _progress(sum(w.num_scored for _, w in rows), "eval", progress)
    sums = []  # each batch's per-window NLL, left on the device: one transfer at the end, no wait per batch
    for b0 in range(0, len(rows), max(1, batch_size)):
        batch = rows[b0 : b0 + max(1, batch_size)]
        width = max(w.end - w.start for _, w in batch)
        ids = torch.full((len(batch), width), prefix_token, dtype=torch.long)
        targets = torch.zeros((len(batch), max(w.num_scored for _, w in batch)), dtype=torch.long)
        for i, (d, w) in enumerate(batch):
            ids[i, : w.end - w.start] = xs[d][w.start : w.end]
            targets[i, : w.num_scored] = xs[d][w.end - w.num_scored + 1 : w.end + 1]
        logits, _ = _forward_logits(model, _to_device(ids, device))
        targets = _to_device(targets, device)
        nll = []
        for i, (_, w) in enumerate(batch):
            length = w.end - w.start
            row = logits[i, length - w.num_scored : length].float()  # fp32 only for the scored slice
            nll.append(F.cross_entropy(row, targets[i, : w.num_scored], reduction="sum"))
        sums.append(torch.stack(nll).double())
        if bar is not None:
            bar.update(sum(w.num_scored for _, w in batch))
    if bar is not None:
        bar.close()
    values = torch.cat(sums).cpu().tolist() if sums else []
    for (d, _), v in zip(rows, values):
        loglik[d] -= v
    return loglik


@torch.inference_mode()
def score_stream(
    model: torch.nn.Module,
    token_lists: Sequence[Sequence[int]],
    prefix_token: int,
    *,
    chunk_size: int,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[float]:
    """Summed log-likelihood of each whole token list, fed in chunks through the model cache (no window)."""
    if chunk_size < 1:
        raise EvalError(f"eval.max_length (the stream chunk size) must be >= 1, got {chunk_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    order = sorted((d for d in range(len(token_lists)) if token_lists[d]), key=lambda d: -len(token_lists[d]))
    loglik = [0.0] * len(token_lists)
    bar = _progress(sum(len(t) for t in token_lists), "eval", progress)
    for b0 in range(0, len(order), max(1, batch_size)):
        docs = order[b0 : b0 + max(1, batch_size)]
        width = max(len(token_lists[d]) for d in docs)
        ids = torch.full((len(docs), width), prefix_token, dtype=torch.long)
        tgt = torch.full((len(docs), width), -100, dtype=torch.long)  # -100: pad, not scored
        for i, d in enumerate(docs):
            toks = torch.tensor(token_lists[d], dtype=torch.long)
            ids[i, 0] = prefix_token
            ids[i, 1 : len(toks)] = toks[:-1]
            tgt[i, : len(toks)] = toks
        scored = (tgt != -100).sum(dim=0).tolist()  # per position, counted on the host: no wait per chunk
        ids, tgt = _to_device(ids, device), _to_device(tgt, device)
        cache, total = None, torch.zeros(len(docs), dtype=torch.float64, device=device)
        for c0 in range(0, width, chunk_size):
            logits, cache = _forward_logits(model, ids[:, c0 : c0 + chunk_size], cache, use_cache=True)
            t = tgt[:, c0 : c0 + chunk_size]
            nll = F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), ignore_index=-100, reduction="none")
            total += nll.view(t.shape).double().sum(dim=1)
            if bar is not None:
                bar.update(sum(scored[c0 : c0 + chunk_size]))
        for d, v in zip(docs, total.cpu().tolist()):
            loglik[d] = -v
        del cache
    if bar is not None:
        bar.close()
    return loglik


def perplexity_metrics(loglik: float, num_tokens: int, num_words: int, num_bytes: int) -> dict[str, float]:
    """lm-eval's aggregates: exp(-LL / count) per unit, and bits per byte = -LL / (bytes * ln 2)."""
    def ppl(n: int) -> float:
        return math.exp(-loglik / n) if n > 0 else float("nan")

    return {
        "token_perplexity": ppl(num_tokens),
        "word_perplexity": ppl(num_words),
        "byte_perplexity": ppl(num_bytes),
        "bits_per_byte": -loglik / (num_bytes * math.log(2)) if num_bytes > 0 else float("nan"),
    }


def _check_args(model: torch.nn.Module, mode: str, max_length: int, stride: int | None) -> int | None:
    if mode not in MODES:
        raise EvalError(f"eval.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise EvalError(f"eval.max_length must be a positive integer, got {max_length!r}")
    if mode == "window":
        if stride not in (None, max_length):
            raise EvalError(f"mode=window scores non-overlapping windows; stride={stride} needs eval.mode=sliding")
        return None
    if mode == "sliding":
        stride = max_length // 2 if stride is None else stride
        if not isinstance(stride, int) or not 1 <= stride < max_length:
            raise EvalError(f"mode=sliding needs 1 <= eval.stride < eval.max_length={max_length}, got {stride!r}")
        return stride
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in RECURRENT_MODEL_TYPES:
        raise EvalError(f"mode=stream needs a model with a recurrent state (TransNormer); this one is "
                        f"{model_type!r}: use eval.mode=window or sliding")
    return None


def evaluate_documents(
    model: torch.nn.Module,
    tokenizer: Any,
    documents: list[str],
    *,
    mode: str = "window",
    max_length: int = 1024,
    stride: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Perplexities of `model` over ORIGINAL WikiText articles (see the module docstring).

    Returns token/word/byte perplexity, bits per byte, the counts behind them, the summed log-likelihood,
    `mode`, `max_length`, `stride` (sliding) and throughput. `device`: where to run (default: the model's).
    """
    from tnl.data import detokenize

    stride = _check_args(model, mode, max_length, stride)
    if not documents:
        raise EvalError("no documents to evaluate; check the data split")
    limit = _position_limit(model)
    if mode != "stream" and limit is not None and max_length > limit:
        raise EvalError(f"eval.max_length={max_length} exceeds the model's {limit} positions; lower eval.max_length")
    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    prefix = prefix_token_id(tokenizer)
    token_lists = tokenize_documents(tokenizer, [detokenize(doc) for doc in documents])
    start = time.perf_counter()
    try:
        if mode == "stream":
            per_doc = score_stream(model, token_lists, prefix, chunk_size=max_length, batch_size=batch_size,
                                   device=device, progress=progress)
        else:
            per_doc = score_windows(model, token_lists, prefix, max_length=max_length, stride=stride,
                                    batch_size=batch_size, device=device, progress=progress)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    loglik = math.fsum(per_doc)
    num_tokens = sum(len(t) for t in token_lists)
    num_words = sum(count_words(doc) for doc in documents)
    num_bytes = sum(count_bytes(doc) for doc in documents)
    return {
        **perplexity_metrics(loglik, num_tokens, num_words, num_bytes),
        "num_tokens": num_tokens,
        "num_words": num_words,
        "num_bytes": num_bytes,
        "num_documents": len(documents),
        "log_likelihood": loglik,
        "mode": mode,
        "max_length": max_length,
        "stride": stride,
        "seconds": seconds,
        "tokens_per_second": num_tokens / seconds if seconds > 0 else float("nan"),
    }
