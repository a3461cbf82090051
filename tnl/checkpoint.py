"""Checkpoints and model folders: saving and verifying training checkpoints, and loading any model tnl reads.

Training checkpoints are folders `RUN/checkpoints/step_N/`. Accelerate's `save_state` writes model weights
(safetensors), optimizer, scheduler and every process's RNG states; we add `trainer_state.json` (step, tokens,
sampler position, ...) and `checksums.json` (sha256 of every file, written last). Everything goes into a temporary
folder renamed into place, so a crash mid-save leaves the previous checkpoints untouched and never a folder that looks
complete.

`load_pretrained` loads a model and its tokenizer from
- a training checkpoint `RUN/checkpoints/step_N/`: the model is rebuilt from `RUN/model_config.json` (or the
  `model:` mapping of `RUN/.hydra/config.yaml` / `RUN/config.yaml`, whichever the run saved; it also becomes the
  model card's training config), the tokenizer is `RUN/tokenizer/`;
  a run folder itself means its best checkpoint (`checkpoints/best`, lowest validation loss) when it has one, else
  its latest valid step_N;
- an exported Hugging Face folder (config.json + weights + tokenizer files), tnl's own or any causal LM;
- an OpenNLPLab TransNormerLLM folder (their config field names; see `tnl.official`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import publish_folder
from .errors import ModelFolderError
from .official import from_official_config, from_official_state_dict, is_official_config
from .sharded_weights import FSDP_FULL, read_errors, read_sharded, sharded_folders

_STEP = re.compile(r"^step_(\d+)$")
BEST = "best"  # RUN/checkpoints/best: the checkpoint of the lowest validation loss (tnl.train.best)
CHECKSUMS = "checksums.json"
STATE = "trainer_state.json"
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


# ---- training checkpoints: save, verify, find ----

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path, skip: tuple[str, ...] = ()) -> None:
    """checksums.json: the sha256 of every file in `folder` and its subfolders but `skip`, which `verify` checks
    before the folder is used."""
    # subfolders too (sharded FSDP weights): names are paths relative to `folder`
    sums = {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in (CHECKSUMS, *skip)}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of finished checkpoints under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found, reverse=True)


def verify(folder: Path) -> str | None:
    """None when every file matches its checksum, else what is wrong."""
    sums_path = folder / CHECKSUMS
    if not sums_path.exists():
        return "no checksums.json (the save did not finish)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return "checksums.json is corrupt"
    for name, digest in sums.items():
        path = folder / name
        if not path.exists():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def latest_valid(root: Path, log=print) -> Path | None:
    """Newest checkpoint that verifies; broken newer ones are reported and skipped."""
    for _step, folder in list_checkpoints(root):
        problem = verify(folder)
        if problem is None:
            return folder
        log(f"WARNING: checkpoint {folder} is unusable ({problem}); trying the previous one")
    return None


def save_checkpoint(accelerator: Any, root: Path, step: int, state: dict[str, Any], keep_last: int,
                    name: str | None = None) -> Path:
    """Save on all ranks (collective), publish atomically on rank 0, prune to the last `keep_last` step_N.
    `name` (e.g. BEST) saves into that folder instead of step_N; it is never pruned."""
    final = root / (name or f"step_{step}")
    tmp = root / f".{final.name}.tmp"  # one name every rank computes: they all write into it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that crashed
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        write_checksums(tmp)
        _publish(tmp, final, root)
        if name is None:
            for _s, folder in list_checkpoints(root)[max(1, keep_last):]:
                shutil.rmtree(folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _publish(tmp: Path, final: Path, root: Path) -> None:
    _fsync_dir(tmp)
    publish_folder(tmp, final, replace=True)  # same step saved again (a signal right after a periodic save)
    _fsync_dir(root)


def copy_checkpoint(source: Path, name: str) -> Path:
    """A finished checkpoint published again under `name` beside it (rank 0 only): hard links where the file system
    has them (no second copy of the bytes; pruning `source` later leaves these files), else a copy."""
    root = source.parent
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    _publish(tmp, final, root)
    return final


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def restore_checkpoint(accelerator: Any, folder: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state."""
    accelerator.load_state(str(folder))
    return json.loads((folder / STATE).read_text())


def _fsync_dir(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else []:
        try:
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass


def latest_checkpoint(run_dir: Path, log=print) -> Path | None:
    """The newest step_N of a run whose files match their checksums (as resume picks it); broken ones are
    reported and skipped, so a corrupt newest save never ends up evaluated or exported."""
    return latest_valid(run_dir / "checkpoints", log=log)


def best_checkpoint(run_dir: Path, log=print) -> Path | None:
    """RUN/checkpoints/best when it exists and verifies; a broken one is reported and skipped."""
    folder = run_dir / "checkpoints" / BEST
    if not folder.is_dir():
        return None
    problem = verify(folder)
    if problem is not None:
        log(f"WARNING: the best checkpoint {folder} is unusable ({problem}); using the newest step_N instead")
        return None
    return folder


def checkpoint_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json (step, tokens seen, best-so-far bookkeeping, ...); {} when unreadable."""
    try:
        return json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return {}


def verify_export(folder: Path, log=print) -> None:
    """An exported folder's files must match its checksums.json; exports written before tnl wrote checksums load
    with a note."""
    if not (folder / CHECKSUMS).exists():
        log(f"note: {folder} has no {CHECKSUMS} (exported before tnl wrote checksums); its weights are not verified")
        return
    problem = verify(folder)
    if problem is not None:
        raise ModelFolderError(f"exported model {folder} is broken ({problem}); export it again, or pass "
                               "verify=false to load it anyway")


def verify_checkpoint(ckpt: Path, log=print) -> None:
    """A checkpoint named explicitly must match its checksums (tnl writes checksums.json into each one)."""
    if not (ckpt / CHECKSUMS).exists():
        log(f"WARNING: {ckpt} has no {CHECKSUMS}; its files cannot be verified")
        return
    problem = verify(ckpt)
    if problem is not None:
        raise ModelFolderError(f"checkpoint {ckpt} is broken ({problem}); pick an earlier step_N or give the run "
                               "folder to use its newest valid checkpoint")


# ---- loading a model from any folder ----

@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    kind: str  # "checkpoint" | "hf" | "official"
    path: Path
    run_dir: Path | None = None
    train_config: dict[str, Any] | None = field(default=None, repr=False)


def find_run_dir(ckpt: Path) -> Path | None:
    """The run folder above a checkpoint: the nearest ancestor with model_config.json or .hydra/config.yaml."""
    for parent in list(ckpt.parents)[:3]:
        if (parent / "model_config.json").exists() or (parent / ".hydra" / "config.yaml").exists() or (
            parent / "config.yaml"
        ).exists() and (parent / "checkpoints").is_dir():
            return parent
    return None


def weight_files(folder: Path, fsdp: bool = False) -> list[Path]:
    """The weights files of a checkpoint or export. With `fsdp`, also FSDP's (sharded folders or a full file),
    which `read_state_dict` consolidates for a model outside FSDP."""
    for pattern in ("model.safetensors", "model-*-of-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    if fsdp:
        return sharded_folders(folder) or sorted(folder.glob(FSDP_FULL))
    return []


def _unreadable(path: Path, err: BaseException) -> ModelFolderError:
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return ModelFolderError(f"cannot read the weights in {path} ({type(err).__name__}: {text}): the file is "
                            "corrupt, truncated or not a weights file; export or save it again, or use an earlier "
                            "checkpoint")


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a corrupt or truncated weights file raises (safetensors' header/size checks, torch's unpickler, DCP)."""
    import pickle

    from safetensors import SafetensorError

    return (SafetensorError, OSError, EOFError, pickle.UnpicklingError, *read_errors())


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.is_dir():
                sd.update(read_sharded(f))
            elif f.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd.update(load_file(str(f)))
            else:
                sd.update(torch.load(f, map_location="cpu", weights_only=True))
        except (*_read_errors(), RuntimeError) as err:  # RuntimeError: torch's zip reader on a cut-short file
            raise _unreadable(f, err) from None
    return sd


def strip_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names without torch.compile / DDP prefixes (a checkpoint of a wrapped model has them)."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: Path) -> None:
    """Load `sd` strictly, allowing only tied weights (saved once) to be absent."""
    result = model.load_state_dict(sd, strict=False)
    # Tied weights are saved under one of their names (Accelerate/safetensors drop the duplicates): a missing name
    # is fine when another name of the same tensor was loaded.
    names: dict[int, set[str]] = {}
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for n, t in tensors:
        names.setdefault(id(t), set()).add(n)
    alias = {n: group for group in names.values() for n in group}
    missing = [k for k in result.missing_keys if not (alias.get(k, set()) & sd.keys())]
    if missing or result.unexpected_keys:
        raise ModelFolderError(f"weights in {source} do not fit the model config: missing {missing[:4]}, "
                               f"unexpected {result.unexpected_keys[:4]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _model_config_from_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    train_cfg = None
    for saved in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml"):
        if saved.exists():
            from omegaconf import OmegaConf

            train_cfg = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
            break
    if (run_dir / "model_config.json").exists():
        return json.loads((run_dir / "model_config.json").read_text()), train_cfg
    if train_cfg and isinstance(train_cfg.get("model"), dict):
        return dict(train_cfg["model"]), train_cfg
    raise ModelFolderError(f"{run_dir} has neither model_config.json nor a model: section in .hydra/config.yaml")


def _custom_tokenizer_code(folder: Path) -> str | None:
    """The tokenizer class a tokenizer_config.json's auto_map asks to run as remote code, if any."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if isinstance(auto_map, dict):
        ref = auto_map.get("AutoTokenizer")
        ref = next((r for r in ref if r), None) if isinstance(ref, list) else ref
        return str(ref or auto_map)
    if isinstance(auto_map, list) and auto_map:
        return str(next((r for r in auto_map if r), auto_map))
    return None


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    custom = _custom_tokenizer_code(folder)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # missing, unreadable or custom-code files: say which
        if custom is not None:
            raise ModelFolderError(f"the tokenizer in {folder} needs its own code ({custom}, from tokenizer_config."
                                   "json's auto_map) and tnl does not run remote code; save it as a fast tokenizer "
                                   "(tokenizer.json) without auto_map") from None
        present = [n for n in ("tokenizer.json", "tokenizer_config.json") if (folder / n).exists()]
        text = str(err).splitlines()[0][:160] if str(err) else ""
        hint = ("its files could not be read; save the tokenizer again" if present
                else "it should hold tokenizer.json / tokenizer_config.json")
        raise ModelFolderError(f"cannot load the tokenizer from {folder} ({type(err).__name__}: {text}); "
                               f"{hint}") from None


def load_run_checkpoint(ckpt: Path) -> LoadedModel:
    """A training checkpoint `RUN/checkpoints/step_N` with the model config and tokenizer of its run."""
    from .model import TransnormerConfig, TransnormerForCausalLM

    run_dir = find_run_dir(ckpt)
    if run_dir is None:
        raise ModelFolderError(f"{ckpt} looks like a checkpoint but no run folder with model_config.json is above it")
    model_cfg, train_cfg = _model_config_from_run(run_dir)
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        model_cfg.pop(key, None)
    model = TransnormerForCausalLM(TransnormerConfig(**model_cfg))
    load_weights(model, strip_wrappers(read_state_dict(weight_files(ckpt, fsdp=True))), ckpt)
    if not (run_dir / "tokenizer").is_dir():
        raise ModelFolderError(f"{run_dir}/tokenizer is missing; the training run saves its tokenizer there")
    return LoadedModel(model.eval(), load_tokenizer(run_dir / "tokenizer"), "checkpoint", ckpt, run_dir, train_cfg)


def load_official(folder: str | os.PathLike) -> LoadedModel:
    """A tnl `TransnormerForCausalLM` (eval mode) + tokenizer from an official-layout folder."""
    from .model import TransnormerForCausalLM

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelFolderError(f"{folder} has no config.json")
    raw = json.loads(config_file.read_text())
    if raw.get("model_type") != "transnormer":
        raise ModelFolderError(f"{folder}/config.json is not a TransNormerLLM config (model_type "
                               f"{raw.get('model_type')!r})")
    files = weight_files(folder)
    if not files:
        raise ModelFolderError(f"{folder} holds no weights (model*.safetensors or pytorch_model*.bin)")
    model = TransnormerForCausalLM(from_official_config(raw))
    load_weights(model, from_official_state_dict(read_state_dict(files)), folder)
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        model.to(getattr(torch, dtype))
    tokenizer = None
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(folder)
    return LoadedModel(model.eval(), tokenizer, "official", folder)


def load_hf(folder: Path) -> LoadedModel:
    """An exported Hugging Face folder: tnl's (with tnl's current model code), official, or any causal LM."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") == "transnormer":
        if is_official_config(config):
            return load_official(folder)
        from .model import TransnormerForCausalLM

        try:
            model = TransnormerForCausalLM.from_pretrained(str(folder))
        except _read_errors() as err:
            raise _unreadable(weight_files(folder)[0] if len(weight_files(folder)) == 1 else folder, err) from None
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder))
        except Exception as err:
            raise ModelFolderError(f"cannot load a causal LM from {folder} ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return LoadedModel(model.eval(), load_tokenizer(folder), "hf", folder)


def load_pretrained(path: str | os.PathLike, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, verify: bool = True, name: str = "model_path",
                    log=print) -> LoadedModel:
    """Model (in eval mode) and tokenizer from a checkpoint, run, exported HF or official folder.

    With `verify`, a checkpoint or export named explicitly must match its checksums.json (`verify=False` skips the
    check); `name` is the setting that gave `path`, for the error messages."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFolderError(f"{name} {p} does not exist")
    if not p.is_dir():
        raise ModelFolderError(f"{name} {p} is a file; give a checkpoint folder (.../checkpoints/step_N) or an "
                               "exported model folder")
    if p.name == "checkpoints" and not (p / "checkpoints").is_dir() and not weight_files(p, fsdp=True):
        p = p.parent  # RUN/checkpoints means the run
    verified = False  # checksums already read (hashing a multi-GB checkpoint twice costs seconds)
    if (p / "checkpoints").is_dir() and not weight_files(p, fsdp=True):
        best = best_checkpoint(p, log=log)
        if best is not None:
            state = checkpoint_state(best)
            loss = (state.get("best") or {}).get("best_val_loss")
            log(f"{name} {p}: using the run's best checkpoint, step {state.get('step')}"
                + (f" (validation loss {loss:.4f})" if isinstance(loss, float) else ""))
            p, verified = best, True
        else:
            latest = latest_checkpoint(p, log=log)
            if latest is None:
                raise ModelFolderError(f"run folder {p} has no valid checkpoints/step_N (none yet, or all broken)")
            p, verified = latest, True
    if (p / "config.json").exists() and weight_files(p):
        if verify:
            verify_export(p, log=log)
        loaded = load_hf(p)
    elif weight_files(p, fsdp=True):
        if verify and not verified:
            verify_checkpoint(p, log=log)
        loaded = load_run_checkpoint(p)
    else:
        raise ModelFolderError(f"{p} is not a model: no model.safetensors / pytorch_model.bin (a checkpoint) and "
                               "no config.json with weights (an exported folder)")
    if dtype is not None:
        loaded.model.to(dtype)
    if device is not None:
        loaded.model.to(device)
    return loaded
