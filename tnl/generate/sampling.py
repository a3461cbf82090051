"""Sampling settings of `tnl generate`, checked once, and the transformers logits processors they stand for.

The processors are transformers' own, in the order `generate()` applies them (penalties, then temperature, top-k,
top-p), so tnl and an exported model's `generate()` draw from the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from tnl.errors import UserError


class GenerateError(UserError):
    """Bad generation input; the message is one line naming the problem and the fix."""


@dataclass
class SamplingSettings:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None  # None or 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    stop_strings: list[str] = field(default_factory=list)
    eos_token_id: int | None = None  # None: run all max_new_tokens (benchmarks)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check(self) -> SamplingSettings:
        """Raise GenerateError naming the first bad value; returns self."""
        def number(name: str, value: Any, integer: bool = False) -> None:
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
                kind = "an integer" if integer else "a number"
                raise GenerateError(f"{name} must be {kind}, got {value!r}")

        number("max_new_tokens", self.max_new_tokens, integer=True)
        if self.max_new_tokens < 1:
            raise GenerateError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        number("temperature", self.temperature)
        if self.temperature < 0:
            raise GenerateError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k is not None:
            number("top_k", self.top_k, integer=True)
            if self.top_k < 0:
                raise GenerateError(f"top_k must be >= 0 (0 or null: off), got {self.top_k}")
        number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise GenerateError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")
        number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise GenerateError(f"repetition_penalty must be > 0 (1: off), got {self.repetition_penalty}")
        number("num_return_sequences", self.num_return_sequences, integer=True)
        if self.num_return_sequences < 1:
            raise GenerateError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.num_return_sequences > 1 and self.greedy:
            raise GenerateError("num_return_sequences > 1 needs sampling: greedy decoding (temperature=0) returns the "
                                "same text each time; set temperature > 0")
        if not isinstance(self.stop_strings, (list, tuple)) or not all(
                isinstance(s, str) and s for s in self.stop_strings):
            raise GenerateError(f"stop_strings must be a list of non-empty strings, got {self.stop_strings!r}")
        return self


def logits_processors(s: SamplingSettings) -> Any:
    """transformers' LogitsProcessorList for `s` (empty for plain greedy decoding)."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if s.greedy:
        return procs
    if s.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(s.temperature))
    if s.top_k:
        procs.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1.0:
        procs.append(TopPLogitsWarper(s.top_p))
    return procs


def next_tokens(scores: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """[B] next tokens from processed fp32 scores [B, V]: argmax (greedy) or one draw from softmax (as generate())."""
    if s.greedy:
        return scores.argmax(-1)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
