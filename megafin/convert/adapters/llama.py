"""Llama family (Llama-3/3.1/3.2, and Mistral without a sliding window) <-> megafin's megatron-core GPTModel.

Mapping (megatron-core local spec, the keys `megafin.model.build_model` produces at TP=1/PP=1):

| megatron-core GPTModel                              | Hugging Face Llama                                   |
| --------------------------------------------------- | ---------------------------------------------------- |
| embedding.word_embeddings.weight [V_pad, H]         | model.embed_tokens.weight [V, H] (rows >= V are zero) |
| decoder.layers.i.input_layernorm.weight             | model.layers.i.input_layernorm.weight                |
| decoder.layers.i.self_attention.linear_qkv.weight   | q_proj, k_proj, v_proj fused per query group:        |
|                                                     | [q heads of group g; k head g; v head g] for each g |
| decoder.layers.i.self_attention.linear_proj.weight  | model.layers.i.self_attn.o_proj.weight               |
| decoder.layers.i.pre_mlp_layernorm.weight           | model.layers.i.post_attention_layernorm.weight       |
| decoder.layers.i.mlp.linear_fc1.weight              | [gate_proj; up_proj]                                 |
| decoder.layers.i.mlp.linear_fc2.weight              | model.layers.i.mlp.down_proj.weight                  |
| decoder.final_layernorm.weight                      | model.norm.weight                                    |
| output_layer.weight [V_pad, H] (absent when tied)   | lm_head.weight [V, H] (absent when tied)             |
| decoder.layers.i.self_attention.linear_qkv.bias     | q_proj, k_proj, v_proj biases, fused as the weights  |
|   (only with model.add_qkv_bias: Qwen2)             |   (model.layers.i.self_attn.{q,k,v}_proj.bias)       |

Both sides use rotate-half RoPE, so q/k rows need no permutation. Every transform is a pure reshuffle of rows:
a round trip is bit-exact. The tensor mapping follows the ModelConfig (`add_qkv_bias`); which HF config.json it
comes from and goes to is the family's (`model_config`/`hf_config`, overridden in `qwen2.py`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from megafin.config.schema import ModelConfig, RopeScalingConfig
from megafin.convert.errors import ConvertError

Getter = Callable[[str], torch.Tensor]

# Tensors some HF checkpoints carry that are not weights (recomputed from the config).
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def refuse(hf: dict[str, Any], where: str, key: str, why: str) -> None:
    """The one-line error for a config.json key megafin's model cannot represent."""
    raise ConvertError(f"{where}: {key}={hf.get(key)!r}: {why}")


class LlamaAdapter:
    family = "llama"
    qkv_bias = False  # the family's q/k/v projections carry a bias (ModelConfig.add_qkv_bias)

    def __init__(self, architecture: str = "LlamaForCausalLM") -> None:
        self.architecture = architecture

    # ------------------------------------------------------------------ config
    def check_family_keys(self, hf: dict[str, Any], where: str) -> None:
        """Refuse the config.json keys of this family that megafin's model cannot represent."""
        if hf.get("attention_bias", False):
            refuse(hf, where, "attention_bias", "q/k/v/o biases are not supported (megafin's model can have q/k/v "
                                                "biases only, as Qwen2)")
        if hf.get("mlp_bias", False):
            refuse(hf, where, "mlp_bias", "MLP biases are not supported")
        if hf.get("sliding_window") is not None:
            refuse(hf, where, "sliding_window",
                   "sliding-window attention is not supported (only full causal attention)")

    def model_config(self, hf: dict[str, Any], where: str) -> ModelConfig:
        """HF config.json (as a dict) -> megafin ModelConfig; refuses what megafin's model cannot represent."""
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if not isinstance(hf.get(key), int) or hf[key] <= 0:
                refuse(hf, where, key, "a positive integer is required")
        if hf.get("hidden_act", "silu") != "silu":
            refuse(hf, where, "hidden_act", "only silu (SwiGLU) is supported")
        self.check_family_keys(hf, where)
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
            family=self.family,
            add_qkv_bias=self.qkv_bias,
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

    def hf_config(self, m: ModelConfig, vocab_size: int, torch_dtype: str, bos_token_id: Any,
                  eos_token_id: Any) -> dict[str, Any]:
        """A LlamaForCausalLM config.json that transformers 4.4x/5.x and vLLM read (legacy rope keys)."""
        rope_scaling = None
        if m.rope_scaling.type == "llama3":
            s = m.rope_scaling
            rope_scaling = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                            "high_freq_factor": s.high_freq_factor,
                            "original_max_position_embeddings": s.original_max_position_embeddings}
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "head_dim": m.hidden_size // m.num_attention_heads,
            "hidden_act": "silu",
            "hidden_size": m.hidden_size,
            "initializer_range": m.init_std,
            "intermediate_size": m.ffn_hidden_size,
            "max_position_embeddings": m.max_position_embeddings,
            "mlp_bias": False,
            "num_attention_heads": m.num_attention_heads,
            "num_hidden_layers": m.num_layers,
            "num_key_value_heads": m.num_query_groups,
            "pretraining_tp": 1,
            "rms_norm_eps": m.norm_eps,
            "rope_scaling": rope_scaling,
            "rope_theta": m.rope_theta,
            "tie_word_embeddings": m.tie_embeddings,
            "torch_dtype": torch_dtype,
            "use_cache": True,
            "vocab_size": vocab_size,
        }

    # ------------------------------------------------------------------ shapes
    def hf_shapes(self, m: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
        """Every HF tensor this model has, in a stable order (layer by layer), with its shape."""
        H, d = m.hidden_size, m.hidden_size // m.num_attention_heads
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, H)}
        for i in range(m.num_layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (H,),
                p + "self_attn.q_proj.weight": (m.num_attention_heads * d, H),
                p + "self_attn.k_proj.weight": (m.num_query_groups * d, H),
                p + "self_attn.v_proj.weight": (m.num_query_groups * d, H),
            })
            if m.add_qkv_bias:
                shapes.update({
                    p + "self_attn.q_proj.bias": (m.num_attention_heads * d,),
                    p + "self_attn.k_proj.bias": (m.num_query_groups * d,),
                    p + "self_attn.v_proj.bias": (m.num_query_groups * d,),
                })
            shapes.update({
                p + "self_attn.o_proj.weight": (H, m.num_attention_heads * d),
                p + "post_attention_layernorm.weight": (H,),
                p + "mlp.gate_proj.weight": (m.ffn_hidden_size, H),
                p + "mlp.up_proj.weight": (m.ffn_hidden_size, H),
                p + "mlp.down_proj.weight": (H, m.ffn_hidden_size),
            })
        shapes["model.norm.weight"] = (H,)
        if not m.tie_embeddings:
            shapes["lm_head.weight"] = (vocab_size, H)
        return shapes

    def optional_hf_keys(self, m: ModelConfig) -> set[str]:
        """Keys an HF checkpoint may carry beyond `hf_shapes` (ignored on import)."""
        return {"lm_head.weight"} if m.tie_embeddings else set()

    # ------------------------------------------------------------------ tensors
    def _qkv_sizes(self, m: ModelConfig) -> tuple[int, int, int]:
        d = m.hidden_size // m.num_attention_heads
        return m.num_query_groups, m.num_attention_heads // m.num_query_groups, d

    def fuse_qkv(self, m: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Rows [q heads of group g; k head g; v head g] for each group g: weights [rows, H] and biases [rows]."""
        g, per, d = self._qkv_sizes(m)
        rest = q.shape[1:]
        return torch.cat([q.reshape(g, per * d, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest)], dim=1) \
            .reshape(g * (per + 2) * d, *rest)

    def split_qkv(self, m: ModelConfig, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, per, d = self._qkv_sizes(m)
        rest = qkv.shape[1:]
        grouped = qkv.reshape(g, (per + 2) * d, *rest)
        q = grouped[:, : per * d].reshape(g * per * d, *rest)
        k = grouped[:, per * d: (per + 1) * d].reshape(g * d, *rest)
        v = grouped[:, (per + 1) * d:].reshape(g * d, *rest)
        return q, k, v

    @staticmethod
    def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
        if t.shape[0] == rows:
            return t
        out = t.new_zeros((rows, *t.shape[1:]))
        out[: t.shape[0]] = t
        return out

    def to_megatron(self, m: ModelConfig, padded_vocab: int, get: Getter) -> Iterator[tuple[str, torch.Tensor]]:
        """Megatron tensors one at a time, each built from the HF tensors `get(key)` returns."""
        yield "embedding.word_embeddings.weight", self._pad_rows(get("model.embed_tokens.weight"), padded_vocab)
        for i in range(m.num_layers):
            h, p = f"model.layers.{i}.", f"decoder.layers.{i}."
            yield p + "input_layernorm.weight", get(h + "input_layernorm.weight")
            yield p + "self_attention.linear_qkv.weight", self.fuse_qkv(
                m, get(h + "self_attn.q_proj.weight"), get(h + "self_attn.k_proj.weight"),
                get(h + "self_attn.v_proj.weight"))
            if m.add_qkv_bias:
                yield p + "self_attention.linear_qkv.bias", self.fuse_qkv(
                    m, get(h + "self_attn.q_proj.bias"), get(h + "self_attn.k_proj.bias"),
                    get(h + "self_attn.v_proj.bias"))
            yield p + "self_attention.linear_proj.weight", get(h + "self_attn.o_proj.weight")
            yield p + "pre_mlp_layernorm.weight", get(h + "post_attention_layernorm.weight")
            yield p + "mlp.linear_fc1.weight", torch.cat([get(h + "mlp.gate_proj.weight"),
                                                          get(h + "mlp.up_proj.weight")], dim=0)
            yield p + "mlp.linear_fc2.weight", get(h + "mlp.down_proj.weight")
        yield "decoder.final_layernorm.weight", get("model.norm.weight")
        if not m.tie_embeddings:
            yield "output_layer.weight", self._pad_rows(get("lm_head.weight"), padded_vocab)

    def to_hf(self, m: ModelConfig, vocab_size: int, get: Getter) -> Iterator[tuple[str, torch.Tensor]]:
        """HF tensors in `hf_shapes` order, each built from the megatron tensors `get(key)` returns."""
        # The last fused megatron tensor split into its HF parts: the parts are consecutive in `hf_shapes` order.
        split_cache: dict[str, tuple[torch.Tensor, ...]] = {}
        for key in self.hf_shapes(m, vocab_size):
            yield key, self.hf_tensor(m, vocab_size, key, get, split_cache)

    def hf_tensor(self, m: ModelConfig, vocab_size: int, key: str, get: Getter,
                  split_cache: dict[str, tuple[torch.Tensor, ...]]) -> torch.Tensor:
        if key == "model.embed_tokens.weight":
            return get("embedding.word_embeddings.weight")[:vocab_size]
        if key == "lm_head.weight":
            return get("output_layer.weight")[:vocab_size]
        if key == "model.norm.weight":
            return get("decoder.final_layernorm.weight")
        parts = key.split(".")
        i, name = int(parts[2]), ".".join(parts[3:])
        p = f"decoder.layers.{i}."

        def split_part(fused_key: str, split: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
                       index: int) -> torch.Tensor:
            if fused_key not in split_cache:
                split_cache.clear()
                split_cache[fused_key] = split(get(fused_key))
            return split_cache[fused_key][index]

        if name.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
            suffix = name.rsplit(".", 1)[1]  # weight | bias
            return split_part(p + "self_attention.linear_qkv." + suffix, lambda t: self.split_qkv(m, t),
                              "qkv".index(name[len("self_attn.")]))
        if name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            return split_part(p + "mlp.linear_fc1.weight", lambda t: tuple(t.chunk(2, dim=0)),
                              0 if name.startswith("mlp.gate") else 1)
        direct = {
            "input_layernorm.weight": "input_layernorm.weight",
            "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
            "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
            "mlp.down_proj.weight": "mlp.linear_fc2.weight",
        }
        return get(p + direct[name])

    def megatron_keys(self, m: ModelConfig) -> list[str]:
        keys = ["embedding.word_embeddings.weight"]
        for i in range(m.num_layers):
            p = f"decoder.layers.{i}."
            names = ["input_layernorm.weight", "self_attention.linear_qkv.weight"]
            names += ["self_attention.linear_qkv.bias"] if m.add_qkv_bias else []
            names += ["self_attention.linear_proj.weight", "pre_mlp_layernorm.weight", "mlp.linear_fc1.weight",
                      "mlp.linear_fc2.weight"]
            keys += [p + name for name in names]
        keys.append("decoder.final_layernorm.weight")
        if not m.tie_embeddings:
            keys.append("output_layer.weight")
        return keys

    # ------------------------------------------------------------------ dist_checkpointing keys
    # megatron state-dict key suffix (per layer) -> sharded key suffix in a torch_dist checkpoint. The local spec's
    # norms are saved under Transformer Engine's names (fused into the following linear), so checkpoints move
    # between the local and TE specs.
    _SHARDED_LAYER_KEYS = {
        "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
        "self_attention.linear_qkv.weight": "self_attention.linear_qkv.weight",
        "self_attention.linear_qkv.bias": "self_attention.linear_qkv.bias",
        "self_attention.linear_proj.weight": "self_attention.linear_proj.weight",
        "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
        "mlp.linear_fc1.weight": "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight": "mlp.linear_fc2.weight",
    }

    def sharded_location(self, key: str) -> tuple[str, int | None]:
        """megatron state-dict key -> (sharded key of the global tensor, layer index on its leading axis or None)."""
        if key.startswith("decoder.layers."):
            _, _, i, rest = key.split(".", 3)
            return "decoder.layers." + self._SHARDED_LAYER_KEYS[rest], int(i)
        return key, None

    def sharded_shapes(self, m: ModelConfig, padded_vocab: int) -> dict[str, tuple[int, ...]]:
        """Global shapes of the model's tensors in a torch_dist checkpoint (independent of the saved TP/PP)."""
        H, L, F = m.hidden_size, m.num_layers, m.ffn_hidden_size
        d = H // m.num_attention_heads
        shapes = {"embedding.word_embeddings.weight": (padded_vocab, H)}
        layer = {
            "self_attention.linear_qkv.layer_norm_weight": (L, H),
            "self_attention.linear_qkv.weight": (L, (m.num_attention_heads + 2 * m.num_query_groups) * d, H),
            "self_attention.linear_proj.weight": (L, H, m.num_attention_heads * d),
            "mlp.linear_fc1.layer_norm_weight": (L, H),
            "mlp.linear_fc1.weight": (L, 2 * F, H),
            "mlp.linear_fc2.weight": (L, H, F),
        }
        if m.add_qkv_bias:
            layer["self_attention.linear_qkv.bias"] = (L, (m.num_attention_heads + 2 * m.num_query_groups) * d)
        shapes.update({"decoder.layers." + k: v for k, v in layer.items()})
        shapes["decoder.final_layernorm.weight"] = (H,)
        if not m.tie_embeddings:
            shapes["output_layer.weight"] = (padded_vocab, H)
        return shapes

    # Linear layers whose `_extra_state` (Transformer Engine's FP8 metadata; None for the local spec) megatron saves
    # as one object per layer.
    _EXTRA_STATE_MODULES = ("self_attention.linear_proj", "self_attention.linear_qkv", "mlp.linear_fc1",
                            "mlp.linear_fc2")

    def sharded_objects(self, m: ModelConfig) -> dict[str, Any]:
        """The ShardedObjects (unique key -> data) of a model saved by one process: a fresh model has no FP8 state."""
        L = m.num_layers
        return {f"decoder.layers.{mod}._extra_state/shard_{i}_{L}": None
                for i in range(L) for mod in self._EXTRA_STATE_MODULES}

