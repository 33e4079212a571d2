"""Recipes + overrides load into the typed schema; bad configs are rejected with one line naming the key."""
from __future__ import annotations

import subprocess
import time

import pytest

from megafin.config import ConfigError, load_config, validate
from tests.helpers import PY, REPO, TINY_RECIPE, data_overrides


def test_recipe_and_overrides(tiny_data):
    cfg = load_config(TINY_RECIPE, ["parallel.tp=2", "train.steps=7", "optimizer.lr=1e-3", "run_dir=/tmp/x",
                                    "model.rope_scaling.type=llama3", *data_overrides(tiny_data)])
    assert (cfg.parallel.tp, cfg.train.steps, cfg.optimizer.lr, cfg.run_dir) == (2, 7, 1e-3, "/tmp/x")
    assert cfg.model.rope_scaling.type == "llama3" and cfg.data.blend[1].weight == 0.3
    validate(cfg, world_size=2)


def test_qwen2_family_has_qkv_bias(tiny_data):
    cfg = load_config(TINY_RECIPE, ["model.family=qwen2", "model.add_qkv_bias=true", *data_overrides(tiny_data)])
    validate(cfg, world_size=1)
    assert cfg.model.add_qkv_bias


BAD = [
    (["model.hiden_size=128"], 1, "model.hiden_size: unknown key"),
    (["parallel.tp=three"], 1, "parallel.tp: expected an integer"),
    (["parallel.tp=3"], 3, "parallel.tp: expected a divisor of model.num_attention_heads=8"),
    (["parallel.tp=8", "model.num_query_groups=4"], 8, "parallel.tp: expected a divisor of model.num_query_groups=4"),
    (["parallel.pp=3"], 3, "parallel.pp: expected a divisor of model.num_layers=4"),
    (["parallel.tp=2"], 3, "parallel.tp: expected tp*pp=2 to divide the world size 3"),
    (["parallel.global_batch_size=6", "parallel.micro_batch_size=4"], 1, "parallel.global_batch_size: expected a multiple"),
    (["data.seq_length=1024"], 1, "data.seq_length: expected at most model.max_position_embeddings=512"),
    (["data.blend=[{path: /nonexistent/corpus_text_document, weight: 1.0}]"], 1, "data.blend[0].path: expected an indexed dataset prefix"),
    (["precision.dtype=fp8"], 1, "precision.dtype: expected fp8 only on CUDA"),
    (["precision.dtype=fp16"], 1, "precision.dtype: expected one of fp32, bf16, fp8"),
    (["data.tokenizer=/nonexistent/tok"], 1, "data.tokenizer: expected a directory with tokenizer.json"),
    (["train.resume=/nonexistent/ckpt"], 1, "train.resume: expected auto, none or an existing checkpoint directory"),
    (["model.attention_backend=flash"], 1, "model.attention_backend: expected one of"),
    (["model.family=gemma"], 1, "model.family: expected one of llama, qwen2"),
    (["model.family=qwen2"], 1, "model.add_qkv_bias: expected true for model.family=qwen2, got False"),
    (["model.add_qkv_bias=true"], 1, "model.add_qkv_bias: expected false for model.family=llama, got True"),
    (["scheduler.warmup_steps=500"], 1, "scheduler.warmup_steps: expected between 0 and train.steps=40"),
    (["optimizer.min_lr=1.0"], 1, "optimizer.min_lr: expected between 0 and optimizer.lr"),
    (["stage=rlhf"], 1, "stage: expected one of"),
    (["train.collective_timeout_s=0"], 1, "train.collective_timeout_s: expected a positive number of seconds"),
    (["train.host_memory=keep"], 1, "train.host_memory: expected one of reuse, release"),
    (["train.steps"], 1, "override: 'train.steps' is not of the form key=value"),
]


@pytest.mark.parametrize("overrides,world,message", BAD, ids=[b[2].split(":")[0] + f"-{i}" for i, b in enumerate(BAD)])
def test_invalid_config_rejected_with_one_line(overrides, world, message, tiny_data):
    with pytest.raises(ConfigError) as err:
        cfg = load_config(TINY_RECIPE, [*data_overrides(tiny_data), *overrides])
        validate(cfg, world_size=world)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recipe: file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_torchrun_rejects_bad_config_before_any_process_group(tiny_data):
    """Under torchrun with 2 ranks, a layout that cannot fit fails fast: one line (from rank 0), no rendezvous."""
    cmd = [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "megafin.train", str(TINY_RECIPE), *data_overrides(tiny_data), "parallel.tp=2", "parallel.pp=2"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("megafin: config error:")]
    assert len(lines) == 1 and all(line == "megafin: config error: parallel.tp: expected tp*pp=4 to divide the world size 2 "
                                 "(world = tp*pp*dp), got 2" for line in lines), proc.stderr[-3000:]
    assert "parameters on this rank" not in proc.stdout  # training never began
    assert time.time() - t0 < 120
