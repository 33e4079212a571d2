"""The Qwen2 family (Qwen2, Qwen2.5 with full attention): Llama's block with a bias on q/k/v."""
from __future__ import annotations

from megafin.models.family import FamilySpec


def _adapter(architecture: str):  # type: ignore[no-untyped-def]
    from megafin.models.qwen2.state_dict_adapter import Qwen2Adapter

    return Qwen2Adapter(architecture)


FAMILY = FamilySpec(name="qwen2", architectures=("Qwen2ForCausalLM",), adapter=_adapter,
                    model_types={"qwen2": "Qwen2ForCausalLM"}, qkv_bias=True)
