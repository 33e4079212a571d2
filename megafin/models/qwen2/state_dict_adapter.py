"""Qwen2's HF state-dict adapter: the shared Llama-layout tensor mapping (with the q/k/v biases its ModelConfig's
`add_qkv_bias` adds) plus Qwen2's config.json."""
from __future__ import annotations

from megafin.models.hf_decoder import HFDecoderAdapter
from megafin.models.qwen2 import config


class Qwen2Adapter(HFDecoderAdapter):
    family = "qwen2"

    def __init__(self, architecture: str = "Qwen2ForCausalLM") -> None:
        super().__init__(architecture)

    model_config = staticmethod(config.model_config)
    hf_config = staticmethod(config.hf_config)
