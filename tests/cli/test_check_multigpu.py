"""tools/check_multigpu: its comparisons on synthetic run folders (deviations, tokens/s, final evaluation, export
against a sharded checkpoint), its refusals, and one CPU run of the whole check (1 process against DDP over gloo,
with a kill -9 and resume)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.corpus import write_corpus
from tools import check_multigpu as cm
from tools import multigpu_report as mr

ROOT = Path(__file__).resolve().parents[2]


def _write_metrics(path: Path, losses: dict[int, float | None], extra_rows: bool = True) -> Path:
    """metrics.jsonl as training writes it: a setup row, one row per step, validation, summary and final-eval rows
    (these carry `loss` too and must be ignored)."""
    rows = [{"step": 0, "split": "setup", "strategy": "DDP", "world_size": 2, "device": "cuda"}] if extra_rows else []
    for step, loss in losses.items():
        rows.append({"step": step, "loss": loss, "lr": 1e-3, "tokens_per_s": 1000.0 + step})
        if extra_rows and step % 5 == 0:
            rows.append({"step": step, "split": "validation", "loss": 99.0, "val_loss": 99.0})
    if extra_rows:
        last = max(losses)
        rows += [{"step": last, "split": "summary", "best_step": None, "evaluated_step": last},
                 {"step": last, "split": "validation", "loss": 7.0, "word_perplexity": 1234.5}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_deviation_is_the_largest_relative_error_and_names_missing_or_extra_steps(tmp_path):
    rng = random.Random(1)
    ref = {s: rng.uniform(2.0, 9.0) for s in range(1, 21)}
    eps = {s: rng.uniform(-1e-3, 1e-3) for s in ref}
    eps[13] = -4e-2  # the worst step, beyond the bf16 tolerance
    got = {s: ref[s] * (1 + eps[s]) for s in ref}
    a = _write_metrics(tmp_path / "a" / "metrics.jsonl", ref)
    b = _write_metrics(tmp_path / "b" / "metrics.jsonl", got)
    dev = mr.metrics_deviation(a, b)
    assert dev.worst_step == 13 and dev.max_rel == pytest.approx(4e-2, rel=1e-9)
    assert not dev.bit_exact and not dev.ok(2e-2) and dev.ok(5e-2)

    eps[13] = 5e-4
    small = mr.loss_deviation(ref, {s: ref[s] * (1 + eps[s]) for s in ref})
    assert small.ok(2e-2) and small.max_rel == pytest.approx(max(abs(e) for e in eps.values()), rel=1e-9)

    same = mr.metrics_deviation(a, _write_metrics(tmp_path / "c" / "metrics.jsonl", dict(ref)))
    assert same.bit_exact and same.max_rel == 0.0 and same.describe() == "0 (bit for bit)"

    broken = dict(ref)
    broken[4] = None  # a skipped (non-finite) step is logged as null
    del broken[20]
    broken[21] = 3.0
    dev = mr.loss_deviation(ref, broken)
    assert dev.missing == [4, 20] and dev.extra == [21] and not dev.ok(1.0) and not dev.bit_exact
    assert not mr.loss_deviation({}, {}).ok(1.0)  # no steps at all is no agreement
    assert mr.loss_deviation({1: 2.0}, {1: math.nan}).missing == [1]


def test_tokens_per_s_per_gpu_is_the_median_after_the_skipped_steps_over_the_processes():
    rng = random.Random(2)
    rows = [{"step": 0, "split": "setup", "world_size": 2}]
    values = {}
    for step in range(1, 31):
        values[step] = rng.uniform(1e4, 1e5) if step > 3 else 10.0  # the compiled first steps are slow
        rows.append({"step": step, "loss": 3.0, "tokens_per_s": values[step]})
        rows.append({"step": step, "split": "validation", "tokens_per_s": 1e12})  # not a training row
    rows.append({"step": 31, "loss": None, "tokens_per_s": None})
    kept = sorted(values[s] for s in range(11, 31))  # 20 values: the median is the mean of the middle two
    assert mr.tokens_per_s_per_gpu(rows, skip=10, world=2) == pytest.approx((kept[9] + kept[10]) / 2 / 2)
    assert mr.tokens_per_s_per_gpu(rows, skip=40, world=2) is None
    assert mr.setup_of(rows) == (None, 2)


def test_final_evaluation_needs_the_json_and_the_same_metrics_row(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run / "metrics.jsonl", {1: 3.0, 2: 2.5})
    assert mr.final_eval_problem(run) == (None, "no eval_validation.json")
    (run / "eval_validation.json").write_text(json.dumps({"word_perplexity": 1234.5}))
    assert mr.final_eval_problem(run) == (1234.5, None)
    (run / "eval_validation.json").write_text(json.dumps({"word_perplexity": 1000.0}))
    assert "metrics.jsonl says word_perplexity 1234.5" in mr.final_eval_problem(run)[1]
    _write_metrics(run / "metrics.jsonl", {1: 3.0, 2: 2.5}, extra_rows=False)
    assert mr.final_eval_problem(run)[1] == "no metrics.jsonl row with word_perplexity"


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(32, 8, generator=g)
    return {"model.embed_tokens.weight": embed, "lm_head.weight": embed,  # tied: one tensor, two names
            "model.layers.0.proj.weight": torch.randn(8, 8, generator=g),
            "model.norm.weight": torch.rand(8, generator=g)}


def _sharded_checkpoint(run: Path, sd: dict[str, torch.Tensor], step: int) -> Path:
    """checkpoints/step_N as FSDP's SHARDED_STATE_DICT saves it: {"model": state dict} in pytorch_model_fsdp_0/
    (torch.distributed.checkpoint), names as the compiled model has them."""
    import torch.distributed.checkpoint as dcp

    folder = run / "checkpoints" / f"step_{step}"
    dcp.save({"model": {f"_orig_mod.{k}": v.clone() for k, v in sd.items()}},
             checkpoint_id=str(folder / "pytorch_model_fsdp_0"), no_dist=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    return folder


def _export(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_export_against_a_sharded_checkpoint_is_equal_bit_for_bit_or_names_the_difference(tmp_path):
    sd = _state(0)
    run = tmp_path / "run"
    ckpt = _sharded_checkpoint(run, sd, 20)
    _write_metrics(run / "metrics.jsonl", {s: 3.0 for s in range(1, 21)})
    assert mr.evaluated_checkpoint(run) == ckpt
    assert mr.export_mismatch(_export(tmp_path / "same", sd), ckpt) is None

    off = {k: v.clone() for k, v in sd.items()}
    off["model.norm.weight"][3] = torch.nextafter(off["model.norm.weight"][3], torch.tensor(2.0))  # one ulp
    assert mr.export_mismatch(_export(tmp_path / "ulp", off), ckpt).startswith("model.norm.weight differs")

    half = {k: v.to(torch.bfloat16) if "proj" in k else v for k, v in sd.items()}
    assert "torch.bfloat16" in mr.export_mismatch(_export(tmp_path / "half", half), ckpt)

    renamed = {("model.norm.scale" if k == "model.norm.weight" else k): v for k, v in off.items()}
    assert "only" in mr.export_mismatch(_export(tmp_path / "renamed", renamed), ckpt)
    assert mr.export_mismatch(tmp_path / "nothing", ckpt).startswith("no weights")


def test_report_marks_failures_and_titles_its_columns():
    report = mr.Report(mr.column_titles(["single", "ddp", "fsdp"], 2, cpu=False))
    assert list(report.columns.values()) == ["1 GPU", "DDP (2 GPUs)", "FSDP (2 GPUs)"]
    report.add("loss", "single", "reference")
    report.add("loss", "ddp", "1.0e-03 (step 3)", True)
    report.add("loss", "fsdp", "5.0e-02 (step 7)", False)
    table = report.markdown().splitlines()
    assert table[0] == "| check | 1 GPU | DDP (2 GPUs) | FSDP (2 GPUs) |"
    assert table[2] == "| loss | reference | 1.0e-03 (step 3) ✓ | 5.0e-02 (step 7) ✗ |"
    assert report.failed == ["loss (FSDP (2 GPUs)): 5.0e-02 (step 7)"]
    assert list(mr.column_titles(["ddp"], 1, cpu=False).values()) == ["DDP (1 GPU)"]
    assert list(mr.column_titles(["single", "ddp"], 2, cpu=True).values()) == ["1 CPU process",
                                                                               "DDP (2 CPU processes)"]


def test_an_existing_output_folder_and_bad_arguments_are_refused_with_one_line(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("a user's file")
    for args, message in [(["--cpu", "--out", str(out)], "exists; pass a new --out"),
                          (["--strategies", "ddp,zero", "--out", str(tmp_path / "new")], "choose from"),
                          (["--nproc", "0", "--out", str(tmp_path / "new")], "--nproc 0"),
                          (["--cpu", "train.max_steps", "--out", str(tmp_path / "new")], "key=value"),
                          (["--cpu", "--scaling-reference", str(tmp_path), "--out", str(tmp_path / "new")],
                           "no metrics.jsonl"),
                          (["--cpu", "--strategies", "fsdp", "--out", str(tmp_path / "new")], "GPUs only")]:
        assert cm.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert (out / "keep.txt").read_text() == "a user's file" and len(list(out.iterdir())) == 1
    if not torch.cuda.is_available():
        assert cm.main(["--nproc", "2", "--out", str(tmp_path / "new")]) == 2
        err = capsys.readouterr().err
        assert "needs 2 CUDA GPUs" in err and "--nproc 1" in err and "--cpu" in err
        assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_cpu_check_runs_one_process_against_ddp_kills_and_resumes_and_exits_zero(tmp_path):
    """The whole check over gloo on a tiny model: the killed run's torchrun workers (each in its own session) must
    all die, or the relaunch would find the run folder locked and its checkpoints moving."""
    import psutil

    corpus = write_corpus(tmp_path / "corpus", 60, {"train": 60, "validation": 8}, 120)
    out = tmp_path / "check"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.check_multigpu", "--cpu", "--out", str(out), "model=tiny", "data=text",
         f"data.path={corpus}", "data.files.train=[train.jsonl]", "data.files.validation=[validation.jsonl]",
         f"data.cache_dir={tmp_path / 'cache'}", "tokenizer.vocab_size=300", "train.seq_len=32",
         "train.batch_size=4", "train.mixed_precision=no", "train.num_workers=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "FSDP skipped" in proc.stdout
    table = (out / "summary.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["check"] == "| check | 1 CPU process | DDP (2 CPU processes) |"
    assert "DDP, 2 ✓" in rows["setup row (strategy, world size)"]
    resume = rows["resume after kill -9: max rel. deviation vs unbroken run (tol 0.02)"]
    assert "killed at step_" in resume and "(bit for bit) ✓" in resume  # float32 on CPU: exact
    assert "✗" not in table
    assert (out / "ddp_killed" / "export" / "model.safetensors").is_file()
    log = (out / "logs" / "ddp_resumed.log").read_text()
    assert "resumed from" in log and "step_20" not in log.split("resumed from")[1].splitlines()[0]
    left = [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]


def test_a_run_that_fails_fails_the_check_and_its_log_is_kept(tmp_path, capsys):
    out = tmp_path / "check"
    assert cm.main(["--cpu", "--strategies", "single", "--out", str(out), "train.max_stpes=3"]) == 1
    printed = capsys.readouterr().out
    assert "| run finished | failed, see logs/single.log ✗ |" in (out / "summary.md").read_text()
    assert "FAILED:" in printed and "max_stpes" in (out / "logs" / "single.log").read_text()
