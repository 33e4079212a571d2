"""What a model family declares (one FamilySpec in megafin/models/<family>/__init__.py, listed in registry.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the adapters need torch; the registry (read by config validation) must not
    from megafin.models.state_dict_adapter import StateDictAdapter


@dataclass(frozen=True)
class FamilySpec:
    name: str  # model.family
    # HF `architectures[0]` values it imports; the first is the one it exports.
    architectures: tuple[str, ...]
    # The adapter for one of `architectures`; imported when called, so the registry loads without torch.
    adapter: Callable[[str], "StateDictAdapter"]
    # HF `model_type` -> architecture, for config.json files without `architectures`.
    model_types: dict[str, str] = field(default_factory=dict)
    # The family's q/k/v projections carry a bias (model.add_qkv_bias must equal it).
    qkv_bias: bool = False

    def model_problems(self, m: Any) -> list[tuple[str, str, Any]]:
        """The family's rules on a ModelConfig: (key, expected, got) for each one it breaks."""
        if m.add_qkv_bias != self.qkv_bias:
            return [("model.add_qkv_bias", f"{str(self.qkv_bias).lower()} for model.family={self.name}",
                     m.add_qkv_bias)]
        return []

    def export_adapter(self) -> "StateDictAdapter":
        """The adapter a checkpoint of this family exports with (to its own HF architecture)."""
        return self.adapter(self.architectures[0])
