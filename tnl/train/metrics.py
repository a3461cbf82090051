"""Metrics: one JSON object per logged step in metrics.jsonl, mirrored to wandb when enabled."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tnl.atomic import write_text_atomic


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    return v


def _before(row: dict[str, Any], step: int) -> bool:
    return row["step"] <= step and row.get("split") != "summary" and "word_perplexity" not in row


class MetricsWriter:
    """Appends to `output_dir/metrics.jsonl` (rank 0 only). On resume, lines past the resumed step are
    dropped first, so the file reads as one unbroken run."""

    def __init__(self, output_dir: Path, enabled: bool, resume_step: int | None, wandb_cfg: Any = None,
                 wandb_run_id: str | None = None, config: dict | None = None):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = None
        self.wandb_run_id = wandb_run_id
        if not enabled:
            return
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            # the rows of the resumed steps; the end-of-run rows (summary, final evaluation) come again
            keep = [ln for ln in self.path.read_text().splitlines() if ln and _before(json.loads(ln), resume_step)]
            write_text_atomic(self.path, "".join(ln + "\n" for ln in keep))
        if wandb_cfg is not None and wandb_cfg.name == "wandb":
            import wandb

            self.wandb = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.run_name, mode=wandb_cfg.mode,
                dir=str(output_dir), id=wandb_run_id, resume="allow", config=config,
            )
            self.wandb_run_id = self.wandb.id

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
