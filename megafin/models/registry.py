"""The model families megafin builds and converts, by `model.family` (add a family: README.md)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megafin.convert.errors import ConvertError
from megafin.models import llama, qwen2
from megafin.models.family import FamilySpec

if TYPE_CHECKING:
    from megafin.models.state_dict_adapter import StateDictAdapter

FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (llama.FAMILY, qwen2.FAMILY)}
# HF `architectures[0]` -> the family that imports it.
_BY_ARCHITECTURE = {arch: spec for spec in FAMILIES.values() for arch in spec.architectures}
_BY_MODEL_TYPE = {model_type: arch for spec in FAMILIES.values() for model_type, arch in spec.model_types.items()}
SUPPORTED_ARCHITECTURES = tuple(_BY_ARCHITECTURE)


def adapter_for_hf_config(hf_config: dict[str, Any], where: str) -> "StateDictAdapter":
    """The StateDictAdapter for an HF config.json (a dict), by its architecture (or model_type)."""
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch is None:
        arch = _BY_MODEL_TYPE.get(hf_config.get("model_type", ""))
    if arch not in _BY_ARCHITECTURE:
        raise ConvertError(f"{where}: architecture {arch or hf_config.get('model_type')!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return _BY_ARCHITECTURE[arch].adapter(arch)


def adapter_for_model(m: Any, where: str) -> "StateDictAdapter":
    """The adapter of a checkpoint's ModelConfig; its tensors must be the ones the family's HF architecture has."""
    spec = FAMILIES.get(m.family)
    if spec is None:
        raise ConvertError(f"{where}: model.family {m.family!r} is not supported (supported: {', '.join(FAMILIES)})")
    adapter = spec.export_adapter()
    if m.add_qkv_bias != spec.qkv_bias:
        raise ConvertError(f"{where}: model.add_qkv_bias={m.add_qkv_bias} does not fit model.family={m.family} "
                           f"({adapter.architecture} {'has' if spec.qkv_bias else 'has no'} q/k/v biases)")
    return adapter
