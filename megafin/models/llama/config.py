"""Llama's config.json (Llama-3/3.1/3.2, and Mistral without a sliding window) <-> ModelConfig."""
from __future__ import annotations

from typing import Any

from megafin.config.schema import ModelConfig
from megafin.models.hf_config import decoder_hf_config, decoder_model_config, refuse


def check_family_keys(hf: dict[str, Any], where: str) -> None:
    """Refuse the config.json keys of this family that megafin's model cannot represent."""
    if hf.get("attention_bias", False):
        refuse(hf, where, "attention_bias", "q/k/v/o biases are not supported (megafin's model can have q/k/v "
                                            "biases only, as Qwen2)")
    if hf.get("mlp_bias", False):
        refuse(hf, where, "mlp_bias", "MLP biases are not supported")
    if hf.get("sliding_window") is not None:
        refuse(hf, where, "sliding_window", "sliding-window attention is not supported (only full causal attention)")


def model_config(hf: dict[str, Any], where: str) -> ModelConfig:
    return decoder_model_config(hf, where, "llama", add_qkv_bias=False, check_family_keys=check_family_keys)


def hf_config(m: ModelConfig, vocab_size: int, torch_dtype: str, bos_token_id: Any,
              eos_token_id: Any) -> dict[str, Any]:
    """A LlamaForCausalLM config.json."""
    llama_keys = {"attention_bias": False, "head_dim": m.hidden_size // m.num_attention_heads, "mlp_bias": False,
                  "pretraining_tp": 1}
    shared = decoder_hf_config(m, vocab_size, torch_dtype, bos_token_id, eos_token_id)
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            **dict(sorted({**shared, **llama_keys}.items()))}
