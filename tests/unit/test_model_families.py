"""The family registry and the `auto` backend rules, in process and without megatron-core."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from megafin.config.schema import ModelConfig, RopeScalingConfig
from megafin.models.backends import resolve_backends
from megafin.models.registry import FAMILIES, adapter_for_hf_config, adapter_for_model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_exports_a_config_json_that_imports_back(family):
    """to-hf's config.json for a family's ModelConfig is read back by from-hf as the same ModelConfig."""
    spec = FAMILIES[family]
    m = ModelConfig(family=family, add_qkv_bias=spec.qkv_bias, num_layers=2, hidden_size=32, num_attention_heads=4,
                    num_query_groups=2, ffn_hidden_size=48, vocab_size=100, tie_embeddings=True,
                    rope_scaling=RopeScalingConfig(type="llama3"))
    exporter = adapter_for_model(m, "test")
    assert exporter.family == family and exporter.architecture == spec.architectures[0]
    hf = exporter.hf_config(m, 100, "bfloat16", 1, 2)
    importer = adapter_for_hf_config(hf, "config.json")
    back = importer.model_config(hf, "config.json")
    keep = {"init_std", "make_vocab_size_divisible_by", "attention_backend", "logprob_backend", "loss_positions"}
    assert {k: v for k, v in dataclasses.asdict(back).items() if k not in keep} == \
        {k: v for k, v in dataclasses.asdict(m).items() if k not in keep}
    assert spec.model_problems(m) == []
    assert spec.model_problems(dataclasses.replace(m, add_qkv_bias=not spec.qkv_bias))[0][0] == "model.add_qkv_bias"


def test_auto_backends_follow_the_machine():
    m = ModelConfig()
    want = (("te", "triton") if _te() else ("triton", "triton")) if torch.cuda.is_available() else ("sdpa", "megatron")
    assert resolve_backends(m) == want
    assert resolve_backends(dataclasses.replace(m, attention_backend="local", logprob_backend="megatron")) == \
        ("local", "megatron")


def _te() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformer_engine") is not None
