"""`tnl train`: the training loop, then the final evaluation and the Hugging Face export (train.final_eval,
train.export), all into the run folder.

    tnl train experiment=quickstart [key=value ...]      (configs/config.yaml and its groups)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tnl.atomic import write_text_atomic
from tnl.train import FinishedRun, register_schema, train

from . import hydra_entry, run_or_exit


def final_evaluation(run: FinishedRun) -> None:
    """Document-level perplexity of the validation split (windows of train.seq_len) -> eval_validation.json,
    and a row of metrics.jsonl. The weights are the best checkpoint's when the run has one (train.keep_best)."""
    from tnl.data import load_documents
    from tnl.eval import evaluate_documents

    tc = run.cfg.train
    docs = load_documents(run.cfg.data, "validation", detokenized=False)["text"]
    run.log(f"evaluating perplexity on {len(docs)} validation documents (window {tc.seq_len})")
    scores = evaluate_documents(run.model, run.tokenizer, docs, mode="window", max_length=tc.seq_len,
                                batch_size=tc.batch_size, device=run.device, progress=tc.progress)
    scores["split"] = "validation"
    path = run.output_dir / "eval_validation.json"
    write_text_atomic(path, json.dumps(scores, indent=1))
    # at the last step; `evaluated_step` names the weights scored (the best checkpoint's step, when one is used)
    run.log_metrics({"step": run.step, "split": "validation", "loss": math.log(scores["token_perplexity"]),
                     "evaluated_step": run.best_step or run.step, "best_step": run.result.get("best_step"),
                     "best_val_loss": run.result.get("best_val_loss"),
                     **{k: v for k, v in scores.items() if k != "split"}})
    run.result["eval"] = scores
    run.result["eval_file"] = str(path)


def export_run(run: FinishedRun) -> None:
    """The self-contained Hugging Face folder RUN/export, with the run's config and evaluation in its card."""
    from tnl.export import export_hf

    path = export_hf(run.model, run.tokenizer, run.output_dir / "export",
                     train_config=OmegaConf.to_container(run.cfg, resolve=True), eval_results=run.result.get("eval"),
                     overwrite=True)
    run.result["export"] = str(path)


def after_training(run: FinishedRun) -> None:
    if run.cfg.train.final_eval:
        final_evaluation(run)
    if run.cfg.train.export:
        export_run(run)


def run_training(cfg: DictConfig, on_ready=None) -> dict[str, Any]:
    """Train, evaluate, export: what `tnl train` does, without Hydra."""
    return train(cfg, after=after_training, on_ready=on_ready)


def _save_hydra_files(task_cfg: DictConfig, out: Path) -> None:
    """RUN/.hydra as Hydra writes it (config, hydra, overrides). Hydra would write it before the task starts;
    here it comes once the run folder is locked and a resume has loaded, so a refused run changes nothing."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None:  # the user asked Hydra for its own output_subdir: Hydra wrote it
        return
    folder = out / ".hydra"
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(task_cfg))
    write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


def _task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    with open_dict(cfg):  # in a -m sweep each job gets its own folder (sweep dir / job number)
        cfg.output_dir = HydraConfig.get().runtime.output_dir
    result = run_or_exit(run_training, cfg, on_ready=lambda out: _save_hydra_files(cfg, out))
    if not result.get("main_process", True):  # one summary per run, not one per process
        return
    print(f"\nrun folder:  {result['output_dir']}")
    print(f"checkpoint:  {result['checkpoint']}")
    if result.get("best_step") is not None:
        where = result.get("best_checkpoint", result["checkpoint"])
        print(f"best:        step {result['best_step']}, validation loss {result['best_val_loss']:.4f}  ({where})"
              + ("; stopped early" if result.get("early_stopped") else ""))
    if "eval" in result:
        ev = result["eval"]
        print(f"validation:  token ppl {ev['token_perplexity']:.2f}, word ppl {ev['word_perplexity']:.2f}, "
              f"bits/byte {ev['bits_per_byte']:.4f}  ({result['eval_file']})")
    for plot in result.get("plots", []):
        print(f"plot:        {plot}")
    if "export" in result:
        print(f"HF export:   {result['export']}")


def main() -> None:
    register_schema()
    # RUN/.hydra is written by _save_hydra_files once the run may start, not by Hydra before the task
    if not any(arg.startswith(("hydra.output_subdir=", "++hydra.output_subdir=")) for arg in sys.argv[1:]):
        sys.argv.append("hydra.output_subdir=null")
    hydra_entry(_task, "config")
