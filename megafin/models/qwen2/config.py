"""Qwen2's config.json (Qwen2, Qwen2.5) <-> ModelConfig. Qwen2 configs carry a `sliding_window` size even when
`use_sliding_window` is false (then it is unused), so only an active sliding window is refused."""
from __future__ import annotations

from typing import Any

from megafin.config.schema import ModelConfig
from megafin.models.hf_config import decoder_hf_config, decoder_model_config, refuse


def check_family_keys(hf: dict[str, Any], where: str) -> None:
    if hf.get("use_sliding_window", False):
        refuse(hf, where, "use_sliding_window", "sliding-window attention is not supported (only full causal attention)")
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        refuse(hf, where, "layer_types", "only full_attention layers are supported")


def model_config(hf: dict[str, Any], where: str) -> ModelConfig:
    return decoder_model_config(hf, where, "qwen2", add_qkv_bias=True, check_family_keys=check_family_keys)


def hf_config(m: ModelConfig, vocab_size: int, torch_dtype: str, bos_token_id: Any,
              eos_token_id: Any) -> dict[str, Any]:
    """A Qwen2ForCausalLM config.json: full attention in every layer."""
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            **decoder_hf_config(m, vocab_size, torch_dtype, bos_token_id, eos_token_id),
            "use_sliding_window": False, "sliding_window": None, "max_window_layers": m.num_layers}
