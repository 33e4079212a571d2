"""Every check that can fail before a process group starts. Each failure is one line naming the key."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Optional

from data_prep.outputs import check_complete, file_creation_error
from megafin.config.errors import ConfigError
from megafin.config.schema import Config
from megafin.models.backends import (ATTENTION_BACKENDS, CONTEXT_PARALLEL_BACKENDS, LOGPROB_BACKENDS,
                                     cuda_available, te_available)
from megafin.models.fusions import fusion_problems
from megafin.models.layout import layout_problems
from megafin.models.registry import FAMILIES
from megafin.runtime.host_malloc import HOST_MEMORY
from megafin.runtime.run_dir import checkpoint_overwrite_problem
from megafin.train.torch_adamw import TORCH_ADAMW_KERNELS

DTYPES = ("fp32", "bf16", "fp8")
DECAYS = ("cosine", "linear", "constant")
DATA_FORMATS = ("pretrain", "packed")
RECOMPUTE = ("none", "selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")
# megatron-core's cp_comm_type values (Transformer Engine's context-parallel exchanges)
CP_COMM_TYPES = ("p2p", "a2a", "all_gather", "a2a+p2p")
# megatron-core's recompute_modules that a dense (non-MoE, non-MLA) decoder layer has
RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm")
# megatron-core indexed_dataset._INDEX_HEADER: the first bytes of every .idx file.
_INDEX_MAGIC = b"MMIDIDX\x00\x00"


def validate(cfg: Config, world_size: int, on_this_machine: bool = True) -> None:
    """Raise ConfigError listing every problem found, one line each. Needs only the config, the world size and the
    filesystem. A check that depends on a value already reported bad is skipped (one cause, one line).
    on_this_machine=False checks a recipe for the cluster it is meant for (e.g. an 8B recipe on a laptop): the checks
    of this machine's files (data, tokenizer, checkpoints, run_dir) and devices (CUDA, Transformer Engine) are left
    to the run itself, every other check is made."""
    from megafin.stages import stage_class, stage_names

    c = Checks(on_this_machine)
    names = stage_names()
    stage = stage_class(cfg.stage) if c.require(cfg.stage in names, "stage", f"one of {', '.join(names)}",
                                                 cfg.stage) else None
    if c.on_this_machine:
        _validate_run_dir(c, cfg.run_dir)
    else:
        c.require(bool(cfg.run_dir), "run_dir", "a directory path", cfg.run_dir)
    _validate_model(c, cfg.model)
    # model.fusions.<key>: a bad value, or `on` without its kernel on this machine at this precision
    c.errors.extend(fusion_problems(cfg.model.fusions, cfg.precision.dtype))
    _validate_parallel(c, cfg, world_size)
    _validate_recompute(c, cfg)
    if stage is not None:
        stage.validate(c, cfg)
    _validate_precision(c, cfg)
    _validate_schedule(c, cfg)
    _validate_data(c, cfg, stage)
    if c.on_this_machine and (problem := checkpoint_overwrite_problem(cfg)):  # megafin/runtime/run_dir.py
        c.errors.append(problem)
    from megafin.eval.in_training import check as check_training_eval

    c.errors.extend(check_training_eval(cfg))  # train.eval_tasks / eval_every / eval_limit / eval_data_dir
    c.raise_if_any()


class Checks:
    """Collects every failed check as one `key: expected ..., got ...` line."""

    def __init__(self, on_this_machine: bool = True) -> None:
        self.errors: list[str] = []
        self.on_this_machine = on_this_machine  # False: skip checks of this machine's files and devices

    def require(self, ok: bool, key: str, expected: str, got: object) -> bool:
        if not ok:
            self.errors.append(f"{key}: expected {expected}, got {got!r}")
        return bool(ok)

    def report(self, key: str, problem: Optional[str]) -> bool:
        """A problem described elsewhere (one line), filed under `key`; True when there is none."""
        if problem:
            self.errors.append(f"{key}: {problem}")
        return not problem

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigError(*self.errors)


def _validate_run_dir(c: Checks, run_dir: str) -> None:
    """run_dir must be, or be creatable as, a writable directory: found now, not at the first checkpoint."""
    if not c.require(bool(run_dir), "run_dir", "a directory path", run_dir):
        return
    path = Path(run_dir)
    if path.exists():
        if c.require(path.is_dir(), "run_dir", "a directory, not a file", run_dir):
            c.require(_writable(path), "run_dir", "a writable directory", run_dir)
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if c.require(parent.is_dir(), "run_dir", f"a path under a directory ({parent} is a file)", run_dir):
        c.require(_writable(parent), "run_dir", f"a path that can be created ({parent} is not writable)", run_dir)


def _writable(directory: Path) -> bool:
    return file_creation_error(directory) is None


def _validate_model(c: Checks, m: Any) -> None:
    if c.require(m.family in FAMILIES, "model.family", f"one of {', '.join(FAMILIES)}", m.family):
        for key, expected, got in FAMILIES[m.family].model_problems(m):
            c.require(False, key, expected, got)
    positive = {key: c.require(getattr(m, key) > 0, f"model.{key}", "a positive integer", getattr(m, key))
                for key in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size")}
    if positive["hidden_size"] and positive["num_attention_heads"]:
        c.require(m.hidden_size % m.num_attention_heads == 0, "model.hidden_size",
                  f"a multiple of model.num_attention_heads={m.num_attention_heads}", m.hidden_size)
    if positive["num_attention_heads"] and positive["num_query_groups"]:
        c.require(m.num_attention_heads % m.num_query_groups == 0, "model.num_query_groups",
                  f"a divisor of model.num_attention_heads={m.num_attention_heads}", m.num_query_groups)
    c.require(m.rope_scaling.type in ("none", "llama3"), "model.rope_scaling.type", "none or llama3",
              m.rope_scaling.type)
    c.require(m.attention_backend in ATTENTION_BACKENDS, "model.attention_backend",
              f"one of {', '.join(ATTENTION_BACKENDS)}", m.attention_backend)
    c.require(m.logprob_backend in LOGPROB_BACKENDS, "model.logprob_backend",
              f"one of {', '.join(LOGPROB_BACKENDS)}", m.logprob_backend)
    c.require(m.loss_positions in ("targets", "all"), "model.loss_positions", "targets or all", m.loss_positions)
    for key in ("attention_backend", "logprob_backend"):
        if getattr(m, key) == "triton" and c.on_this_machine:
            c.require(cuda_available() or os.environ.get("TRITON_INTERPRET") == "1", f"model.{key}",
                      "triton only on CUDA (or with TRITON_INTERPRET=1, for testing)", "triton")
    if m.attention_backend == "te" and c.on_this_machine:
        c.require(cuda_available() and te_available(), "model.attention_backend",
                  "te only with CUDA and transformer_engine installed (use auto or sdpa)", "te")


def _validate_parallel(c: Checks, cfg: Config, world_size: int) -> None:
    m, par = cfg.model, cfg.parallel
    tp_ok = c.require(par.tp >= 1, "parallel.tp", "a positive integer", par.tp)
    pp_ok = c.require(par.pp >= 1, "parallel.pp", "a positive integer", par.pp)
    for misfit in layout_problems(m, par.tp, par.pp):
        c.require(False, f"parallel.{misfit.axis}", f"a divisor of model.{misfit.key}={misfit.value}", misfit.size)
        tp_ok, pp_ok = tp_ok and misfit.axis != "tp", pp_ok and misfit.axis != "pp"
    mbs_ok = c.require(par.micro_batch_size >= 1, "parallel.micro_batch_size", "a positive integer",
                       par.micro_batch_size)
    if par.sequence_parallel and c.require(par.tp > 1, "parallel.sequence_parallel", "false when parallel.tp=1", True) \
            and c.on_this_machine:
        c.require(cuda_available() and te_available(), "parallel.sequence_parallel",
                  "false without CUDA and Transformer Engine (the local RMSNorm does not support it)", True)
    if par.overlap_param_gather:
        c.require(par.distributed_optimizer, "parallel.overlap_param_gather",
                  "false unless parallel.distributed_optimizer=true (it overlaps the optimizer's all-gather)", True)
    vpp_ok = _validate_virtual_pp(c, cfg, pp_ok)
    cp_ok = _validate_context_parallel(c, cfg, pp_ok)
    if not (tp_ok and pp_ok and cp_ok):
        return
    model_parallel = par.tp * par.pp * par.cp
    axes = "tp*pp*cp" if par.cp > 1 else "tp*pp"
    if c.require(world_size % model_parallel == 0, "parallel.tp",
                 f"{axes}={model_parallel} to divide the world size {world_size} (world = {axes}*dp)", par.tp) \
            and mbs_ok:
        dp = world_size // model_parallel
        if c.require(par.global_batch_size > 0 and par.global_batch_size % (par.micro_batch_size * dp) == 0,
                     "parallel.global_batch_size", f"a multiple of micro_batch_size*dp={par.micro_batch_size}*{dp}",
                     par.global_batch_size) and vpp_ok and par.virtual_pp > 1:
            # megatron-core's interleaved schedule runs micro-batches in groups of pp per model chunk
            micro = par.global_batch_size // (par.micro_batch_size * dp)
            c.require(micro % par.pp == 0, "parallel.global_batch_size",
                      f"a multiple of micro_batch_size*dp*pp={par.micro_batch_size}*{dp}*{par.pp} with "
                      f"parallel.virtual_pp={par.virtual_pp} (micro-batches per step divisible by pp)",
                      par.global_batch_size)


def _validate_context_parallel(c: Checks, cfg: Config, pp_ok: bool) -> bool:
    """parallel.cp / cp_comm_type: what this megafin runs under context parallelism, refused otherwise."""
    from megafin.stages import stage_class, stage_names

    m, par = cfg.model, cfg.parallel
    if not c.require(isinstance(par.cp, int) and not isinstance(par.cp, bool) and par.cp >= 1, "parallel.cp",
                     "a positive integer", par.cp):
        return False
    c.require(par.cp_comm_type in CP_COMM_TYPES, "parallel.cp_comm_type", f"one of {', '.join(CP_COMM_TYPES)}",
              par.cp_comm_type)
    if par.cp == 1:
        return True
    ok = True
    if pp_ok and cfg.data.format == "packed":
        # pipeline stages exchange fixed-size activations; padding each document to a multiple of 2*cp does not keep
        # a pack's size
        ok = c.require(par.pp == 1, "parallel.cp", f"1 with parallel.pp={par.pp} on packed data (pipeline stages "
                       f"exchange fixed-size activations, and CP pads each document; use tp, cp and dp)", par.cp)
    if cfg.stage in stage_names() and not stage_class(cfg.stage).supports_context_parallel:
        ok = c.require(False, "parallel.cp", f"1 for stage {cfg.stage} (its loss sums whole documents, which context "
                       f"parallelism splits over ranks)", par.cp) and ok
    if m.attention_backend != "auto":  # resolved before validation: auto only where a recipe is checked elsewhere
        ok = c.require(m.attention_backend in CONTEXT_PARALLEL_BACKENDS, "model.attention_backend",
                       f"one of {', '.join(CONTEXT_PARALLEL_BACKENDS)} with parallel.cp={par.cp} (te: Transformer "
                       f"Engine's CP; sdpa: all-gather of K/V)", m.attention_backend) and ok
        if m.attention_backend != "te":
            c.require(par.cp_comm_type == "p2p", "parallel.cp_comm_type",
                      f"p2p (the default) with model.attention_backend={m.attention_backend} (cp_comm_type chooses "
                      f"Transformer Engine's exchange; sdpa all-gathers K/V)", par.cp_comm_type)
    if m.attention_backend == "te" and "a2a" in par.cp_comm_type and m.num_attention_heads > 0:
        heads = m.num_attention_heads // max(par.tp, 1)
        c.require(heads % par.cp == 0, "parallel.cp", f"a divisor of the {heads} attention heads per TP rank with "
                  f"parallel.cp_comm_type={par.cp_comm_type} (a2a splits heads over CP ranks)", par.cp)
    if cfg.data.format == "pretrain" and cfg.data.seq_length >= 2:
        ok = c.require(cfg.data.seq_length % (2 * par.cp) == 0, "data.seq_length",
                       f"a multiple of 2*parallel.cp={2 * par.cp} (each CP rank holds 2 of 2*cp equal chunks)",
                       cfg.data.seq_length) and ok
    return ok


def _validate_virtual_pp(c: Checks, cfg: Config, pp_ok: bool) -> bool:
    """parallel.virtual_pp: 1, or model chunks of whole layers on a pipeline of pp > 1, for a stage that runs them."""
    from megafin.stages import stage_class, stage_names

    m, par = cfg.model, cfg.parallel
    if not c.require(isinstance(par.virtual_pp, int) and par.virtual_pp >= 1, "parallel.virtual_pp",
                     "a positive integer", par.virtual_pp):
        return False
    if par.virtual_pp == 1 or not pp_ok:
        return True
    ok = c.require(par.pp > 1, "parallel.virtual_pp", "1 when parallel.pp=1 (interleaving needs a pipeline)",
                   par.virtual_pp)
    if ok and m.num_layers > 0:
        ok = c.require(m.num_layers % (par.pp * par.virtual_pp) == 0, "parallel.virtual_pp",
                       f"a divisor of model.num_layers/pp={m.num_layers}/{par.pp} (whole layers per model chunk)",
                       par.virtual_pp)
    if ok and cfg.stage in stage_names() and not stage_class(cfg.stage).runs_model_chunks:
        ok = c.require(False, "parallel.virtual_pp", f"1 for stage {cfg.stage} (it runs one model chunk per rank)",
                       par.virtual_pp)
    return ok


def _validate_recompute(c: Checks, cfg: Config) -> None:
    m, par = cfg.model, cfg.parallel
    if not c.require(m.recompute in RECOMPUTE, "model.recompute", f"one of {', '.join(RECOMPUTE)}", m.recompute):
        return
    if m.recompute == "selective":
        bad = [name for name in m.recompute_modules if name not in RECOMPUTE_MODULES]
        if c.require(bool(m.recompute_modules) and not bad, "model.recompute_modules",
                     f"a non-empty list of {', '.join(RECOMPUTE_MODULES)}", m.recompute_modules) \
                and "layernorm" in m.recompute_modules and c.on_this_machine:
            # megatron-core 0.16's CheckpointWithoutOutput takes Transformer Engine's FP8 path even without FP8
            c.require(te_available(), "model.recompute_modules",
                      "no layernorm without transformer_engine installed (megatron-core recomputes norms through it)",
                      m.recompute_modules)
    elif m.recompute == "full":
        c.require(m.recompute_method in RECOMPUTE_METHODS, "model.recompute_method",
                  f"one of {', '.join(RECOMPUTE_METHODS)} with model.recompute=full", m.recompute_method)
        chunks = max(par.pp, 1) * max(par.virtual_pp, 1) if isinstance(par.virtual_pp, int) else 1
        per_chunk = m.num_layers // chunks if m.num_layers > 0 else 0
        if per_chunk >= 1:
            c.require(1 <= m.recompute_num_layers <= per_chunk, "model.recompute_num_layers",
                      f"between 1 and the {per_chunk} layers of a pipeline chunk "
                      f"(model.num_layers/(pp*virtual_pp)) with model.recompute=full", m.recompute_num_layers)


def _validate_precision(c: Checks, cfg: Config) -> None:
    dtype = cfg.precision.dtype
    if c.require(dtype in DTYPES, "precision.dtype", f"one of {', '.join(DTYPES)}", dtype) and dtype == "fp8" \
            and c.on_this_machine:
        if c.require(cuda_available(), "precision.dtype", "fp8 only on CUDA GPUs (Hopper or newer); use bf16 or fp32",
                     "fp8"):
            c.require(te_available(), "precision.dtype", "fp8 needs transformer_engine installed (pip install .[gpu])",
                      "fp8")


def _validate_schedule(c: Checks, cfg: Config) -> None:
    opt, train = cfg.optimizer, cfg.train
    c.require(opt.name == "adamw", "optimizer.name", "adamw", opt.name)
    c.require(opt.torch_adamw in TORCH_ADAMW_KERNELS, "optimizer.torch_adamw",
              f"one of {', '.join(TORCH_ADAMW_KERNELS)}", opt.torch_adamw)
    if c.require(opt.lr > 0, "optimizer.lr", "a positive number", opt.lr):
        c.require(0 <= opt.min_lr <= opt.lr, "optimizer.min_lr", f"between 0 and optimizer.lr={opt.lr}", opt.min_lr)
    c.require(cfg.scheduler.decay in DECAYS, "scheduler.decay", f"one of {', '.join(DECAYS)}", cfg.scheduler.decay)
    if c.require(train.steps >= 1, "train.steps", "a positive integer", train.steps):
        c.require(0 <= cfg.scheduler.warmup_steps <= train.steps, "scheduler.warmup_steps",
                  f"between 0 and train.steps={train.steps}", cfg.scheduler.warmup_steps)
    c.require(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", "at least 1", cfg.checkpoint.keep_last)
    c.require(cfg.checkpoint.interval >= 0, "checkpoint.interval", "0 or a positive integer", cfg.checkpoint.interval)
    c.require(train.max_bad_steps >= 1, "train.max_bad_steps", "at least 1", train.max_bad_steps)
    c.require(train.host_memory in HOST_MEMORY, "train.host_memory", f"one of {', '.join(HOST_MEMORY)}",
              train.host_memory)
    c.require(train.collective_timeout_s > 0, "train.collective_timeout_s", "a positive number of seconds",
              train.collective_timeout_s)
    if not c.on_this_machine:
        return
    if train.resume not in ("auto", "none"):
        c.require(Path(train.resume).is_dir(), "train.resume", "auto, none or an existing checkpoint directory",
                  train.resume)
    if train.init_from:
        c.require(Path(train.init_from).is_dir(), "train.init_from", "an existing checkpoint directory",
                  train.init_from)


def _validate_data(c: Checks, cfg: Config, stage: Any) -> None:
    m, data = cfg.model, cfg.data
    if c.require(data.seq_length >= 2, "data.seq_length", "at least 2", data.seq_length):
        c.require(data.seq_length <= m.max_position_embeddings, "data.seq_length",
                  f"at most model.max_position_embeddings={m.max_position_embeddings}", data.seq_length)
    format_ok = c.require(data.format in DATA_FORMATS, "data.format", f"one of {', '.join(DATA_FORMATS)}", data.format)
    if c.require(bool(data.tokenizer), "data.tokenizer", "a Hugging Face tokenizer directory", "(empty)") \
            and c.on_this_machine:
        c.require(Path(data.tokenizer, "tokenizer_config.json").is_file()
                  or Path(data.tokenizer, "tokenizer.json").is_file(),
                  "data.tokenizer", "a directory with tokenizer.json or tokenizer_config.json", data.tokenizer)
    blend_ok = c.require(len(data.blend) > 0, "data.blend", "at least one {path, weight} entry", "[]")
    for i, entry in enumerate(data.blend):
        c.require(entry.weight > 0, f"data.blend[{i}].weight", "a positive number", entry.weight)
    want = stage.packed_kind if stage is not None else None  # which data_prep output the stage trains on
    if want is not None and format_ok:
        format_ok = c.require(data.format == "packed", "data.format",
                              f"packed for stage {cfg.stage} (data_prep sft/mix/preference)", data.format)
    if blend_ok and format_ok:
        if data.format == "pretrain":
            for i, entry in enumerate(data.blend if c.on_this_machine else ()):
                _validate_indexed(c, f"data.blend[{i}].path", entry.path)
        else:
            _validate_packed(c, cfg, want)
    parts = data.split.split(",")
    ok = len(parts) == 3 and all(p.strip().replace(".", "", 1).isdigit() for p in parts)
    if c.require(ok and float(parts[0]) > 0, "data.split",
                 "three non-negative numbers 'train,valid,test' with train > 0", data.split) \
            and cfg.train.eval_interval > 0:
        c.require(float(parts[1]) > 0, "data.split", "a valid share > 0 when train.eval_interval > 0", data.split)


def _validate_indexed(c: Checks, key: str, prefix: str) -> None:
    """A Megatron .bin/.idx pair holding at least one sequence (an empty corpus fails here, not inside GPTDataset)."""
    for suffix in (".bin", ".idx"):
        if not c.require(Path(prefix + suffix).is_file(), key,
                         f"an indexed dataset prefix with {prefix}{suffix} present (run data_prep pretrain)", prefix):
            return
    if not c.report(key, check_complete(prefix)):
        return
    sequences = indexed_sequence_count(prefix + ".idx")
    if c.require(sequences is not None, key, f"a Megatron indexed dataset ({prefix}.idx has no MMIDIDX header)",
                 prefix):
        c.require(sequences > 0, key, f"a dataset with documents ({prefix}.idx holds none)", prefix)


def indexed_sequence_count(idx_path: str) -> Optional[int]:
    """The sequence count in a Megatron .idx header, or None when the file is not one. The header (megatron-core's
    indexed_dataset._IndexWriter): the 9-byte magic, version <Q, dtype code <B, sequence count <Q, ..."""
    try:
        with open(idx_path, "rb") as f:
            header = f.read(len(_INDEX_MAGIC) + 8 + 1 + 8)
    except OSError:
        return None
    if len(header) < 26 or header[:9] != _INDEX_MAGIC:
        return None
    return struct.unpack("<Q", header[18:26])[0]


def _validate_packed(c: Checks, cfg: Config, want: Optional[str]) -> None:
    from megafin.data.build import packed_prefix_files

    data = cfg.data
    # megatron's DotProductAttention asserts packed_seq_params is None: found by bench/gpu_check.py's stages part
    c.require(cfg.model.attention_backend != "local", "model.attention_backend",
              "auto, te, triton or sdpa with data.format=packed (megatron's local attention has no packed sequences)",
              "local")
    if not c.require(len(data.blend) == 1, "data.blend", "exactly one packed dataset prefix for data.format=packed",
                     f"{len(data.blend)} entries") or not c.on_this_machine:
        return
    prefix = data.blend[0].path
    for path in packed_prefix_files(prefix):
        if not c.require(Path(path).is_file(), "data.blend[0].path",
                         f"a data_prep packed output prefix with {path} present", prefix):
            return
    if not c.report("data.blend[0].path", check_complete(prefix)):
        return
    try:
        meta = json.loads(Path(f"{prefix}_meta.json").read_text())
    except (OSError, ValueError) as err:
        c.require(False, "data.blend[0].path", f"a readable JSON file {prefix}_meta.json", f"{type(err).__name__}")
        return
    if not c.require(isinstance(meta, dict) and meta.get("format") == "megafin-packed", "data.blend[0].path",
                     f"{prefix}_meta.json with format megafin-packed",
                     meta.get("format") if isinstance(meta, dict) else meta):
        return
    if want is not None:
        c.require(meta.get("kind") == want, "data.blend[0].path",
                  f"packed data of kind {want!r} for stage {cfg.stage} ({prefix}_meta.json)", meta.get("kind"))
    c.require(int(meta.get("seq_length", 0)) <= data.seq_length, "data.seq_length",
              f"at least the packs' seq_length={meta.get('seq_length')} ({prefix}_meta.json)", data.seq_length)
    c.require(int(meta.get("num_packs", 1)) > 0, "data.blend[0].path",
              f"packed data with at least one pack ({prefix}_meta.json has num_packs 0)", prefix)


def world_size_from_env() -> int:
    """The world size a launcher promises, read before any process group exists (torchrun, then srun)."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(var)
        if value:
            return int(value)
    return 1
