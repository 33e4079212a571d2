"""The Llama family: Llama-3/3.1/3.2, and Mistral without a sliding window (the same tensors, exported as Llama)."""
from __future__ import annotations

from megafin.models.family import FamilySpec


def _adapter(architecture: str):  # type: ignore[no-untyped-def]
    from megafin.models.llama.state_dict_adapter import LlamaAdapter

    return LlamaAdapter(architecture)


# Llama's only bias option (attention_bias) also biases o_proj, which megafin's model does not build: no q/k/v bias.
FAMILY = FamilySpec(name="llama", architectures=("LlamaForCausalLM", "MistralForCausalLM"), adapter=_adapter,
                    model_types={"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}, qkv_bias=False)
