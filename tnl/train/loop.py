"""The training loop (Accelerate): read top to bottom, one step at a time.

setup (tokenizer, token caches, model, optimizer, schedule) -> resume -> for each step: micro-batches
with the loss normalised by the tokens of the whole global batch, clip, step, log, evaluate, checkpoint
-> final checkpoint -> the caller's `after` steps (`tnl train`: final evaluation and Hugging Face export) -> plots.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from tnl.atomic import write_text_atomic
from tnl.checkpoint import BEST, copy_checkpoint, save_checkpoint
from tnl.data import PackedWindows, ResumableSampler, collate, prepare_split, prepare_tokenizer, resolve_paths
from tnl.errors import UserError

from .best import BestTracker, final_model
from .compile import check_memory_budget, compile_for_training
from .config import check_model_fields
from .distributed import check_setup, describe_setup, log_setup, setup_line
from .flops import peak_flops, train_flops_per_token
from .init_from import freeze, load_init_weights, prepare_init
from .metrics import MetricsWriter
from .optim import build_optimizer
from .plots import draw_plots
from .resume import check_config, check_model, restore, resume_checkpoint, run_tokenizer
from .run_lock import RunLock, RunLockedError
from .schedule import lr_multiplier


class TrainError(UserError):
    """A failure the user can act on; printed as one line."""


def model_config(cfg: DictConfig, tokenizer: Any) -> Any:
    """TransnormerConfig from the `model` group, sized to the tokenizer's vocabulary (what model_config.json holds)."""
    from tnl.model import TransnormerConfig

    fields = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_fields(fields)
    need = len(tokenizer)
    given = fields.pop("vocab_size", None)
    if given is not None and given < need:
        raise TrainError(f"tokenizer has {need} tokens but model.vocab_size={given}; raise model.vocab_size "
                         "or use a smaller tokenizer")
    vocab = given or (need + 63) // 64 * 64  # a multiple of 64 keeps the LM head's matmul fast
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return TransnormerConfig(**fields, vocab_size=vocab, eos_token_id=eos, bos_token_id=bos, pad_token_id=pad)


def build_model(cfg: DictConfig, tokenizer: Any) -> torch.nn.Module:
    """TransnormerForCausalLM of `model_config`. `train.attn_backend` (unless "auto") sets the model config's
    attn_backend where the model group leaves it "auto": a choice of this run on this machine, so model_config.json
    (what a checkpoint is loaded with, elsewhere too) keeps the model group's value."""
    from tnl.model import TransnormerForCausalLM

    config = model_config(cfg, tokenizer)
    backend = OmegaConf.select(cfg, "train.attn_backend", default="auto")
    if backend != "auto" and config.attn_backend == "auto":
        config.attn_backend = backend
    return TransnormerForCausalLM(config)


class _StopFlag:
    """SIGTERM/SIGINT ask for a checkpoint at the end of the current step, then a clean exit (143 / 130).
    Schedulers (SLURM, Kubernetes, `timeout`) and Ctrl-C signal the whole process group: the DataLoader workers
    ignore both signals (`_ignore_stop_signals`), so the main process keeps its batches until the checkpoint is
    saved."""

    def __init__(self):
        self.signal: int | None = None
        self.noted = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        # a second signal (a scheduler's repeat, a second Ctrl-C) must not interrupt the save: the first one's
        # checkpoint and exit status stand
        if self.signal is None:
            self.signal = signum
        elif not self.noted:
            self.noted = True
            print(f"{signal.Signals(signum).name}: already stopping; saving the checkpoint first (kill -9 stops "
                  "without saving)", file=sys.stderr, flush=True)


    def exit_on_signal(self) -> None:
        """Once the last checkpoint is saved, a stop signal (one that came during that save, or any later one)
        ends the process at once: the final evaluation and the export write their files atomically, so an
        interrupted one leaves nothing half-written, and the checkpoint they would read is already safe."""
        if self.signal is not None:
            _ignore_stop_signals(0)
            raise SystemExit(128 + self.signal)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_now)


def _exit_now(signum, _frame) -> None:
    _ignore_stop_signals(0)  # a repeat must not interrupt the unwinding
    print(f"{signal.Signals(signum).name}: stopping after training; the checkpoints are saved", file=sys.stderr,
          flush=True)
    raise SystemExit(128 + signum)


def _ignore_stop_signals(_worker_id: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _stop_workers(batches: Any) -> None:
    """End the DataLoader's worker processes now. They ignore SIGTERM (`_ignore_stop_signals`), and at exit Python
    terminates leftover child processes with SIGTERM and then joins them: if a reference cycle still held the
    iterator then, the finished run would wait for its workers forever."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own shutdown, which its __del__ calls too
    if callable(shutdown):
        shutdown()


def _micro_loss(model, batch: dict[str, torch.Tensor], chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over a micro-batch, and its token count. With `chunk` > 0 the model
    computes it with the fused linear cross-entropy, one chunk of logits at a time."""
    kwargs = {"cu_seqlens": batch["cu_seqlens"]} if "cu_seqlens" in batch else {}
    labels = batch["labels"]
    count = (labels != -100).sum()
    if chunk > 0:
        mean = model(input_ids=batch["input_ids"], labels=labels, shift_labels=False, loss_chunk_size=chunk,
                     **kwargs).loss
        return mean * count.clamp(min=1), count
    logits = model(input_ids=batch["input_ids"], **kwargs).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, count


@torch.no_grad()
def validation_loss(model, windows: PackedWindows, batches: int, batch_size: int, device, chunk: int = 0) -> float:
    """Mean loss over the first `batches` validation batches (fixed windows: comparable across steps)."""
    model.eval()
    total, count = 0.0, 0
    n = min(len(windows), batches * batch_size)
    for start in range(0, n, batch_size):
        batch = collate([windows[i] for i in range(start, min(n, start + batch_size))])
        loss, tokens = _micro_loss(model, {k: v.to(device) for k, v in batch.items()}, chunk)
        total += loss.item()
        count += tokens.item()
    model.train()
    return total / max(count, 1)


@dataclass
class FinishedRun:
    """A finished run, handed to the steps after training (rank 0 only), before metrics and wandb are closed."""

    cfg: DictConfig
    model: torch.nn.Module  # unwrapped (no compile / DDP wrappers), on the training device
    tokenizer: Any
    output_dir: Path
    device: torch.device
    step: int
    best_step: int | None  # the step of the weights in `model` (the best checkpoint's) when not the last step
    log: Callable[..., None]
    log_metrics: Callable[[dict[str, Any]], None]  # a row of metrics.jsonl (and wandb)
    result: dict[str, Any]  # what `train` returns; the steps add their entries


def train(cfg: DictConfig, after: Callable[[FinishedRun], None] | None = None,
          on_ready: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train as `cfg` says, save the final checkpoint, run `after` on rank 0, draw the plots; returns the result
    (output_dir, steps, tokens_seen, checkpoint, plots and whatever `after` added). `on_ready(run folder)` runs on
    rank 0 once the run's config files are written (after a resume has loaded its checkpoint)."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    tc = cfg.train
    # accelerate logs every file it saves at INFO, and warns about the tied LM head on each save
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    # the loop steps the schedule once per optimizer step; Accelerate would otherwise step it once per process
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, step_scheduler_with_optimizer=False)
    main = accelerator.is_main_process
    check_setup(describe_setup(accelerator))  # a launch that Accelerate silently fell back from is refused
    # rank 0 chooses the run folder (an interpolated ${now:...} could differ between ranks)
    out = Path(broadcast_object_list([str(Path(cfg.output_dir).resolve())])[0])
    # one run per folder: rank 0 locks it before anything in it is read or written, every rank hears the outcome
    lock, refused = RunLock(out), None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        refused = lock.try_acquire()
    refused = broadcast_object_list([refused])[0]
    if refused:
        raise RunLockedError(refused)
    try:
        return _train(cfg, accelerator, out, after, on_ready)
    finally:
        lock.release()


def _train(cfg: DictConfig, accelerator: Any, out: Path, after: Callable[[FinishedRun], None] | None,
           on_ready: Callable[[Path], None] | None) -> dict[str, Any]:
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm.auto import tqdm

    tc = cfg.train
    main = accelerator.is_main_process
    log = accelerator.print
    setup = describe_setup(accelerator)
    log(setup_line(setup))
    ckpt_root = out / "checkpoints"
    resolve_paths(cfg.data)  # config.yaml records the data and cache folders used
    # a new run from trained weights: the model and tokenizer groups become PATH's (before the resume checks)
    init = prepare_init(cfg, log) if tc.init_from else None
    # a resume is checked against the run's saved config before any data work, and before anything is written
    folder = resume_checkpoint(cfg, ckpt_root, log)
    changes = check_config(folder, cfg) if folder is not None else []

    # data: rank 0 builds the tokenizer and token caches first, the others then read them
    with accelerator.main_process_first():
        tokenizer = run_tokenizer(folder, changes, log) if folder is not None else None
        if tokenizer is None:
            tokenizer = prepare_tokenizer(cfg, log=log)
        train_arr = prepare_split(cfg.data, tokenizer, "train", log=log)
        val_arr = prepare_split(cfg.data, tokenizer, "validation", log=log)
    doc_aware = bool(cfg.data.document_aware)
    train_windows = PackedWindows(train_arr, tc.seq_len, doc_aware, "train")
    val_windows = PackedWindows(val_arr, tc.seq_len, doc_aware, "validation")

    if folder is not None:
        check_model(folder, model_config(cfg, tokenizer), tokenizer)
    set_seed(tc.seed)
    model = build_model(cfg, tokenizer)
    if init is not None and folder is None:
        load_init_weights(model, init)
    freeze(model, list(tc.freeze), log)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, vocab {model.config.vocab_size}, "
        f"{model.config.decoder_layers} layers, d={model.config.decoder_embed_dim}")
    if tc.activation_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = build_optimizer(cfg, model, accelerator.device.type == "cuda")
    sc = cfg.scheduler
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(sc.name, tc.max_steps, sc.warmup_steps, sc.min_lr_ratio, sc.decay_fraction))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    flops_per_token = train_flops_per_token(accelerator.unwrap_model(model), tc.seq_len)
    peak = peak_flops(accelerator.device)

    # resume; the run folder's config files are written only once the checkpoint has loaded
    state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "sampler": None, "bad_steps": 0, "wandb_run_id": None}
    best = BestTracker()
    if folder is not None:
        state.update(restore(accelerator, folder, log))
        best.load_state_dict(state.get("best"))
        log(f"resumed from {folder} at step {state['step']}" + (" (train.init_from is used by new runs only)"
                                                                  if init is not None else ""))
        for line in changes:
            log(f"config changed since the checkpoint: {line}")
    if main:
        write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if folder is None or not (out / "model_config.json").exists():
            write_text_atomic(out / "model_config.json", model_config(cfg, tokenizer).to_json_string())
        if folder is None or not (out / "tokenizer").is_dir():
            tokenizer.save_pretrained(str(out / "tokenizer"))
        if on_ready is not None:
            on_ready(out)
    sampler = ResumableSampler(len(train_windows), tc.seed, accelerator.process_index, accelerator.num_processes)
    if state["sampler"]:
        sampler.load_state_dict(state["sampler"], log=log)
    stop = _StopFlag()  # before the workers start: until they ignore the signals, it only sets their own flag
    loader = torch.utils.data.DataLoader(train_windows, batch_size=tc.batch_size, sampler=sampler, collate_fn=collate,
                                         num_workers=tc.num_workers, pin_memory=accelerator.device.type == "cuda",
                                         persistent_workers=tc.num_workers > 0, worker_init_fn=_ignore_stop_signals,
                                         # its own generator: creating the iterator must not draw from the
                                         # global RNG, or a resumed run's dropout masks would shift
                                         generator=torch.Generator().manual_seed(tc.seed))
    batches = iter(loader)
    try:
        check_memory_budget(tc.compile_memory_budget)
    except ValueError as exc:
        raise TrainError(f"train.{exc}") from None
    if tc.compile:
        model = compile_for_training(model, tc.compile_memory_budget, tc.compile_recompute_pointwise)

    metrics = MetricsWriter(out, main, state["step"] if folder else None, cfg.logger, state.get("wandb_run_id"),
                            OmegaConf.to_container(cfg, resolve=True))
    log_setup(metrics, state["step"], setup)
    step = state["step"]
    bar = tqdm(total=tc.max_steps, initial=step, disable=not (main and tc.progress), dynamic_ncols=True,
               desc="train")
    last_saved = step
    window_tokens, window_start = 0, time.perf_counter()
    model.train()

    def checkpoint(reason: str) -> Path:
        nonlocal last_saved
        state.update(step=step, sampler=sampler.state_dict(), wandb_run_id=metrics.wandb_run_id,
                     best=best.state_dict())
        path = save_checkpoint(accelerator, ckpt_root, step, dict(state), tc.keep_last)
        last_saved = step
        if reason != "periodic":
            log(f"checkpoint ({reason}) saved: {path}")
        return path

    def save_best() -> None:
        """RUN/checkpoints/best: hard links to step_N when it was saved at this step, else a save of its own."""
        if last_saved == step and (ckpt_root / f"step_{step}").is_dir():
            if main:
                copy_checkpoint(ckpt_root / f"step_{step}", BEST)
            accelerator.wait_for_everyone()
        else:
            state.update(step=step, sampler=sampler.state_dict(), wandb_run_id=metrics.wandb_run_id,
                         best=best.state_dict())
            save_checkpoint(accelerator, ckpt_root, step, dict(state), tc.keep_last, name=BEST)

    stopped = best.should_stop(tc.early_stop_patience)
    if stopped:
        log(f"the run stopped early at step {step} (no better validation loss since step {best.best_step}); "
            "raise train.early_stop_patience to train on")

    try:
        while step < tc.max_steps and not stopped:
            micro = [next(batches) for _ in range(tc.grad_accum)]
            sampler.consumed += tc.batch_size * tc.grad_accum
            micro = [{k: v.to(accelerator.device, non_blocking=True) for k, v in b.items()} for b in micro]
            local_tokens = sum(int((b["labels"] != -100).sum()) for b in micro)
            global_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum"))
            loss_sum = torch.zeros((), device=accelerator.device)
            for i, batch in enumerate(micro):
                sync = i == len(micro) - 1
                with accelerator.no_sync(model) if not sync else contextlib.nullcontext(), accelerator.autocast():
                    loss, _ = _micro_loss(model, batch, tc.loss_chunk_size)
                    # DDP averages gradients over ranks: scale so the result is the global per-token mean
                    accelerator.backward(loss * accelerator.num_processes / global_tokens)
                loss_sum += loss.detach()
            mean_loss = float(accelerator.reduce(loss_sum, "sum")) / global_tokens
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            step += 1
            if math.isfinite(mean_loss) and (tc.grad_clip <= 0 or math.isfinite(grad_norm)):
                optimizer.step()
                schedule.step()
                state["bad_run"] = 0
            else:
                state["bad_steps"] += 1
                state["bad_run"] = state.get("bad_run", 0) + 1
                log(f"WARNING: step {step}: non-finite loss or gradient ({mean_loss}, {grad_norm}); step skipped "
                    f"({state['bad_steps']} skipped so far)")
                if state["bad_run"] >= tc.max_bad_steps:
                    good = f"the last good checkpoint is step_{last_saved}" if last_saved else "no checkpoint yet"
                    raise TrainError(f"{state['bad_run']} non-finite steps in a row, up to step {step}; {good}. "
                                     "Lower optim.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            state["tokens_seen"] += global_tokens
            window_tokens += global_tokens
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.max_steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / max(elapsed, 1e-9)
                mfu = tps * flops_per_token / (peak * accelerator.num_processes) if peak else None
                lr = schedule.get_last_lr()[0]
                metrics.log({"step": step, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                             "tokens_seen": state["tokens_seen"], "tokens_per_s": tps, "mfu": mfu,
                             "skipped_steps": state["bad_steps"]})
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                window_tokens, window_start = 0, time.perf_counter()
            improved = False
            if tc.eval_every > 0 and step % tc.eval_every == 0:
                vloss = validation_loss(model, val_windows, tc.eval_batches, tc.batch_size, accelerator.device,
                                        tc.loss_chunk_size)
                if accelerator.num_processes > 1:  # every rank takes rank 0's decisions (best, early stop)
                    vloss = broadcast_object_list([vloss])[0]
                improved, warning = best.update(step, vloss)
                vppl = math.exp(min(vloss, 50))
                metrics.log({"step": step, "split": "validation", "loss": vloss, "val_loss": vloss,
                             "token_perplexity": vppl, **best.row()})
                log(f"step {step}: validation loss {vloss:.4f}, token perplexity {vppl:.2f}"
                    + (" (best so far)" if improved else f" (best: step {best.best_step}, {best.best_val_loss:.4f})"))
                if warning:
                    log(warning)
                stopped = best.should_stop(tc.early_stop_patience)
            if (tc.save_every > 0 and step % tc.save_every == 0) or stopped:
                checkpoint("early stop" if stopped else "periodic")
            if improved and tc.keep_best:
                save_best()
            if stopped:
                log(f"early stopping at step {step}: no better validation loss in {best.evals_since_best} "
                    f"evaluations since step {best.best_step} (train.early_stop_patience={tc.early_stop_patience})")
            if stop.signal is not None:
                checkpoint(f"signal {signal.Signals(stop.signal).name}")
                _ignore_stop_signals(0)  # saved: repeats must not kill the exit (Python resets its handlers late)
                raise SystemExit(128 + stop.signal)
    except torch.OutOfMemoryError:
        raise TrainError(f"out of memory at train.batch_size={tc.batch_size}, train.seq_len={tc.seq_len}: lower "
                         "train.batch_size (raise train.grad_accum to keep the global batch) or train.seq_len, or set "
                         "train.activation_checkpointing=true") from None
    finally:
        bar.close()
        _stop_workers(batches)

    result: dict[str, Any] = {"output_dir": str(out), "steps": step, "tokens_seen": state["tokens_seen"],
                              "main_process": main}
    if last_saved != step or not (ckpt_root / f"step_{step}").exists():
        checkpoint("final")
    result["checkpoint"] = str(ckpt_root / f"step_{step}")
    stop.exit_on_signal()
    result.update(best_step=best.best_step, best_val_loss=best.best_val_loss, early_stopped=stopped)
    if main:  # the final evaluation and export run here alone, on whole weights; the other processes just leave
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
        unwrapped, evaluated = final_model(accelerator.unwrap_model(model), ckpt_root, best, tc.keep_best, step,
                                           accelerator.device, autocast, log)
        if tc.keep_best and best.best_step is not None and (ckpt_root / BEST).is_dir():
            result["best_checkpoint"] = str(ckpt_root / BEST)
        metrics.log({"step": step, "split": "summary", "best_step": best.best_step,
                     "best_val_loss": best.best_val_loss, "evaluated_step": evaluated or step,
                     "early_stopped": stopped})
        if best.best_step is not None:
            log(f"best validation loss {best.best_val_loss:.4f} at step {best.best_step}"
                + (f" (checkpoint {ckpt_root / BEST})" if evaluated is not None else ""))
        if after is not None:
            after(FinishedRun(cfg, unwrapped, tokenizer, out, accelerator.device, step, evaluated, log, metrics.log,
                              result))
        result["plots"] = [str(p) for p in draw_plots(out)]
    metrics.close()
    accelerator.end_training()  # no barrier: the other processes left after the last checkpoint
    return result

