"""`tnl evaluate`: load a model, score a split, print a table, write a JSON with fingerprints."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tnl.atomic import write_text_atomic
from tnl.checkpoint import load_pretrained

from .perplexity import MODES, EvalError, evaluate_documents

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
TABLE_KEYS = ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity", "num_documents",
              "num_tokens", "num_words", "num_bytes", "tokens_per_second")


def fingerprint_model(model: torch.nn.Module) -> str:
    """Hash of the weights (names, dtypes, shapes, bytes): identical weights give identical fingerprints."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def fingerprint_documents(documents: Sequence[str]) -> str:
    h = hashlib.sha256()
    for doc in documents:
        h.update(doc.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def resolve_device(name: str | None, key: str = "eval.device") -> torch.device:
    """`auto` (CUDA when visible, else CPU), cpu, cuda or cuda:N; `key` names the setting in errors."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise EvalError(f"{key}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise EvalError(f"{key}={name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"{key}=cuda but no CUDA GPU is visible; use {key}=cpu")
    return device


def resolve_dtype(name: str | None, device: torch.device, key: str = "eval.dtype") -> torch.dtype:
    if name in (None, "", "auto"):  # bf16 on GPU (fp32 log-softmax still), exact fp32 on CPU
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise EvalError(f"{key}={name!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[name]


def format_table(results: dict[str, Any]) -> str:
    """The terminal table: one metric per line."""
    title = f"{results.get('split', '?')} | mode={results.get('mode')} max_length={results.get('max_length')}"
    if results.get("stride"):
        title += f" stride={results['stride']}"
    rows = []
    for key in TABLE_KEYS:
        if key in results:
            v = results[key]
            rows.append((key, f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)))
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    rule = "-" * (width + vwidth + 5)
    lines = [title, rule] + [f"  {k:<{width}}   {v:>{vwidth}}" for k, v in rows] + [rule]
    return "\n".join(lines)


def default_output(loaded: Any, split: str, mode: str) -> Path:
    """`<run folder>/eval_<split>_<mode>.json` (the export folder itself for an exported model)."""
    base = loaded.run_dir if getattr(loaded, "run_dir", None) is not None else loaded.path
    return Path(base) / f"eval_{split}_{mode}.json"


def write_json(results: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (None: it can), found by creating and removing a probe file beside it
    (permission bits alone say nothing for root or a read-only mount)."""
    existing = next((a for a in path.parents if a.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    if path.is_dir():
        return "it is a folder"
    return None


def fallback_output(name: str) -> Path:
    """Where results go when their folder cannot be written: the current folder, else the temporary folder."""
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        if unwritable(folder / name) is None:
            return folder / name
    raise EvalError(f"no writable folder for {name} (neither the current folder nor {tempfile.gettempdir()}); "
                    "set eval.output to a writable path")


def output_path(ev: Any, loaded: Any, split: str, mode: str, log=print) -> Path:
    """The JSON path, checked before the evaluation starts: an explicit eval.output that cannot be written is
    refused; a read-only model folder (the default place) sends the results elsewhere, with a warning."""
    if ev.get("output"):
        out = Path(ev.output).expanduser()
        problem = unwritable(out)
        if problem:
            raise EvalError(f"eval.output {out} cannot be written ({problem}); choose a writable path")
        return out
    out = default_output(loaded, split, mode)
    problem = unwritable(out)
    if problem is None:
        return out
    other = fallback_output(f"{out.stem}-{Path(loaded.path).name}.json")
    log(f"WARNING: {out.parent} cannot be written ({problem}); the results will go to {other}")
    return other


def save_results(results: dict[str, Any], out: Path, log=print) -> Path:
    """Write the JSON; if its folder stopped being writable during the evaluation, keep the results elsewhere."""
    try:
        return write_json(results, out)
    except OSError as err:
        other = fallback_output(f"{out.stem}-{Path(results.get('model_path', 'model')).name}.json")
        log(f"WARNING: cannot write {out} ({type(err).__name__}: {err.strerror or err}); writing {other} instead")
        return write_json(results, other)


def run_evaluation(cfg: Any, log=print) -> dict[str, Any]:
    """Evaluate `cfg.model_path` on `cfg.eval.split` of `cfg.data`; print the table, write the JSON, return it."""
    from tnl.data import describe_source, load_documents

    ev = cfg.eval
    if not cfg.get("model_path"):
        raise EvalError("model_path is required: tnl evaluate model_path=RUN/checkpoints/step_N")
    split = ev.get("split", "validation")
    if split not in ("validation", "test"):
        raise EvalError(f"eval.split must be validation or test, got {split!r}")
    device = resolve_device(ev.get("device"))
    dtype = resolve_dtype(ev.get("dtype"), device)
    mode = ev.get("mode", "window")
    if mode not in MODES:
        raise EvalError(f"eval.mode must be one of {', '.join(MODES)}, got {mode!r}")
    loaded = load_pretrained(cfg.model_path, verify=bool(cfg.get("verify", True)), log=log)
    if loaded.tokenizer is None:
        raise EvalError(f"{cfg.model_path} has no tokenizer files; evaluation needs the model's tokenizer")
    out = output_path(ev, loaded, split, mode, log=log)  # before the evaluation: its results must not be lost
    model_fingerprint = fingerprint_model(loaded.model)  # of the weights as stored, whatever eval.dtype is
    model = loaded.model.to(device=device, dtype=dtype)
    log(f"model: {loaded.kind} {loaded.path} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{str(dtype).removeprefix('torch.')} on {device})")
    source = describe_source(cfg.data, split)
    log(f"data: {source}")
    documents = list(load_documents(cfg.data, split, detokenized=False)["text"])
    results = evaluate_documents(
        model, loaded.tokenizer, documents, mode=mode, max_length=int(ev.get("max_length", 1024)),
        stride=ev.get("stride"), batch_size=int(ev.get("batch_size", 1)), device=device,
        progress=bool(ev.get("progress", True)),
    )
    results.update({
        "split": split,
        "model_path": str(Path(cfg.model_path).expanduser().absolute()),
        "model_kind": loaded.kind,
        "model_fingerprint": model_fingerprint,
        "data_fingerprint": fingerprint_documents(documents),
        "data_source": source,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    log(format_table(results))
    out = save_results(results, out, log=log)
    log(f"results: {out}")
    results["output"] = str(out)
    return results
