"""One state-dict adapter per model family: key mapping, fused-layout transforms and config translation."""
from __future__ import annotations

from typing import Any

from megafin.config.schema import ModelConfig
from megafin.convert.adapters.llama import LlamaAdapter
from megafin.convert.adapters.qwen2 import Qwen2Adapter
from megafin.convert.errors import ConvertError

# HF `architectures[0]` -> adapter class. Mistral shares Llama's tensors exactly when it has no sliding window
# (the adapter refuses one); Qwen2 is Llama's block with q/k/v biases.
_ADAPTERS = {
    "LlamaForCausalLM": LlamaAdapter,
    "MistralForCausalLM": LlamaAdapter,
    "Qwen2ForCausalLM": Qwen2Adapter,
}
SUPPORTED_ARCHITECTURES = tuple(_ADAPTERS)
# megafin `model.family` -> the adapter a checkpoint of that family exports with (to its own HF architecture).
_FAMILIES = {"llama": LlamaAdapter, "qwen2": Qwen2Adapter}
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def adapter_for_hf_config(hf_config: dict[str, Any], where: str) -> LlamaAdapter:
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch is None:
        arch = _MODEL_TYPES.get(hf_config.get("model_type", ""))
    if arch not in _ADAPTERS:
        raise ConvertError(f"{where}: architecture {arch or hf_config.get('model_type')!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return _ADAPTERS[arch](arch)


def adapter_for_model(m: ModelConfig, where: str) -> LlamaAdapter:
    """The adapter of a checkpoint's model config; its tensors must be the ones the family's HF architecture has."""
    if m.family not in _FAMILIES:
        raise ConvertError(f"{where}: model.family {m.family!r} is not supported (supported: {', '.join(_FAMILIES)})")
    adapter = _FAMILIES[m.family]()
    if m.add_qkv_bias != adapter.qkv_bias:
        raise ConvertError(f"{where}: model.add_qkv_bias={m.add_qkv_bias} does not fit model.family={m.family} "
                           f"({adapter.architecture} {'has' if adapter.qkv_bias else 'has no'} q/k/v biases)")
    return adapter
