"""Qwen2 family (Qwen2, Qwen2.5) <-> megafin's megatron-core GPTModel: the Llama block plus q/k/v biases.

The tensors map as Llama's with `model.add_qkv_bias` (see llama.py: the biases fuse into `linear_qkv.bias` in the
weights' per-query-group order); only the config.json translation differs. Qwen2 configs carry a `sliding_window`
size even when `use_sliding_window` is false (then it is unused), so only an active sliding window is refused.
"""
from __future__ import annotations

from typing import Any

from megafin.config.schema import ModelConfig
from megafin.convert.adapters.llama import LlamaAdapter, refuse

# Keys of the Llama config.json that Qwen2Config does not have (Qwen2 has no o_proj/MLP bias switches).
_LLAMA_ONLY_KEYS = ("attention_bias", "mlp_bias", "pretraining_tp", "head_dim")


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"
    qkv_bias = True

    def __init__(self, architecture: str = "Qwen2ForCausalLM") -> None:
        super().__init__(architecture)

    def check_family_keys(self, hf: dict[str, Any], where: str) -> None:
        if hf.get("use_sliding_window", False):
            refuse(hf, where, "use_sliding_window",
                   "sliding-window attention is not supported (only full causal attention)")
        layer_types = hf.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            refuse(hf, where, "layer_types", "only full_attention layers are supported")

    def hf_config(self, m: ModelConfig, vocab_size: int, torch_dtype: str, bos_token_id: Any,
                  eos_token_id: Any) -> dict[str, Any]:
        """A Qwen2ForCausalLM config.json (full attention in every layer, legacy rope keys as Llama's)."""
        cfg = super().hf_config(m, vocab_size, torch_dtype, bos_token_id, eos_token_id)
        for key in _LLAMA_ONLY_KEYS:
            del cfg[key]
        cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                   sliding_window=None, max_window_layers=m.num_layers)
        return cfg
