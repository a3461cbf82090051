"""`tnl export`: load a checkpoint (or any model folder tnl reads), write the export, optionally push it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tnl.atomic import check_target
from tnl.checkpoint import load_pretrained

from .errors import ExportError
from .hf import export_hf
from .hub import push_to_hub
from .official import export_official
from .target import check_not_source, replaceable_export

FORMATS = ("hf", "official")


def _eval_results(cfg: Any, run_dir: Path | None) -> list[dict[str, Any]]:
    paths = cfg.get("eval_results")
    if paths:
        files = [Path(p) for p in ([paths] if isinstance(paths, str) else list(paths))]
    else:
        files = sorted(run_dir.glob("eval_*.json")) if run_dir is not None else []
    latest: dict[tuple, dict[str, Any]] = {}
    for f in sorted(files, key=lambda p: p.stat().st_mtime if p.exists() else 0):
        try:
            r = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ExportError(f"cannot read eval results {f} ({type(err).__name__}); fix or drop it") from None
        # the training run and `tnl evaluate` may both have scored the same setting: keep the newest
        latest[(r.get("split"), r.get("mode"), r.get("max_length"), r.get("stride"))] = r
    return list(latest.values())


def run_export(cfg: Any, log=print) -> Path:
    if not cfg.get("checkpoint"):
        raise ExportError("checkpoint is required: tnl export checkpoint=RUN/checkpoints/step_N out_dir=DIR")
    if not cfg.get("out_dir"):
        raise ExportError("out_dir is required: the folder to write the export to")
    fmt = cfg.get("format", "hf")
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    # before loading, so a refusal is quick (export_hf / export_official check again before they write)
    check_not_source(cfg.out_dir, cfg.checkpoint)
    check_target(cfg.out_dir, bool(cfg.get("overwrite", False)), ExportError, replaceable_export)
    loaded = load_pretrained(cfg.checkpoint, verify=bool(cfg.get("verify", True)), name="checkpoint", log=log)
    log(f"loaded {loaded.kind} {loaded.path}")
    out_path = Path(cfg.out_dir).expanduser()
    replacing = out_path.is_dir() and any(out_path.iterdir())
    if fmt == "hf":
        if loaded.tokenizer is None:
            raise ExportError(f"{cfg.checkpoint} has no tokenizer; an HF export needs one")
        results = _eval_results(cfg, loaded.run_dir)
        out = export_hf(loaded.model, loaded.tokenizer, cfg.out_dir, train_config=loaded.train_config,
                        eval_results=results or None, overwrite=bool(cfg.get("overwrite", False)),
                        max_shard_size=str(cfg.get("max_shard_size", "2GB")))
    else:
        out = export_official(loaded.model, loaded.tokenizer, cfg.out_dir, overwrite=bool(cfg.get("overwrite", False)),
                              max_shard_size=str(cfg.get("max_shard_size", "2GB")), code_repo=cfg.get("code_repo"))
    log(f"exported ({fmt}) to {out}" + (" (replaced the previous export there)" if replacing else ""))
    if cfg.get("push_to_hub"):
        url = push_to_hub(out, cfg.push_to_hub, private=bool(cfg.get("private", False)))
        log(f"pushed to {url}")
    return out
