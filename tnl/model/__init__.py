"""TransNormerLLM as a Hugging Face model; importing this package registers it with the Auto classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_transnormer import TransnormerConfig
from .modeling_transnormer import (
    TransnormerCache,
    TransnormerForCausalLM,
    TransnormerModel,
    TransnormerPreTrainedModel,
    alibi_slopes,
    decay_rates,
)

AutoConfig.register(TransnormerConfig.model_type, TransnormerConfig, exist_ok=True)
AutoModelForCausalLM.register(TransnormerConfig, TransnormerForCausalLM, exist_ok=True)
# save_pretrained writes auto_map so an exported folder loads with trust_remote_code
TransnormerConfig.register_for_auto_class()
TransnormerForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "TransnormerCache",
    "TransnormerConfig",
    "TransnormerForCausalLM",
    "TransnormerModel",
    "TransnormerPreTrainedModel",
    "alibi_slopes",
    "decay_rates",
]
