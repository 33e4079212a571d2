"""Every check that can fail before a process group starts. Each failure is one line naming the key."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from megafin.config.errors import ConfigError
from megafin.config.schema import Config

STAGES = ("cpt", "cpt_it", "sft", "dpo")
# Which data_prep output each stage trains on (the `kind` in a packed dataset's meta.json).
PACKED_KIND = {"cpt_it": "mix", "sft": "sft", "dpo": "preference"}
FAMILIES = ("llama", "qwen2")
ATTENTION_BACKENDS = ("auto", "te", "triton", "sdpa", "local")
DTYPES = ("fp32", "bf16", "fp8")
DECAYS = ("cosine", "linear", "constant")
DATA_FORMATS = ("pretrain", "packed")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def validate(cfg: Config, world_size: int) -> None:
    """Raise ConfigError on the first problem. Needs only the config, the world size and the filesystem."""
    m, par, data = cfg.model, cfg.parallel, cfg.data
    _require(cfg.stage in STAGES, "stage", f"one of {', '.join(STAGES)}", cfg.stage)
    _require(m.family in FAMILIES, "model.family", f"one of {', '.join(FAMILIES)}", m.family)
    # Qwen2 always has q/k/v biases; Llama's only bias option also biases o_proj, which megafin does not build.
    _require(m.add_qkv_bias == (m.family == "qwen2"), "model.add_qkv_bias",
             f"{str(m.family == 'qwen2').lower()} for model.family={m.family}", m.add_qkv_bias)
    for key in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        _require(getattr(m, key) > 0, f"model.{key}", "a positive integer", getattr(m, key))
    _require(m.hidden_size % m.num_attention_heads == 0, "model.hidden_size",
             f"a multiple of model.num_attention_heads={m.num_attention_heads}", m.hidden_size)
    _require(m.num_attention_heads % m.num_query_groups == 0, "model.num_query_groups",
             f"a divisor of model.num_attention_heads={m.num_attention_heads}", m.num_query_groups)
    _require(m.rope_scaling.type in ("none", "llama3"), "model.rope_scaling.type", "none or llama3",
             m.rope_scaling.type)
    _require(m.attention_backend in ATTENTION_BACKENDS, "model.attention_backend",
             f"one of {', '.join(ATTENTION_BACKENDS)}", m.attention_backend)
    _require(m.logprob_backend in ("auto", "megatron", "triton"), "model.logprob_backend",
             "one of auto, megatron, triton", m.logprob_backend)
    _require(m.loss_positions in ("targets", "all"), "model.loss_positions", "targets or all", m.loss_positions)
    for key in ("attention_backend", "logprob_backend"):
        if getattr(m, key) == "triton":
            _require(_cuda_available() or os.environ.get("TRITON_INTERPRET") == "1", f"model.{key}",
                     "triton only on CUDA (or with TRITON_INTERPRET=1, for testing)", "triton")
    if m.attention_backend == "te":
        _require(_cuda_available() and _te_available(), "model.attention_backend",
                 "te only with CUDA and transformer_engine installed (use auto or sdpa)", "te")

    # Parallel layout.
    _require(par.tp >= 1, "parallel.tp", "a positive integer", par.tp)
    _require(par.pp >= 1, "parallel.pp", "a positive integer", par.pp)
    _require(m.num_attention_heads % par.tp == 0, "parallel.tp",
             f"a divisor of model.num_attention_heads={m.num_attention_heads}", par.tp)
    _require(m.num_query_groups % par.tp == 0, "parallel.tp",
             f"a divisor of model.num_query_groups={m.num_query_groups}", par.tp)
    _require(m.ffn_hidden_size % par.tp == 0, "parallel.tp",
             f"a divisor of model.ffn_hidden_size={m.ffn_hidden_size}", par.tp)
    _require(m.make_vocab_size_divisible_by % par.tp == 0, "parallel.tp",
             f"a divisor of model.make_vocab_size_divisible_by={m.make_vocab_size_divisible_by}", par.tp)
    _require(m.num_layers % par.pp == 0, "parallel.pp", f"a divisor of model.num_layers={m.num_layers}", par.pp)
    model_parallel = par.tp * par.pp
    _require(world_size % model_parallel == 0, "parallel.tp",
             f"tp*pp={model_parallel} to divide the world size {world_size} (world = tp*pp*dp)", par.tp)
    dp = world_size // model_parallel
    _require(par.micro_batch_size >= 1, "parallel.micro_batch_size", "a positive integer", par.micro_batch_size)
    _require(par.global_batch_size % (par.micro_batch_size * dp) == 0, "parallel.global_batch_size",
             f"a multiple of micro_batch_size*dp={par.micro_batch_size}*{dp}", par.global_batch_size)
    if par.sequence_parallel:
        _require(par.tp > 1, "parallel.sequence_parallel", "false when parallel.tp=1", True)
        _require(_cuda_available() and _te_available(), "parallel.sequence_parallel",
                 "false without CUDA and Transformer Engine (the local RMSNorm does not support it)", True)

    if cfg.stage == "dpo":
        d = cfg.dpo
        _require(d.loss in ("dpo", "rpo", "ipo"), "dpo.loss", "one of dpo, rpo, ipo", d.loss)
        _require(d.beta > 0, "dpo.beta", "a positive number", d.beta)
        _require(0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", "a number in [0, 0.5)", d.label_smoothing)
        if d.share_prompt:
            _require(m.attention_backend == "sdpa" or (m.attention_backend == "auto" and not _cuda_available()),
                     "dpo.share_prompt", "false unless model.attention_backend is sdpa (the varlen kernels have no "
                     "prefix mask)", True)
            _require(m.loss_positions == "targets" or m.logprob_backend == "triton"
                     or (m.logprob_backend == "auto" and _cuda_available()),
                     "dpo.share_prompt", "false with model.loss_positions=all and the megatron log-prob backend "
                     "(per-token RoPE positions come with megafin's log-prob model)", True)
        _require(d.reference_logps in ("precompute", "online"), "dpo.reference_logps", "precompute or online",
                 d.reference_logps)
        if d.reference_logps == "online":
            _require(par.pp == 1, "dpo.reference_logps", "precompute when parallel.pp > 1", "online")
        if d.reference:
            _require(Path(d.reference).is_dir(), "dpo.reference", "an existing checkpoint directory", d.reference)

    # Precision.
    _require(cfg.precision.dtype in DTYPES, "precision.dtype", f"one of {', '.join(DTYPES)}", cfg.precision.dtype)
    if cfg.precision.dtype == "fp8":
        _require(_cuda_available(), "precision.dtype", "fp8 only on CUDA GPUs (Hopper or newer); use bf16 or fp32",
                 "fp8")
        _require(_te_available(), "precision.dtype", "fp8 needs transformer_engine installed (pip install .[gpu])",
                 "fp8")

    # Optimizer and schedule.
    _require(cfg.optimizer.name == "adamw", "optimizer.name", "adamw", cfg.optimizer.name)
    _require(cfg.optimizer.lr > 0, "optimizer.lr", "a positive number", cfg.optimizer.lr)
    _require(0 <= cfg.optimizer.min_lr <= cfg.optimizer.lr, "optimizer.min_lr",
             f"between 0 and optimizer.lr={cfg.optimizer.lr}", cfg.optimizer.min_lr)
    _require(cfg.scheduler.decay in DECAYS, "scheduler.decay", f"one of {', '.join(DECAYS)}", cfg.scheduler.decay)
    _require(cfg.train.steps >= 1, "train.steps", "a positive integer", cfg.train.steps)
    _require(0 <= cfg.scheduler.warmup_steps <= cfg.train.steps, "scheduler.warmup_steps",
             f"between 0 and train.steps={cfg.train.steps}", cfg.scheduler.warmup_steps)
    _require(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", "at least 1", cfg.checkpoint.keep_last)
    _require(cfg.checkpoint.interval >= 0, "checkpoint.interval", "0 or a positive integer", cfg.checkpoint.interval)
    _require(cfg.train.max_bad_steps >= 1, "train.max_bad_steps", "at least 1", cfg.train.max_bad_steps)
    resume = cfg.train.resume
    if resume not in ("auto", "none"):
        _require(Path(resume).is_dir(), "train.resume", "auto, none or an existing checkpoint directory", resume)
    if cfg.train.init_from:
        _require(Path(cfg.train.init_from).is_dir(), "train.init_from", "an existing checkpoint directory",
                 cfg.train.init_from)

    # Data.
    _require(data.seq_length >= 2, "data.seq_length", "at least 2", data.seq_length)
    _require(data.seq_length <= m.max_position_embeddings, "data.seq_length",
             f"at most model.max_position_embeddings={m.max_position_embeddings}", data.seq_length)
    _require(data.format in DATA_FORMATS, "data.format", f"one of {', '.join(DATA_FORMATS)}", data.format)
    _require(bool(data.tokenizer), "data.tokenizer", "a Hugging Face tokenizer directory", "(empty)")
    _require(Path(data.tokenizer, "tokenizer_config.json").is_file() or Path(data.tokenizer, "tokenizer.json").is_file(),
             "data.tokenizer", "a directory with tokenizer.json or tokenizer_config.json", data.tokenizer)
    _require(len(data.blend) > 0, "data.blend", "at least one {path, weight} entry", "[]")
    for i, entry in enumerate(data.blend):
        _require(entry.weight > 0, f"data.blend[{i}].weight", "a positive number", entry.weight)
    if cfg.stage in PACKED_KIND:
        _require(data.format == "packed", "data.format", f"packed for stage {cfg.stage} (data_prep sft/mix/preference)",
                 data.format)
    if data.format == "pretrain":
        for i, entry in enumerate(data.blend):
            for suffix in (".bin", ".idx"):
                _require(Path(entry.path + suffix).is_file(), f"data.blend[{i}].path",
                         f"an indexed dataset prefix with {entry.path}{suffix} present (run data_prep pretrain)",
                         entry.path)
    else:
        _validate_packed(cfg)
    parts = data.split.split(",")
    ok = len(parts) == 3 and all(p.strip().replace(".", "", 1).isdigit() for p in parts)
    _require(ok and float(parts[0]) > 0, "data.split", "three non-negative numbers 'train,valid,test' with train > 0",
             data.split)
    if cfg.train.eval_interval > 0:
        _require(float(parts[1]) > 0, "data.split", "a valid share > 0 when train.eval_interval > 0", data.split)


def _validate_packed(cfg: Config) -> None:
    import json

    from megafin.data.build import packed_prefix_files

    data = cfg.data
    _require(len(data.blend) == 1, "data.blend", "exactly one packed dataset prefix for data.format=packed",
             f"{len(data.blend)} entries")
    prefix = data.blend[0].path
    for path in packed_prefix_files(prefix):
        _require(Path(path).is_file(), "data.blend[0].path",
                 f"a data_prep packed output prefix with {path} present", prefix)
    meta = json.loads(Path(f"{prefix}_meta.json").read_text())
    _require(meta.get("format") == "megafin-packed", "data.blend[0].path",
             f"{prefix}_meta.json with format megafin-packed", meta.get("format"))
    want = PACKED_KIND.get(cfg.stage)
    if want is not None:
        _require(meta.get("kind") == want, "data.blend[0].path",
                 f"packed data of kind {want!r} for stage {cfg.stage} ({prefix}_meta.json)", meta.get("kind"))
    _require(int(meta.get("seq_length", 0)) <= data.seq_length, "data.seq_length",
             f"at least the packs' seq_length={meta.get('seq_length')} ({prefix}_meta.json)", data.seq_length)


def world_size_from_env() -> int:
    """The world size a launcher promises, read before any process group exists (torchrun, then srun)."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(var)
        if value:
            return int(value)
    return 1


def _require(ok: bool, key: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")
