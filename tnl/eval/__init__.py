"""Evaluation: document-level perplexity as papers report it (lm-evaluation-harness's rolling log-likelihood)."""

from .perplexity import (
    MODES,
    EvalError,
    count_bytes,
    count_words,
    evaluate_documents,
    perplexity_metrics,
    prefix_token_id,
    score_stream,
    score_windows,
    tokenize_documents,
)
from .run import fingerprint_documents, fingerprint_model, format_table, run_evaluation
from .windows import Window, rolling_windows, window_pairs

__all__ = [
    "MODES",
    "EvalError",
    "Window",
    "count_bytes",
    "count_words",
    "evaluate_documents",
    "fingerprint_documents",
    "fingerprint_model",
    "format_table",
    "perplexity_metrics",
    "prefix_token_id",
    "rolling_windows",
    "run_evaluation",
    "score_stream",
    "score_windows",
    "tokenize_documents",
    "window_pairs",
]
