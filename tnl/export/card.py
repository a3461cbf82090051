"""README.md model card of an export: what the model is, how to load it, its training config and eval table."""

from __future__ import annotations

import json
import math
from typing import Any

_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity")


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
