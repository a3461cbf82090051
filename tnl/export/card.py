"""README.md model card of an export: what the model is, how to load it, its training config and eval table."""

from __future__ import annotations

import json
import math
import ntpath
import posixpath
import re
from typing import Any

_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity")
# an absolute path inside a text (not a URL's //host/..., not a hub id's org/name)
_PATH_IN_TEXT = re.compile(r"(?<![\w.:/~])~?/[^\s,;'\"()\[\]]+")


def _is_local_path(v: Any) -> bool:
    return isinstance(v, str) and (posixpath.isabs(v) or v.startswith("~") or bool(re.match(r"^[A-Za-z]:[\\/]", v)))


def _basename(path: str) -> str:
    return ntpath.basename(path.rstrip("/\\")) or path


def without_local_paths(obj: Any) -> Any:
    """`obj` (plain JSON-like data) without the machine's absolute paths, which an uploaded card would publish:
    a mapping's value that is one is left out, a path in a list or inside a text keeps its last component only."""
    if isinstance(obj, dict):
        return {k: without_local_paths(v) for k, v in obj.items() if not _is_local_path(v)}
    if isinstance(obj, list | tuple):
        return [_basename(v) if _is_local_path(v) else without_local_paths(v) for v in obj]
    if isinstance(obj, str):
        return _PATH_IN_TEXT.sub(lambda m: _basename(m.group(0)), obj)
    return obj


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def eval_table(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Markdown table: one row per evaluation result (as returned by `tnl.eval.evaluate_documents`)."""
    rows = results if isinstance(results, list) else [results]
    head = ["split", "mode", "max_length", *_METRICS, "num_tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k in head) + " |")
    return "\n".join(lines)


def _dump_config(cfg: dict[str, Any]) -> str:
    try:
        import yaml

        return "```yaml\n" + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False) + "```"
    except Exception:  # PyYAML missing or a value it cannot represent
        return "```json\n" + json.dumps(cfg, indent=2, default=str) + "\n```"


def model_card(config: dict[str, Any], *, train_config: dict[str, Any] | None = None,
               eval_results: dict[str, Any] | list[dict[str, Any]] | None = None, num_params: int | None = None) -> str:
    size = f"{num_params / 1e6:.2f}M parameters, " if num_params else ""
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [transnormer, linear-attention, lightning-attention, tnl]",
        "---",
        "",
        "# TransNormerLLM (tnl)",
        "",
        f"A TransNormerLLM causal language model ({size}{config.get('decoder_layers')} layers, "
        f"d={config.get('decoder_embed_dim')}, {config.get('decoder_attention_heads')} heads, "
        f"vocabulary {config.get('vocab_size')}) trained with tnl. Token mixer: {config.get('token_mixer', 'tnl')}.",
        "",
        "The modeling code ships in this folder (`modeling_transnormer.py` and the tnl modules it imports, "
        "flattened): it needs only `torch` and `transformers`, and uses the Triton kernels on a CUDA GPU when "
        "Triton is installed, PyTorch otherwise.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO", trust_remote_code=True)',
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO", trust_remote_code=True)  # flag: no prompt',
        'ids = tokenizer("The history of", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0]))",
        "```",
        "",
    ]
    if eval_results:
        lines += [
            "## Evaluation",
            "",
            "Document-level perplexity (lm-evaluation-harness's wikitext protocol: rolling windows over whole "
            "detokenized articles, words and bytes counted on the original text).",
            "",
            eval_table(eval_results),
            "",
        ]
    if train_config:
        lines += ["## Training configuration", "", _dump_config(train_config), ""]
    lines += ["## Model configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str),
              "```", ""]
    return "\n".join(lines)
