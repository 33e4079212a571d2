"""One state-dict adapter per model family: key mapping, fused-layout transforms and config translation."""
from __future__ import annotations

from typing import Any

from megafin.convert.adapters.llama import LlamaAdapter
from megafin.convert.errors import ConvertError

# HF `architectures[0]` -> adapter class. Mistral shares Llama's tensors exactly when it has no sliding window
# (the adapter refuses one); Qwen2 needs a qkv bias that megafin's model does not build (add_qkv_bias=False).
_ADAPTERS = {
    "LlamaForCausalLM": LlamaAdapter,
    "MistralForCausalLM": LlamaAdapter,
}
SUPPORTED_ARCHITECTURES = tuple(_ADAPTERS)


def adapter_for_hf_config(hf_config: dict[str, Any], where: str) -> LlamaAdapter:
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch is None:
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}.get(hf_config.get("model_type", ""))
    if arch not in _ADAPTERS:
        raise ConvertError(f"{where}: architecture {arch or hf_config.get('model_type')!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return _ADAPTERS[arch](arch)


def adapter_for_family(family: str, where: str) -> LlamaAdapter:
    if family != "llama":
        raise ConvertError(f"{where}: model.family {family!r} is not supported (supported: llama)")
    return LlamaAdapter("LlamaForCausalLM")
