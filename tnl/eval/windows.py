"""Token windows for document log-likelihood, in lm-evaluation-harness's rolling layout.

A document of N tokens t_0..t_{N-1} is scored as the sequence x = [prefix] + t (N + 1 ids): the model reads
x[start:end] and its output at input position i predicts x[i + 1]. Every token is predicted exactly once.

`rolling_windows(n, max_length)` reproduces lm-eval's `get_rolling_token_windows(..., context_len=1)` followed by
`make_disjoint_window`: the first window reads [prefix] + t[:L-1] and predicts t[:L]; each later window predicts the
next L tokens from the L inputs just before them (one token of overlap); the last, partial window is pulled back so
that it still reads L inputs and scores only its new tokens. With `stride < max_length` ("sliding") every later
window advances by `stride` tokens, so each scored token sees at least `max_length - stride` tokens of context.
"""

from __future__ import annotations

from typing import NamedTuple


class Window(NamedTuple):
    """Read x[start:end]; score the last `num_scored` outputs (they predict x[end-num_scored+1 : end+1])."""

    start: int
    end: int
    num_scored: int


def rolling_windows(num_tokens: int, max_length: int, stride: int | None = None) -> list[Window]:
    """Windows covering every one of `num_tokens` targets once (see the module docstring)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    if num_tokens <= 0:
        return []
    first = min(max_length, num_tokens)
    windows = [Window(0, first, first)]
    predicted = first
    while predicted < num_tokens:
        end = min(predicted + stride, num_tokens)
        windows.append(Window(max(0, end - max_length), end, end - predicted))
        predicted = end
    return windows


def window_pairs(tokens: list[int], prefix_token: int, max_length: int,
                 stride: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(input ids, predicted ids) per window: the same pairs lm-eval's rolling loglikelihood feeds its model."""
    x = [prefix_token, *tokens]
    return [(x[w.start : w.end], x[w.end - w.num_scored + 1 : w.end + 1])
            for w in rolling_windows(len(tokens), max_length, stride)]
