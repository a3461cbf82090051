"""TransNormerLLM as a Hugging Face model; importing this package registers it with the Auto classes.

    from tnl.model import TransnormerConfig, TransnormerForCausalLM
    model = TransnormerForCausalLM(TransnormerConfig(vocab_size=..., decoder_embed_dim=..., ...))
    out = model(input_ids, cu_seqlens=cu)        # packed documents (B = 1); out.logits [1, T, V]
    out = model(input_ids, labels=input_ids)     # HF loss: shifted inside, -100 ignored
    model.generate(input_ids, attention_mask=mask, max_new_tokens=32)   # recurrent TransnormerCache

Named shapes live in configs/model/*.yaml; `token_mixer` picks tnl | softmax | hybrid (the baselines).
Files here import only torch / transformers / stdlib, each other and tnl's ops, so an export can copy them.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .cache import TransnormerCache
from .configuration_transnormer import TransnormerConfig
from .layers import alibi_slopes, decay_rates
from .modeling_transnormer import TransnormerForCausalLM, TransnormerModel, TransnormerPreTrainedModel

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
