"""Tensors of Hugging Face's Llama-layout decoder checkpoints <-> megafin's megatron-core GPTModel: the mapping the
Llama and Qwen2 families share (a base for their adapters; each family adds its config.json translation).

| megatron-core GPTModel (megatron_keys)              | Hugging Face                                         |
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
a round trip is bit-exact. The tensor mapping follows the ModelConfig (`add_qkv_bias`, `tie_embeddings`).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from megafin.config.schema import ModelConfig
from megafin.models import megatron_keys as mk
from megafin.models.state_dict_adapter import Getter

# HF per-layer key suffix -> megatron per-layer key suffix, for the tensors that map one to one.
_DIRECT = {
    "input_layernorm.weight": mk.INPUT_NORM,
    "self_attn.o_proj.weight": mk.PROJ,
    "post_attention_layernorm.weight": mk.PRE_MLP_NORM,
    "mlp.down_proj.weight": mk.FC2,
}


class HFDecoderAdapter:
    """The tensor half of a StateDictAdapter; subclasses set `family` and add `model_config` / `hf_config`."""

    family: str

    def __init__(self, architecture: str) -> None:
        self.architecture = architecture

    # ------------------------------------------------------------------ shapes
    def hf_shapes(self, m: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
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
        return {"lm_head.weight"} if m.tie_embeddings else set()

    # ------------------------------------------------------------------ tensors
    @staticmethod
    def _qkv_sizes(m: ModelConfig) -> tuple[int, int, int]:
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
        yield mk.EMBEDDING, self._pad_rows(get("model.embed_tokens.weight"), padded_vocab)
        for i in range(m.num_layers):
            h = f"model.layers.{i}."
            yield mk.layer_key(i, mk.INPUT_NORM), get(h + "input_layernorm.weight")
            yield mk.layer_key(i, mk.QKV), self.fuse_qkv(
                m, get(h + "self_attn.q_proj.weight"), get(h + "self_attn.k_proj.weight"),
                get(h + "self_attn.v_proj.weight"))
            if m.add_qkv_bias:
                yield mk.layer_key(i, mk.QKV_BIAS), self.fuse_qkv(
                    m, get(h + "self_attn.q_proj.bias"), get(h + "self_attn.k_proj.bias"),
                    get(h + "self_attn.v_proj.bias"))
            yield mk.layer_key(i, mk.PROJ), get(h + "self_attn.o_proj.weight")
            yield mk.layer_key(i, mk.PRE_MLP_NORM), get(h + "post_attention_layernorm.weight")
            yield mk.layer_key(i, mk.FC1), torch.cat([get(h + "mlp.gate_proj.weight"),
                                                      get(h + "mlp.up_proj.weight")], dim=0)
            yield mk.layer_key(i, mk.FC2), get(h + "mlp.down_proj.weight")
        yield mk.FINAL_NORM, get("model.norm.weight")
        if not m.tie_embeddings:
            yield mk.OUTPUT, self._pad_rows(get("lm_head.weight"), padded_vocab)

    def to_hf(self, m: ModelConfig, vocab_size: int, get: Getter) -> Iterator[tuple[str, torch.Tensor]]:
        # The last fused megatron tensor split into its HF parts: the parts are consecutive in `hf_shapes` order.
        split_cache: dict[str, tuple[torch.Tensor, ...]] = {}
        for key in self.hf_shapes(m, vocab_size):
            yield key, self.hf_tensor(m, vocab_size, key, get, split_cache)

    def hf_tensor(self, m: ModelConfig, vocab_size: int, key: str, get: Getter,
                  split_cache: dict[str, tuple[torch.Tensor, ...]]) -> torch.Tensor:
        if key == "model.embed_tokens.weight":
            return get(mk.EMBEDDING)[:vocab_size]
        if key == "lm_head.weight":
            return get(mk.OUTPUT)[:vocab_size]
        if key == "model.norm.weight":
            return get(mk.FINAL_NORM)
        parts = key.split(".")
        i, name = int(parts[2]), ".".join(parts[3:])

        def split_part(fused_key: str, split: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
                       index: int) -> torch.Tensor:
            if fused_key not in split_cache:
                split_cache.clear()
                split_cache[fused_key] = split(get(fused_key))
            return split_cache[fused_key][index]

        if name.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
            fused = mk.QKV_BIAS if name.endswith(".bias") else mk.QKV
            return split_part(mk.layer_key(i, fused), lambda t: self.split_qkv(m, t),
                              "qkv".index(name[len("self_attn.")]))
        if name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            return split_part(mk.layer_key(i, mk.FC1), lambda t: tuple(t.chunk(2, dim=0)),
                              0 if name.startswith("mlp.gate") else 1)
        return get(mk.layer_key(i, _DIRECT[name]))
