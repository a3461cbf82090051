"""Loss and learning-rate curves from metrics.jsonl, drawn with matplotlib into output_dir/plots/."""

from __future__ import annotations

from pathlib import Path

from .metrics import read_metrics


def draw_plots(output_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(output_dir / "metrics.jsonl")
    train = [r for r in rows if "split" not in r and r.get("loss") is not None]
    evals = [r for r in rows if r.get("split") == "validation" and r.get("loss") is not None]
    finals = [r for r in evals if "word_perplexity" in r]  # the document-level evaluation at the end
    evals = [r for r in evals if "word_perplexity" not in r]
    out = output_dir / "plots"
    out.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if evals:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation loss (windows)")
    if finals:
        ax.plot([r["step"] for r in finals], [r["loss"] for r in finals], "*", ms=12,
                label="validation, whole documents (final eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    loss_png = out / "loss.png"
    fig.savefig(loss_png, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    lr_png = out / "lr.png"
    fig.savefig(lr_png, dpi=120)
    plt.close(fig)
    return [loss_png, lr_png]
