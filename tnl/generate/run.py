"""`tnl generate`: load a model, read the prompts, generate (streamed to the terminal), report the speed, write the
JSONL. Every value is checked before the model loads or anything is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from tnl.atomic import write_text_atomic

from .decode import Generation, generate_ids
from .sampling import GenerateError, SamplingSettings


def _err(log):
    return lambda *a: log(*a, file=sys.stderr)


def settings_from(cfg: Any) -> SamplingSettings:
    stops = cfg.get("stop_strings")
    if isinstance(stops, str):
        stops = [stops]
    stops = [] if stops is None else stops
    try:
        stops = list(stops)
    except TypeError:
        raise GenerateError(f"stop_strings must be a list of strings, got {stops!r}") from None
    return SamplingSettings(
        max_new_tokens=cfg.get("max_new_tokens", 128), temperature=cfg.get("temperature", 1.0),
        top_k=cfg.get("top_k"), top_p=cfg.get("top_p", 1.0), repetition_penalty=cfg.get("repetition_penalty", 1.0),
        num_return_sequences=cfg.get("num_return_sequences", 1), stop_strings=stops,
    ).check()


def read_prompts(cfg: Any, stdin=None) -> list[str]:
    """`prompt`, else the lines of `prompt_file` (blank lines skipped), else all of stdin as one prompt."""
    prompt, prompt_file = cfg.get("prompt"), cfg.get("prompt_file")
    if prompt is not None and prompt_file:
        raise GenerateError("give prompt or prompt_file, not both")
    if prompt is not None:
        if not isinstance(prompt, str):
            prompt = str(prompt)  # Hydra reads prompt=42 as a number
        if not prompt.strip():
            raise GenerateError("the prompt is empty; give prompt=\"some text\"")
        return [prompt]
    if prompt_file:
        path = Path(str(prompt_file)).expanduser()
        if not path.is_file():
            raise GenerateError(f"prompt_file {path} {'is a folder' if path.is_dir() else 'does not exist'}; give "
                                "a text file with one prompt per line")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise GenerateError(f"cannot read prompt_file {path} ({type(err).__name__}); give a UTF-8 text file "
                                "with one prompt per line") from None
        prompts = [line for line in lines if line.strip()]
        if not prompts:
            raise GenerateError(f"prompt_file {path} holds no prompt (only blank lines); write one prompt per line")
        return prompts
    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        print("reading the prompt from stdin (end it with Ctrl-D)", file=sys.stderr)
    text = stdin.read().rstrip("\n")
    if not text.strip():
        raise GenerateError("the prompt is empty: give prompt=\"some text\", prompt_file=FILE or text on stdin")
    return [text]


def position_limit(model: torch.nn.Module) -> tuple[int, str] | None:
    """(positions, why) a model can read at most, or None (TNL: no limit; RoPE extrapolates)."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) == "transnormer":
        if cfg.token_mixer != "tnl" and cfg.position_encoding not in ("rope", "none"):
            return cfg.max_position_embeddings, f"{cfg.position_encoding} positions"
        return None
    n = getattr(cfg, "n_positions", None)  # learned positions (GPT-2 style)
    return (n, "learned positions") if isinstance(n, int) and n > 0 else None


def encode(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt after the BOS (else EOS) token, the context evaluation gives a document's first
    token."""
    from tnl.eval.perplexity import prefix_token_id

    prefix = prefix_token_id(tokenizer)
    ids = tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
    return [[prefix, *map(int, x)] for x in ids]


def check_lengths(model: torch.nn.Module, encoded: list[list[int]], max_new_tokens: int) -> None:
    limit = position_limit(model)
    if limit is None:
        return
    n, why = limit
    longest = max(map(len, encoded))
    if longest > n:
        raise GenerateError(f"a prompt has {longest} tokens but the model reads at most {n} ({why}); shorten the "
                            "prompt")
    if longest + max_new_tokens > n:
        raise GenerateError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                            f"{n} positions ({why}); set max_new_tokens <= {n - longest}")


def output_file(cfg: Any) -> Path | None:
    if not cfg.get("output"):
        return None
    from tnl.eval.run import unwritable

    out = Path(str(cfg.output)).expanduser()
    problem = unwritable(out)
    if problem:
        raise GenerateError(f"output {out} cannot be written ({problem}); choose a writable .jsonl path")
    return out


def _int(cfg: Any, key: str, default: int, low: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GenerateError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def batches(model: torch.nn.Module, encoded: list[list[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices per batch, similar lengths together (little padding). A hybrid model's attention blocks
    count from the first position of the padded row, so left padding would change its output: its batches hold
    prompts of one length only."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    cfg = getattr(model, "config", None)
    same_length = getattr(cfg, "model_type", None) == "transnormer" and cfg.token_mixer == "hybrid"
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and not (same_length and len(encoded[out[-1][0]]) != len(encoded[i])):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def run_generation(cfg: Any, log=print, stdin=None) -> list[dict[str, Any]]:
    """Generate for `cfg`'s prompts; print the completions (streamed when there is one), return the JSONL rows."""
    from tnl.checkpoint import load_pretrained
    from tnl.eval.run import resolve_device, resolve_dtype

    info = _err(log)
    if not cfg.get("model_path"):
        raise GenerateError("model_path is required: tnl generate model_path=PATH prompt=\"...\"")
    settings = settings_from(cfg)
    batch_size = _int(cfg, "batch_size", 8, 1)
    prefill_chunk = _int(cfg, "prefill_chunk", 0, 0)
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise GenerateError(f"seed must be an integer or null, got {seed!r}")
    device = resolve_device(cfg.get("device"), key="device")
    dtype = resolve_dtype(cfg.get("dtype"), device, key="dtype")
    prompts = read_prompts(cfg, stdin)
    loaded = load_pretrained(cfg.model_path, verify=bool(cfg.get("verify", True)), log=info)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise GenerateError(f"{cfg.model_path} has no tokenizer files (tokenizer.json / tokenizer_config.json); "
                            "generation needs the model's tokenizer: save it into the folder")
    encoded = encode(tokenizer, prompts)
    check_lengths(loaded.model, encoded, settings.max_new_tokens)
    out = output_file(cfg)  # checked before generating: the completions must not be lost
    settings.eos_token_id = tokenizer.eos_token_id
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    model = loaded.model.to(device=device, dtype=dtype).eval()
    info(f"model: {loaded.kind} {loaded.path} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
         f"{str(dtype).removeprefix('torch.')} on {device})")
    if seed is not None:
        torch.manual_seed(int(seed))  # seeds every device; sampling draws from torch's global generator
    stream = bool(cfg.get("stream", True)) and len(prompts) == 1 and settings.num_return_sequences == 1
    totals = {"prompt": 0, "new": 0, "prefill": 0.0, "decode": 0.0, "graphed": False}
    n = settings.num_return_sequences
    results: list[list[dict[str, Any]] | None] = [None] * len(prompts)
    for batch in batches(model, encoded, batch_size):
        gen: Generation = generate_ids(model, [encoded[i] for i in batch], settings, pad_token_id=pad,
                                       tokenizer=tokenizer, stream=stream, prefill_chunk=prefill_chunk)
        seconds = gen.prefill_seconds + gen.decode_seconds
        for r, (tokens, text) in enumerate(zip(gen.tokens, gen.texts)):
            i = batch[r // n]
            if not stream:
                header = f"=== prompt {i + 1}" + (f", sequence {r % n + 1}/{n}" if n > 1 else "")
                log(f"{header}: {prompts[i]}\n{text}", flush=True)
            results[i] = (results[i] or []) + [{
                "prompt": prompts[i], "completion": text, "tokens": len(tokens),
                "tokens_per_s": round(len(tokens) / seconds, 3) if seconds > 0 else None}]
        if stream:
            log("", flush=True)  # the streamed text ends without a newline
        totals["prompt"] += gen.prompt_tokens
        totals["new"] += gen.new_tokens
        totals["prefill"] += gen.prefill_seconds
        totals["decode"] += gen.decode_seconds
        totals["graphed"] |= gen.graphed

    def rate(tokens: int, seconds: float) -> str:
        return f"{tokens / seconds:,.1f} tokens/s" if seconds > 0 else "n/a"

    info(f"prefill: {totals['prompt']} tokens, {rate(totals['prompt'], totals['prefill'])}; decode: {totals['new']} "
         f"tokens, {rate(totals['new'], totals['decode'])}"
         + (" (decode step replayed from a CUDA graph)" if totals["graphed"] else ""))
    rows = [row for per_prompt in results for row in per_prompt or []]
    if out is not None:
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        info(f"wrote {len(rows)} rows to {out}")
    return rows
