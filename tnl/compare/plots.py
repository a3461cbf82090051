"""The report's two small PNGs (matplotlib, Agg): validation curves of each arm at its best learning rate, and the
test word perplexity of every arm."""

from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_curves(curves: dict[str, list[tuple[int, float]]], main: set[str], path: Path, title: str) -> Path | None:
    """Validation loss against step, one line per arm (`curves`: label -> [(step, loss)]); main arms drawn bold."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        steps, losses = zip(*curve)
        bold = label in main
        ax.plot(steps, losses, "o-" if bold else "-", lw=2 if bold else 1, ms=3, alpha=1 if bold else 0.7,
                label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_bars(values: dict[str, tuple[float, float]], path: Path, title: str,
              reference: float | None = None) -> Path | None:
    """Test word perplexity per arm (`values`: label -> (mean, std)), with the baseline's value as a line."""
    values = {k: v for k, v in values.items() if math.isfinite(v[0])}
    if not values:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(values) + 1.2))
    labels = list(values)
    means = [values[k][0] for k in labels]
    stds = [values[k][1] for k in labels]
    ax.barh(range(len(labels)), means, xerr=stds, color="tab:blue", alpha=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    if reference is not None:
        ax.axvline(reference, color="k", ls="--", lw=1)
    for i, (m, sd) in enumerate(zip(means, stds)):  # inside the bar: clear of the error bar and the baseline line
        ax.text(0.01 * max(means), i, f"{m:.1f}" + (f" ± {sd:.1f}" if sd else ""), va="center", fontsize=7,
                color="white")
    ax.set_xlabel("WT-103 test word perplexity (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
