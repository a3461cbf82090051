"""OpenNLPLab's TransNormerLLM checkpoint layout (huggingface.co/OpenNLPLab/TransNormerLLM-*): config and names.

Their config.json uses the field names of their `TransnormerConfig` (decoder_embed_dim, decoder_layers,
decoder_attention_heads, hidden_dim, glu_dim, linear_use_lrpe_list, linear_act_fun, norm_type, bias,
no_scale_embedding, add_bos_token, init_std, vocab_size and the special token ids); their parameters are
  model.embed_tokens.weight, lm_head.weight,
  model.layers.{i}.token_mixer.qkvu_proj.weight / .out_proj.weight / .lrpe.theta (LRPE layers),
  model.layers.{i}.channel_mixer.l1.weight / .l2.weight / .l3.weight  (+ .bias of each Linear when bias=true),
with SimpleRMSNorm (token_norm, channel_norm, token_mixer.norm, final_norm) holding no weights. tnl's model uses
the same config and parameter names, so the mapping below is the identity on names plus a check that the tnl
model is one their code can represent (TNL token mixer, SGLU, their decay schedule, no tnl-only features).
`tnl.checkpoint` reads this layout, `tnl.export.official` writes it.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .errors import ModelFolderError

OFFICIAL_FIELDS = (
    "pad_token_id", "bos_token_id", "eos_token_id", "vocab_size", "use_cache", "init_std", "decoder_embed_dim",
    "decoder_layers", "decoder_attention_heads", "no_scale_embedding", "add_bos_token", "norm_type",
    "linear_use_lrpe_list", "hidden_dim", "linear_act_fun", "glu_dim", "bias", "tie_word_embeddings",
)
# Fields only tnl writes: their presence marks a tnl config, their absence an official one.
TNL_ONLY_FIELDS = (
    "decay_schedule", "token_mixer", "channel_mixer", "num_key_value_heads", "position_encoding", "rope_theta",
    "sliding_window", "qk_norm", "hybrid_block_size", "attn_backend",
)
# Keys their checkpoints may carry that are not parameters (fairseq leftovers).
IGNORED_KEYS = (re.compile(r"(^|\.)decoder\.version$"), re.compile(r"(^|\.)version$"))
# Official name -> tnl name rewrites (none needed today: tnl adopted the official names).
RENAMES: tuple[tuple[str, str], ...] = ()
DEFAULT_CODE_REPO = "OpenNLPLab/TransNormerLLM-385M"


def is_official_config(config: dict[str, Any]) -> bool:
    return config.get("model_type") == "transnormer" and not any(k in config for k in TNL_ONLY_FIELDS)


def official_problems(config: Any) -> list[str]:
    """Why a tnl config cannot be written in the official layout (empty: it can)."""
    c = config
    problems = []
    if c.token_mixer != "tnl":
        problems.append(f"token_mixer={c.token_mixer!r} (official: linear attention only)")
    if c.channel_mixer != "sglu":
        problems.append(f"channel_mixer={c.channel_mixer!r} (official: SGLU)")
    if c.decay_schedule != "tnl":
        problems.append(f"decay_schedule={c.decay_schedule!r} (official: the released 'tnl' schedule)")
    if c.qk_norm:
        problems.append("qk_norm=true")
    if c.norm_type != "simplermsnorm":
        problems.append(f"norm_type={c.norm_type!r}")
    if c.num_key_value_heads != c.decoder_attention_heads:
        problems.append("grouped key/value heads")
    if any(c.linear_use_lrpe_list) and c.hidden_dim != c.decoder_embed_dim:
        problems.append("LRPE with hidden_dim != decoder_embed_dim (official LRPE sizes heads by decoder_embed_dim)")
    return problems


def to_official_config(config: Any, *, dtype: torch.dtype | None = None, code_repo: str | None = DEFAULT_CODE_REPO
                       ) -> dict[str, Any]:
    d = config.to_dict()
    out: dict[str, Any] = {k: d[k] for k in OFFICIAL_FIELDS if k in d}
    out["model_type"] = "transnormer"
    out["architectures"] = ["TransnormerForCausalLM"]
    if dtype is not None:
        out["torch_dtype"] = str(dtype).removeprefix("torch.")
    if code_repo:
        out["auto_map"] = {
            "AutoConfig": f"{code_repo}--configuration_transnormer.TransnormerConfig",
            "AutoModelForCausalLM": f"{code_repo}--modeling_transnormer.TransnormerForCausalLM",
        }
    return out


def from_official_config(config: dict[str, Any]) -> Any:
    from .model import TransnormerConfig

    fields = {k: config[k] for k in OFFICIAL_FIELDS if k in config}
    if not fields.get("linear_use_lrpe_list"):
        raise ModelFolderError("official config has an empty linear_use_lrpe_list; their code needs one entry per "
                               "layer")
    # tnl's defaults for its own fields (TNL mixer, SGLU, 'tnl' decay) are the official architecture
    return TransnormerConfig(**fields)


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        name = re.sub(old, new, name)
    return name


def to_official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Official names -> tensors (contiguous CPU copies; tied weights stored under both names, as theirs are)."""
    inverse = tuple((new, old) for old, new in RENAMES)
    return {_rename(k, inverse): v.detach().to("cpu").contiguous().clone()
            for k, v in model.state_dict().items()}


def from_official_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k, RENAMES): v for k, v in sd.items() if not any(p.search(k) for p in IGNORED_KEYS)}
