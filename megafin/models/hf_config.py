"""What every family's HF config.json mapping shares: the decoder's sizes, RoPE and norm keys <-> ModelConfig.

A family's config.py adds its own refusals and keys around these (see llama/config.py, qwen2/config.py). Pure dict
work: no torch, so config validation and the family registry load without it.
"""
from __future__ import annotations

from typing import Any, Callable

from megafin.config.schema import ModelConfig, RopeScalingConfig
from megafin.convert.errors import ConvertError


def refuse(hf: dict[str, Any], where: str, key: str, why: str) -> None:
    """The one-line error for a config.json key megafin's model cannot represent."""
    raise ConvertError(f"{where}: {key}={hf.get(key)!r}: {why}")


def decoder_model_config(hf: dict[str, Any], where: str, family: str, add_qkv_bias: bool,
                         check_family_keys: Callable[[dict[str, Any], str], None]) -> ModelConfig:
    """HF config.json (as a dict) -> ModelConfig; refuses what megafin's model cannot represent, the family's own
    keys through `check_family_keys` (after the sizes and the activation)."""
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(hf.get(key), int) or hf[key] <= 0:
            refuse(hf, where, key, "a positive integer is required")
    if hf.get("hidden_act", "silu") != "silu":
        refuse(hf, where, "hidden_act", "only silu (SwiGLU) is supported")
    check_family_keys(hf, where)
    heads = hf["num_attention_heads"]
    hidden = hf["hidden_size"]
    if hidden % heads:
        refuse(hf, where, "hidden_size", f"must be a multiple of num_attention_heads={heads}")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        refuse(hf, where, "head_dim",
               f"must equal hidden_size/num_attention_heads={hidden // heads} in megafin's model")
    groups = hf.get("num_key_value_heads") or heads
    if heads % groups:
        refuse(hf, where, "num_key_value_heads", f"must divide num_attention_heads={heads}")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    scaling = RopeScalingConfig(type="none")
    if rope_type == "llama3":
        try:
            scaling = RopeScalingConfig(
                type="llama3", factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]))
        except KeyError as err:
            raise ConvertError(f"{where}: rope scaling llama3 without {err.args[0]}") from None
    elif rope_type != "default":
        raise ConvertError(f"{where}: rope type {rope_type!r} is not supported (default or llama3)")
    return ModelConfig(
        family=family,
        add_qkv_bias=add_qkv_bias,
        num_layers=hf["num_hidden_layers"],
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=groups,
        ffn_hidden_size=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        rope_theta=float(theta),
        rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def decoder_hf_config(m: ModelConfig, vocab_size: int, torch_dtype: str, bos_token_id: Any,
                      eos_token_id: Any) -> dict[str, Any]:
    """The config.json keys every family writes (legacy rope keys, which transformers 4.4x/5.x and vLLM read), in
    alphabetical order; the family adds `architectures`, `model_type` and its own keys."""
    rope_scaling = None
    if m.rope_scaling.type == "llama3":
        s = m.rope_scaling
        rope_scaling = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                        "high_freq_factor": s.high_freq_factor,
                        "original_max_position_embeddings": s.original_max_position_embeddings}
    return {
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "hidden_act": "silu",
        "hidden_size": m.hidden_size,
        "initializer_range": m.init_std,
        "intermediate_size": m.ffn_hidden_size,
        "max_position_embeddings": m.max_position_embeddings,
        "num_attention_heads": m.num_attention_heads,
        "num_hidden_layers": m.num_layers,
        "num_key_value_heads": m.num_query_groups,
        "rms_norm_eps": m.norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": m.rope_theta,
        "tie_word_embeddings": m.tie_embeddings,
        "torch_dtype": torch_dtype,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
