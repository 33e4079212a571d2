"""The state-dict adapter protocol: what a family gives `megafin convert` (and the parity tests) to move weights
between its Hugging Face checkpoints and megafin's megatron-core GPTModel (torchtitan's
protocols/state_dict_adapter.py is the model). megatron's side of every key is megafin.models.megatron_keys."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import torch

from megafin.config.schema import ModelConfig

Getter = Callable[[str], torch.Tensor]


class StateDictAdapter(Protocol):
    family: str  # model.family of the checkpoints it writes
    architecture: str  # the HF `architectures[0]` it was chosen for (from-hf) or writes (to-hf)

    def model_config(self, hf: dict[str, Any], where: str) -> ModelConfig:
        """HF config.json (a dict) -> ModelConfig; a ConvertError naming `where` and the key for what megafin's
        model cannot represent."""

    def hf_config(self, m: ModelConfig, vocab_size: int, torch_dtype: str, bos_token_id: Any,
                  eos_token_id: Any) -> dict[str, Any]:
        """The config.json of the family's HF architecture for this model."""

    def hf_shapes(self, m: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
        """Every HF tensor the model has, in a stable order (layer by layer), with its shape."""

    def optional_hf_keys(self, m: ModelConfig) -> set[str]:
        """Keys an HF checkpoint may carry beyond `hf_shapes` (ignored on import)."""

    def to_megatron(self, m: ModelConfig, padded_vocab: int, get: Getter) -> Iterator[tuple[str, torch.Tensor]]:
        """megatron state-dict tensors one at a time (megatron_keys order), each built from the HF tensors
        `get(key)` returns: peak memory is a few tensors, not the model."""

    def to_hf(self, m: ModelConfig, vocab_size: int, get: Getter) -> Iterator[tuple[str, torch.Tensor]]:
        """HF tensors in `hf_shapes` order, each built from the megatron tensors `get(key)` returns."""
