"""Every real-scale recipe validates at the world sizes it is meant for, in bf16 and FP8, without building a model or
touching data (validate(..., on_this_machine=False)), and `megafin plan` says its layout fits 80 GB H100s."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO

# recipe -> the world sizes it is written for (GPUs: 8 per node)
SCALE_RECIPES = {
    "llama3_8b/cpt_it_group1.yaml": (8, 16),
    "llama3_8b/cpt_it_group2.yaml": (8, 16),
    "llama3_8b/rpo.yaml": (8, 16),
    "qwen2_5_7b/cpt_it.yaml": (8, 16),
    "qwen2_5_7b/rpo.yaml": (8, 16),
    "llama3_70b/cpt_it.yaml": (64,),
    "llama3_70b/rpo.yaml": (64,),
}
CASES = [(recipe, world, dtype) for recipe, worlds in SCALE_RECIPES.items() for world in worlds
         for dtype in ("bf16", "fp8")]


def test_every_scale_recipe_is_listed():
    on_disk = {str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").glob("*/*.yaml")
               if p.parent.name not in ("tiny", "pipeline")}
    assert on_disk == set(SCALE_RECIPES)


@pytest.mark.parametrize("recipe,world,dtype", CASES, ids=[f"{r}-{w}gpu-{d}" for r, w, d in CASES])
def test_scale_recipe_validates_and_fits(recipe, world, dtype):
    from megafin.config import load_config, validate
    from megafin.config.load import read_config
    from megafin.plan import GPUS, Workload, estimate, recipe_layout

    path = REPO / "recipes" / recipe
    validate(load_config(path, [f"precision.dtype={dtype}"]), world_size=world, on_this_machine=False)
    cfg = read_config(path, [f"precision.dtype={dtype}"])
    e = estimate(Workload(cfg=cfg, vocab_size=cfg.model.vocab_size, gpus=world, gpu=GPUS["h100"], efficiency=0.4),
                 recipe_layout(cfg))
    assert e.fits, f"{recipe} at {world} GPUs, {dtype}: {e.total_gib:.1f} GiB > {e.usable_gib:.1f} usable"


def test_findap_settings():
    from megafin.config.load import read_config

    for name in ("llama3_8b/cpt_it_group1.yaml", "llama3_8b/cpt_it_group2.yaml"):
        cfg = read_config(REPO / "recipes" / name)
        assert cfg.data.seq_length * cfg.parallel.global_batch_size == 128_000  # 128K tokens per step
        o = cfg.optimizer
        assert (o.lr, o.weight_decay, o.beta1, o.beta2) == (5e-6, 0.1, 0.9, 0.95)
    g1 = read_config(REPO / "recipes/llama3_8b/cpt_it_group1.yaml")
    g2 = read_config(REPO / "recipes/llama3_8b/cpt_it_group2.yaml")
    assert g1.scheduler.warmup_steps == pytest.approx(0.1 * g1.train.steps, rel=0.01)
    assert g2.scheduler.warmup_steps == pytest.approx(0.5 * g2.train.steps, rel=0.01)
    assert g1.train.steps * 128_000 == pytest.approx(3.84e9, rel=0.01)
    assert g2.train.steps * 128_000 == pytest.approx(1.66e9, rel=0.01)
    rpo = read_config(REPO / "recipes/llama3_8b/rpo.yaml")
    assert (rpo.dpo.loss, rpo.dpo.beta, rpo.dpo.rpo_alpha, rpo.optimizer.lr, rpo.data.seq_length) == \
        ("rpo", 0.1, 1.0, 5e-7, 2048)


def test_on_this_machine_still_checks_files(tmp_path):
    """The same recipe on this machine fails on its placeholder paths, one line each (nothing is dropped)."""
    from megafin.config import ConfigError, load_config, validate

    cfg = load_config(REPO / "recipes/llama3_8b/rpo.yaml", [f"run_dir={tmp_path}/run"])
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=8)
    keys = {line.split(":")[0] for line in err.value.lines}
    assert {"data.tokenizer", "data.blend[0].path", "train.init_from"} <= keys
    assert all("\n" not in line for line in err.value.lines)


def test_recipes_readme_names_every_recipe():
    text = Path(REPO / "recipes" / "README.md").read_text()
    for recipe in SCALE_RECIPES:
        assert recipe in text
