"""Resuming a run: which checkpoint it continues from, and whether the requested config may continue it.

A checkpoint only fits the model and tokenizer it was trained with, so a resume that changes either is refused
before anything in the run folder is written. Training-only settings (steps, schedule, cadence, ...) may change;
the changes are logged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tnl.checkpoint import latest_valid, list_checkpoints, load_tokenizer, restore_checkpoint, verify
from tnl.errors import UserError

# what a checkpoint's weights were made for: a change of any of these keys is refused
_MODEL_PREFIXES = ("model.", "tokenizer.")
# keys that describe where this invocation runs, not the run itself
_NOT_COMPARED = {"resume", "output_dir"}
# model_config.json fields that the transformers version writes, not the model
_NOT_MODEL = {"transformers_version"}


class ResumeError(UserError):
    """A resume that cannot continue the run as asked."""


def resume_checkpoint(cfg: DictConfig, ckpt_root: Path, log) -> Path | None:
    """The checkpoint that `cfg.resume` names: none, the newest valid one of this run (auto), the newest valid
    one of another run folder, or a checkpoint folder that must verify."""
    choice = str(cfg.resume)
    if choice == "none":
        return None
    if choice == "auto":
        newest = latest_valid(ckpt_root, log=log)
        if newest is None and list_checkpoints(ckpt_root):  # starting over would replace the run's files
            raise ResumeError(f"{ckpt_root} holds checkpoints but none is valid (see the warnings above); pass "
                              "resume=none to start over in this folder (its files are replaced), or train into a "
                              "new output_dir")
        return newest
    folder = Path(choice).expanduser()
    if not folder.is_dir():
        problem = "not a folder" if folder.exists() else "folder not found"
        raise ResumeError(f"resume={choice}: {problem}; pass a run folder, a checkpoints/step_N folder, "
                          "resume=auto or resume=none")
    root = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    if root.name == "checkpoints":  # a run folder (or its checkpoints/): its newest valid checkpoint
        newest = latest_valid(root, log=log)
        if newest is None:
            raise ResumeError(f"resume={choice}: the run has no valid checkpoints/step_N (none yet, or all broken); "
                              "pass another checkpoint folder or resume=none")
        return newest
    problem = verify(folder)
    if problem:
        raise ResumeError(f"resume={choice}: {problem}; pass another checkpoint folder, the run folder (its newest "
                          "valid checkpoint) or resume=none")
    return folder


def run_folder(checkpoint: Path) -> Path:
    """RUN of RUN/checkpoints/step_N."""
    return checkpoint.parent.parent


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def _differences(saved: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(saved), _flatten(requested)
    keys = sorted((set(a) | set(b)) - _NOT_COMPARED)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def _refuse(run: Path, keys: list[str]) -> None:
    raise ResumeError(f"cannot resume {run} with another model or tokenizer ({'; '.join(keys)}): its checkpoints "
                      "fit only the run's own. Train into a new output_dir, or resume with the run's values")


def _unreadable(path: Path, err: Exception) -> ResumeError:
    first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    return ResumeError(f"cannot resume: {path} is unreadable ({first}); remove it to resume without this check "
                       "(it is written again once the checkpoint has loaded), or train into a new output_dir")


def _describe(key: str, old: Any, new: Any) -> str:
    return f"{key}: {old} -> {new}"


def check_config(checkpoint: Path, cfg: DictConfig) -> list[str]:
    """Compare `cfg` with the run's saved config.yaml (read only): model or tokenizer keys that differ are refused;
    the other changes are returned as lines to log once the checkpoint has loaded."""
    saved_file = run_folder(checkpoint) / "config.yaml"
    if not saved_file.is_file():
        return []
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True)
    except Exception as err:  # any YAML or interpolation error of a damaged file
        raise _unreadable(saved_file, err) from None
    changed = _differences(saved, OmegaConf.to_container(cfg, resolve=True))
    refused = [_describe(k, *v) for k, v in changed.items() if k.startswith(_MODEL_PREFIXES)]
    if refused:
        _refuse(run_folder(checkpoint), refused)
    return [_describe(k, *v) for k, v in changed.items()]


def _tokenizer_spec(tokenizer: Any) -> Any:
    """What decides the token ids: the fast tokenizer's model, added tokens, normalizer and pre-tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        return [spec.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer")]
    return sorted(tokenizer.get_vocab().items()), list(tokenizer.all_special_tokens)


# data keys that leave the text, and so the tokenizer trained on it, unchanged
_NOT_TEXT = ("data.cache_dir", "data.num_proc", "data.streaming", "data.document_aware")


def run_tokenizer(checkpoint: Path, changes: list[str], log) -> Any | None:
    """The tokenizer the run trained with (RUN/tokenizer) when the data and tokenizer settings are the run's
    (`changes` from check_config), else None: the tokenizer is then built from the settings and check_model refuses
    it if it differs. Reading the run's own keeps a run resumable when a newer tnl would train another BPE from the
    same settings (other document boundaries, say)."""
    folder = run_folder(checkpoint) / "tokenizer"
    text_changed = any(c.startswith(("data.", "tokenizer.")) and not c.startswith(_NOT_TEXT) for c in changes)
    if text_changed or not folder.is_dir():
        return None
    log(f"tokenizer: the run's own ({folder})")
    return load_tokenizer(folder)


def check_model(checkpoint: Path, model_config: Any, tokenizer: Any) -> None:
    """The model config and tokenizer built for this resume must equal the run's model_config.json and
    tokenizer/ (a changed training corpus retrains the BPE, and the vocabulary size follows the tokenizer)."""
    run = run_folder(checkpoint)
    refused = []
    saved_model = run / "model_config.json"
    if saved_model.is_file():
        try:
            old = json.loads(saved_model.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _unreadable(saved_model, err) from None
        new = json.loads(model_config.to_json_string())  # as model_config.json was written
        refused += [_describe(f"model.{k}", old.get(k), new.get(k)) for k in sorted((set(old) | set(new)) - _NOT_MODEL)
                    if old.get(k) != new.get(k)]
    if (run / "tokenizer").is_dir() and _tokenizer_spec(load_tokenizer(run / "tokenizer")) != _tokenizer_spec(
            tokenizer):
        refused.append("tokenizer/: another vocabulary (other training data or tokenizer settings)")
    if refused:
        _refuse(run, refused)


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def restore(accelerator: Any, checkpoint: Path, log) -> dict[str, Any]:
    """`restore_checkpoint`, with a warning where Accelerate could not restore the RNG states (it says so only at
    INFO): the run goes on, but no longer exactly as an unbroken one would."""
    logger = logging.getLogger("accelerate.checkpointing")
    seen, level = _Messages(), logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    propagate, logger.propagate = logger.propagate, False
    try:
        state = restore_checkpoint(accelerator, checkpoint)
    except (RuntimeError, KeyError, ValueError, OSError) as err:  # weights of another shape, a damaged state file
        first = " ".join(str(err).split())[:200] or type(err).__name__
        raise ResumeError(f"cannot resume from {checkpoint}: {first}; resume another checkpoint, or train into a "
                          "new output_dir") from None
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
        logger.propagate = propagate
    if any("Could not load random states" in m for m in seen.messages):
        log(f"WARNING: the random number generator states in {checkpoint} could not be loaded (random_states_*.pkl "
            "unreadable or missing); training goes on from the current states, so dropout and sampling no longer "
            "match an unbroken run exactly")
    return state
