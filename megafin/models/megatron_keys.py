"""megatron-core GPTModel's state-dict and on-disk (torch_dist) key layout: the one module every family's adapter and
the checkpoint writer/reader of `megafin convert` use. It depends on the ModelConfig alone (sizes, `add_qkv_bias`,
`tie_embeddings`), never on the family.

State-dict keys are those of megafin's local-spec GPTModel at TP=1/PP=1. In a torch_dist checkpoint each per-layer
tensor is one global tensor stacked on a leading layer axis, and the local spec's norms are saved under Transformer
Engine's names (fused into the following linear), so checkpoints move between the local and TE specs.
"""
from __future__ import annotations

from typing import Any

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"  # absent with tied embeddings

# Per-layer key suffixes (the key is `decoder.layers.{i}.` + suffix).
INPUT_NORM = "input_layernorm.weight"
QKV = "self_attention.linear_qkv.weight"  # q/k/v fused per query group: [q heads of group g; k head g; v head g]
QKV_BIAS = "self_attention.linear_qkv.bias"  # only with model.add_qkv_bias
PROJ = "self_attention.linear_proj.weight"
PRE_MLP_NORM = "pre_mlp_layernorm.weight"
FC1 = "mlp.linear_fc1.weight"  # [gate; up]
FC2 = "mlp.linear_fc2.weight"

# State-dict key suffix (per layer) -> sharded key suffix in a torch_dist checkpoint.
_SHARDED_LAYER_KEYS = {
    INPUT_NORM: "self_attention.linear_qkv.layer_norm_weight",
    QKV: QKV,
    QKV_BIAS: QKV_BIAS,
    PROJ: PROJ,
    PRE_MLP_NORM: "mlp.linear_fc1.layer_norm_weight",
    FC1: FC1,
    FC2: FC2,
}

# Linear layers whose `_extra_state` (Transformer Engine's FP8 metadata; None for the local spec) megatron saves as
# one object per layer.
_EXTRA_STATE_MODULES = ("self_attention.linear_proj", "self_attention.linear_qkv", "mlp.linear_fc1",
                        "mlp.linear_fc2")


def layer_key(i: int, suffix: str) -> str:
    return f"decoder.layers.{i}.{suffix}"


def layer_suffixes(m: Any) -> list[str]:
    """The per-layer state-dict key suffixes of this model, in state-dict order."""
    return [INPUT_NORM, QKV, *([QKV_BIAS] if m.add_qkv_bias else []), PROJ, PRE_MLP_NORM, FC1, FC2]


def megatron_keys(m: Any) -> list[str]:
    """Every state-dict key of the model (without `_extra_state`), in state-dict order."""
    keys = [EMBEDDING]
    for i in range(m.num_layers):
        keys += [layer_key(i, suffix) for suffix in layer_suffixes(m)]
    keys.append(FINAL_NORM)
    if not m.tie_embeddings:
        keys.append(OUTPUT)
    return keys


def sharded_location(key: str) -> tuple[str, int | None]:
    """State-dict key -> (sharded key of the global tensor, layer index on its leading axis or None)."""
    if key.startswith("decoder.layers."):
        _, _, i, rest = key.split(".", 3)
        return "decoder.layers." + _SHARDED_LAYER_KEYS[rest], int(i)
    return key, None


def sharded_shapes(m: Any, padded_vocab: int) -> dict[str, tuple[int, ...]]:
    """Global shapes of the model's tensors in a torch_dist checkpoint (independent of the saved TP/PP)."""
    H, L, F = m.hidden_size, m.num_layers, m.ffn_hidden_size
    d = H // m.num_attention_heads
    qkv_rows = (m.num_attention_heads + 2 * m.num_query_groups) * d
    shapes = {EMBEDDING: (padded_vocab, H)}
    layer = {
        _SHARDED_LAYER_KEYS[INPUT_NORM]: (L, H),
        QKV: (L, qkv_rows, H),
        PROJ: (L, H, m.num_attention_heads * d),
        _SHARDED_LAYER_KEYS[PRE_MLP_NORM]: (L, H),
        FC1: (L, 2 * F, H),
        FC2: (L, H, F),
    }
    if m.add_qkv_bias:
        layer[QKV_BIAS] = (L, qkv_rows)
    shapes.update({"decoder.layers." + k: v for k, v in layer.items()})
    shapes[FINAL_NORM] = (H,)
    if not m.tie_embeddings:
        shapes[OUTPUT] = (padded_vocab, H)
    return shapes


def sharded_objects(m: Any) -> dict[str, Any]:
    """The ShardedObjects (unique key -> data) of a model saved by one process: a fresh model has no FP8 state."""
    L = m.num_layers
    return {f"decoder.layers.{mod}._extra_state/shard_{i}_{L}": None
            for i in range(L) for mod in _EXTRA_STATE_MODULES}
