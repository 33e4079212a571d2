"""model.fusions: which fused kernels a model gets, settled at config load by what this machine can import.

The resolution table is checked on simulated machines (CUDA / Transformer Engine / apex availability patched), the
real CPU keeps every fusion off (the golden curves run the unfused paths), and `on` without its kernel is one
config line."""
from __future__ import annotations

import pytest

from megafin.config import ConfigError, load_config, validate
from megafin.config.load import config_from_snapshot, config_to_dict
from megafin.models import fusions as fusions_mod

ALL_OFF = {f.key: "off" for f in fusions_mod.FUSIONS}


def _machine(monkeypatch, cuda: bool, te: bool, apex: bool) -> None:
    """Pretend this machine has (or lacks) CUDA, transformer_engine and apex's CUDA extension modules."""
    apex_modules = {"fused_weight_gradient_mlp_cuda", "scaled_upper_triang_masked_softmax_cuda"}
    monkeypatch.setattr(fusions_mod, "cuda_available", lambda: cuda)
    monkeypatch.setattr(fusions_mod, "te_available", lambda: te)
    monkeypatch.setattr(fusions_mod, "module_available", lambda name: apex and name in apex_modules)


def _resolved(overrides=()) -> dict[str, str]:
    fusions = load_config(None, list(overrides)).model.fusions
    return {f.key: getattr(fusions, f.key) for f in fusions_mod.FUSIONS}


def _on(**keys: str) -> dict[str, str]:
    return {**ALL_OFF, **{k: "on" for k in keys}}


# (cuda, te, apex) -> the fusions `auto` turns on, at bf16 (what GPU recipes train in)
TABLE = [
    ((False, False, False), _on()),
    ((False, True, True), _on()),  # libraries without a GPU: nothing
    ((True, False, False), _on(bias_activation="", bias_dropout="", cross_entropy="")),
    ((True, True, False), _on(rope="", bias_activation="", bias_dropout="", cross_entropy="")),
    ((True, True, True), _on(rope="", bias_activation="", bias_dropout="", cross_entropy="", masked_softmax="",
                             gradient_accumulation="")),
]


@pytest.mark.parametrize("machine,expected", TABLE, ids=["cpu", "cpu+te+apex", "cuda", "cuda+te", "cuda+te+apex"])
def test_auto_resolves_to_what_the_machine_can_run(monkeypatch, machine, expected):
    _machine(monkeypatch, *machine)
    assert _resolved(["precision.dtype=bf16"]) == expected
    # the TransformerConfig flags follow, cross entropy with TE's kernel where TE is there
    cfg = load_config(None, ["precision.dtype=bf16"])
    flags = fusions_mod.transformer_config_flags(cfg.model.fusions, cfg.precision.dtype)
    assert {f.key: flags[f.config_field] for f in fusions_mod.FUSIONS} == {k: v == "on" for k, v in expected.items()}
    if expected["cross_entropy"] == "on":
        assert flags["cross_entropy_fusion_impl"] == ("te" if machine[1] else "native")
    # persist_layer_norm never: megafin's families use RMSNorm
    assert expected["persist_layer_norm"] == "off"


@pytest.mark.parametrize("te", [False, True], ids=["native", "te"])
def test_fused_cross_entropy_only_where_it_keeps_the_gradients_dtype(monkeypatch, te):
    """megatron-core's own fused cross entropy returns bf16 logit gradients: an fp32 or fp16 run keeps it off unless
    TE's kernel is the one that runs (the GPU check saw an fp32 RPO run drift 1.8e-3 from the unfused loss)."""
    _machine(monkeypatch, True, te, False)
    for dtype, on in (("bf16", True), ("fp8", True), ("fp32", te), ("fp16", te)):
        assert _resolved([f"precision.dtype={dtype}"])["cross_entropy"] == ("on" if on else "off"), dtype
    lines = validate_lines(["precision.dtype=fp32", "model.fusions.cross_entropy=on"], "model.fusions")
    assert lines == ([] if te else [
        "model.fusions.cross_entropy: expected auto or off here (without Transformer Engine the fused kernel returns "
        "bf16 gradients, and precision.dtype is fp32; it needs fused vocab-parallel cross entropy (TE's kernel with "
        "TE, else megatron-core's compiled one; model.logprob_backend=megatron only)), got 'on'"])


def test_megatron_cores_fused_cross_entropy_still_returns_bf16_gradients():
    """What the rule above stands on (megafin/runtime/mcore_internals.py lists it): when a megatron-core upgrade
    keeps the logits' dtype, this fails and `_cross_entropy_keeps_dtype` can go."""
    import inspect

    import torch
    from megatron.core.fusions import fused_cross_entropy

    # the Python function under torch.compile's wrapper, or under megafin's deferred one (runtime/deferred_compile.py)
    fn = inspect.unwrap(fused_cross_entropy.calculate_gradients)
    softmax = torch.softmax(torch.randn(6, 5, dtype=torch.float32), -1)
    grad = fn(softmax, torch.ones(6), torch.zeros(6, dtype=torch.bool), torch.randint(0, 5, (6,)))
    assert grad.dtype == torch.bfloat16


def test_this_cpu_keeps_every_fusion_off_in_the_built_config():
    from megafin.models.gpt import transformer_config

    assert _resolved() == ALL_OFF
    tc = transformer_config(load_config(None, []))
    assert not any(getattr(tc, f.config_field) for f in fusions_mod.FUSIONS)


def test_all_off_and_per_fusion_overrides(monkeypatch):
    _machine(monkeypatch, True, True, True)
    assert _resolved(["model.fusions.all=off"]) == ALL_OFF
    assert _resolved(["model.fusions.all=off", "model.fusions.rope=on"]) == _on(rope="")
    assert _resolved(["model.fusions.bias_dropout=off"])["bias_dropout"] == "off"
    assert validate_lines(["model.fusions.all=off", "model.fusions.rope=on"], "model.fusions") == []


def validate_lines(overrides, prefix: str) -> list[str]:
    """The validation lines about `prefix` (the rest of a data-less config fails on its own keys)."""
    with pytest.raises(ConfigError) as err:
        validate(load_config(None, overrides), world_size=1)
    return [line for line in err.value.lines if line.startswith(prefix)]


def test_on_without_the_kernel_and_bad_values_are_one_line_each(monkeypatch):
    _machine(monkeypatch, True, False, False)
    assert validate_lines(["model.fusions.rope=on", "model.fusions.gradient_accumulation=on",
                           "model.fusions.cross_entropy=maybe", "model.fusions.all=on"], "model.fusions") == [
        "model.fusions.all: expected auto or off, got 'on'",
        "model.fusions.rope: expected auto or off here (transformer_engine is not importable; it needs Transformer "
        "Engine's fused RoPE (bshd and packed thd)), got 'on'",
        "model.fusions.gradient_accumulation: expected auto or off here (fused_weight_gradient_mlp_cuda is not "
        "importable (NVIDIA apex built with --cpp_ext --cuda_ext); it needs weight gradients accumulated into the "
        "fp32 main_grad by the GEMM (apex's fused_weight_gradient_mlp_cuda)), got 'on'",
        "model.fusions.cross_entropy: expected one of auto, on, off, got 'maybe'",
    ]


def test_a_checkpoints_fusions_are_settled_anew_on_the_loading_machine(monkeypatch):
    _machine(monkeypatch, True, True, True)
    snapshot = config_to_dict(load_config(None, []))
    assert snapshot["model"]["fusions"]["rope"] == "on"
    monkeypatch.undo()
    assert {k: v for k, v in config_to_dict(config_from_snapshot(snapshot))["model"]["fusions"].items()
            if k != "all"} == ALL_OFF


def test_bare_yaml_on_off_are_switch_values_and_the_config_dumps():
    import yaml

    cfg = load_config(None, ["model.fusions.all=off", "model.fusions.rope=on"])
    assert (cfg.model.fusions.all, cfg.model.fusions.rope) == ("off", "on")
    dumped = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))  # config.yaml round-trips
    assert dumped["model"]["fusions"]["rope"] == "on"
