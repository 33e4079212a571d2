"""Llama's HF state-dict adapter: the shared Llama-layout tensor mapping plus Llama's config.json."""
from __future__ import annotations

from megafin.models.hf_decoder import HFDecoderAdapter
from megafin.models.llama import config


class LlamaAdapter(HFDecoderAdapter):
    family = "llama"

    def __init__(self, architecture: str = "LlamaForCausalLM") -> None:
        super().__init__(architecture)

    model_config = staticmethod(config.model_config)
    hf_config = staticmethod(config.hf_config)
