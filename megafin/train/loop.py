"""The one training loop, on megatron-core's own machinery (schedules, DDP, optimizer, dist checkpoints)."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import yaml

from megafin.checkpoint.errors import CheckpointError
from megafin.checkpoint.integrity import check_readable
from megafin.checkpoint.manager import (Progress, checkpoint_root, checkpoint_to_resume, load_checkpoint,
                                        save_checkpoint)
from megafin.config.load import config_to_dict
from megafin.config.schema import Config
from megafin.eval.errors import EvalError
from megafin.metrics.cuda_memory import StepMemory
from megafin.runtime.cpu_bf16 import slow_bf16_warning
from megafin.runtime.distributed import LaunchEnv, collective_device, init_distributed, shutdown_distributed
from megafin.runtime.exit_codes import EXIT_CONFIG_ERROR, EXIT_DIVERGED, EXIT_OK, EXIT_SIGNAL_CHECKPOINTED
from megafin.runtime.fault_injection import nan_steps as injected_nan_steps, with_nan_output
from megafin.runtime.host_malloc import keep_freed_memory
from megafin.runtime.run_dir import RunDirBusy, discard_earlier_checkpoints, lock_run_dir
from megafin.runtime.stop_request import STOP_REQUEST, StopInPreparation
from megafin.train.flops import (PeakFlops, attended_pairs, attention_flops_per_pair, layer_flops_per_token,
                                 logit_positions, logits_flops_per_position)


# optimizer.name -> megatron-core's name for it: its "adam" with decoupled_weight_decay (the default) is AdamW
# (torch.optim.AdamW, or TE/Apex FusedAdam with adam_w_mode).
MEGATRON_OPTIMIZER = {"adamw": "adam"}


class TrainingDiverged(RuntimeError):
    pass


class BadStepTracker:
    """Counts consecutive non-finite losses; the run stops when there are `limit` in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0

    def observe(self, loss: float) -> bool:
        """True if the step's update should be applied (the loss is finite)."""
        if math.isfinite(loss):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        return False

    def check(self, step: int) -> None:
        """Raise TrainingDiverged once `limit` non-finite losses came in a row (after the step was logged)."""
        if self.in_a_row >= self.limit:
            raise TrainingDiverged(
                f"train: {self.in_a_row} consecutive non-finite losses (last at step {step}); stopping. "
                f"Lower optimizer.lr, check the data, or resume from an earlier checkpoint "
                f"(train.max_bad_steps={self.limit})")


def run_training(cfg: Config, launch: LaunchEnv) -> int:
    """Start process groups, train, and return the process exit code."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    init_distributed(launch, cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed, cfg.train.collective_timeout_s,
                     cfg.parallel.virtual_pp, cfg.parallel.cp)
    lock = None
    try:
        # After the process groups, so that every rank learns rank 0 did not get the lock and exits by itself.
        lock = lock_run_dir(cfg.run_dir, is_rank0=dist.get_rank() == 0)
        trainer = Trainer(cfg, launch)
        if lock is not None and (removed := discard_earlier_checkpoints(cfg)):
            trainer._say(f"checkpoint.overwrite=true: removed {removed} checkpoint(s) of an earlier run in "
                         f"{Path(cfg.run_dir) / 'checkpoints'}")
        return trainer.fit()
    except RunDirBusy as err:
        if dist.get_rank() == 0:
            print(f"megafin: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    except StopInPreparation as err:  # a signal before the first step: the preparation's work so far is kept
        if dist.get_rank() == 0:
            print(f"megafin: {err}; exit {EXIT_SIGNAL_CHECKPOINTED}", flush=True)
        return EXIT_SIGNAL_CHECKPOINTED
    except CheckpointError as err:  # every rank finds the same problem: one line, from rank 0
        if dist.get_rank() == 0:
            print(f"megafin: checkpoint error: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    except EvalError as err:  # train.eval_tasks' files, read by every rank: one line, from rank 0
        if dist.get_rank() == 0:
            print(f"megafin: eval error: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    finally:
        shutdown_distributed()
        if lock is not None:
            lock.release()


class Trainer:
    def __init__(self, cfg: Config, launch: LaunchEnv) -> None:
        from megatron.core import parallel_state
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        from megafin.data.batches import MicroBatches
        from megafin.data.build import build_datasets
        from megafin.data.tokenizer import HFTokenizerAdapter
        from megafin.models.gpt import build_model
        from megafin.train.model_chunks import ModelChunks
        from megafin.train.optimizer_fixes import fix_torch_adam_step_state
        from megafin.train.torch_adamw import select_torch_adamw_kernel

        self.cfg = cfg
        self.launch = launch
        if cfg.train.host_memory == "reuse" and collective_device().type == "cpu":
            keep_freed_memory()  # before the model's first allocations
        self.ps = parallel_state
        self.is_logger = dist.get_rank() == 0
        slow = slow_bf16_warning(cfg.precision.dtype, collective_device().type)
        if slow:
            self._say(f"warning: {slow}")
        par = cfg.parallel
        self.dp_size = parallel_state.get_data_parallel_world_size()
        tokenizer = HFTokenizerAdapter(cfg.data.tokenizer)
        self.vocab_size = cfg.model.vocab_size or tokenizer.vocab_size
        # With train.init_from every weight is loaded (policy and DPO reference alike): none is drawn first.
        initialize = not cfg.train.init_from
        # One model chunk per virtual pipeline stage (one in all without parallel.virtual_pp), wrapped in DDP.
        self.chunks = ModelChunks(cfg, self.vocab_size, initialize=initialize)
        # What checkpoints save and load and stages prepare: the model, or the list of its chunks.
        self.model = self.chunks.checkpoint_model()
        opt = cfg.optimizer
        dtype = self.chunks.config.params_dtype
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer=MEGATRON_OPTIMIZER[opt.name], lr=opt.lr, min_lr=opt.min_lr,
                            weight_decay=opt.weight_decay, adam_beta1=opt.beta1, adam_beta2=opt.beta2,
                            adam_eps=opt.eps, clip_grad=opt.clip_grad,
                            bf16=dtype == torch.bfloat16, params_dtype=dtype,
                            use_distributed_optimizer=par.distributed_optimizer,
                            overlap_param_gather=par.overlap_param_gather),
            self.chunks.schedule_model(),
        )
        fix_torch_adam_step_state(self.optimizer)
        sch = cfg.scheduler
        decay_steps = sch.decay_steps or cfg.train.steps
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=opt.lr, min_lr=opt.min_lr,
            lr_warmup_steps=sch.warmup_steps, lr_decay_steps=max(decay_steps, sch.warmup_steps + 1),
            lr_decay_style=sch.decay, start_wd=opt.weight_decay, end_wd=opt.weight_decay,
            wd_incr_steps=cfg.train.steps, wd_incr_style="constant")
        config = self.chunks.config
        self.chunks.install_grad_sync(par.overlap_grad_reduce)
        config.finalize_model_grads_func = finalize_model_grads
        config.grad_scale_func = self.optimizer.scale_loss

        from megafin.stages import stage_class

        self.stage = stage_class(cfg.stage)(cfg)
        G = par.global_batch_size
        n_train = cfg.train.steps * G
        n_valid = (cfg.train.steps // cfg.train.eval_interval + 1) * cfg.train.eval_iters * G \
            if cfg.train.eval_interval else 0
        train_ds, valid_ds, collate = build_datasets(cfg, tokenizer, n_train, n_valid,
                                                     cache_dir=str(Path(cfg.run_dir) / "dataset_cache"))
        dp_rank = parallel_state.get_data_parallel_rank()
        self.train_batches = MicroBatches(train_ds, collate, G, par.micro_batch_size, dp_rank, self.dp_size)
        self.valid_batches = MicroBatches(valid_ds, collate, G, par.micro_batch_size, dp_rank, self.dp_size) \
            if valid_ds is not None and cfg.train.eval_interval else None
        self.packed = cfg.data.format == "packed"
        # Which checkpoint to start from is settled (and checked readable) before the stage's preparation, which can
        # be long (the DPO reference pass): a broken checkpoint fails in seconds, not after it.
        resume_from = self._checkpoint_to_resume()
        from megafin.stages.base import StageContext

        # e.g. DPO reference log-probs, before the policy's own weights are loaded
        self.stage.prepare(StageContext(
            cfg=cfg, model=self.model, forward_model=self.chunks.forward_model(),
            build_model=lambda: build_model(cfg, self.vocab_size, initialize=initialize),
            load_weights=lambda path, model: load_checkpoint(path, model, None, None),
            train_data=self.train_batches.dataset, vocab_size=self.vocab_size))
        self.progress = self._resume(resume_from)
        # After the resume: torch's load_state_dict takes the checkpoint's param-group entries, the kernel's included.
        if not select_torch_adamw_kernel(self.optimizer, opt.torch_adamw) and opt.torch_adamw != "default":
            self._say(f"optimizer.torch_adamw={opt.torch_adamw}: no torch AdamW in megatron-core's optimizer here "
                      f"(TE/Apex FusedAdam runs instead); nothing set")
        # The step this run_dir already holds a checkpoint of: resuming at the last step must not rewrite it (a
        # rewrite is a new checkpoint to whatever keys on its bytes, e.g. a DPO reference cache).
        here = resume_from is not None and resume_from.resolve().parent == checkpoint_root(cfg.run_dir).resolve()
        self.saved_step = self.progress.step if here else -1
        # A step's model FLOPs (for MFU), as its work is counted in _forward_backward: per token of the layers'
        # matmuls, per position the output layer runs at, per (query, key) pair attention covers (flops.py).
        self.flops = (layer_flops_per_token(cfg.model), logits_flops_per_position(cfg.model, self.vocab_size),
                      attention_flops_per_pair(cfg.model))
        self.logits_at_targets = bool(getattr(self.chunks.models[-1], "targets_only", False))
        self.peak = PeakFlops.for_this_device(cfg.logging.peak_tflops)
        self.memory = StepMemory()
        self.num_params = self.chunks.num_params()
        # train.eval_tasks: examples read on every rank (a bad file fails all alike); the first data-parallel replica
        # (rank 0's TP x PP ranks; under CP, its first CP rank: weights are whole on each) evaluates.
        self.task_eval, self.task_eval_here = None, False
        if cfg.train.eval_tasks:
            from megatron.core import parallel_state

            from megafin.eval.in_training import TrainingEval

            self.task_eval = TrainingEval(cfg, self.vocab_size)
            self.task_eval_here = parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0

    # ---------------------------------------------------------------- resume
    def _checkpoint_to_resume(self) -> Optional[Path]:
        """The checkpoint train.resume names (None: start fresh), and train.init_from, checked readable before anything
        is loaded; a bad one is a CheckpointError (one line, exit 2)."""
        cfg = self.cfg
        ckpt: Optional[Path] = None
        if cfg.train.resume == "auto":
            ckpt, passed_over = checkpoint_to_resume(cfg.run_dir)
            for why in passed_over:  # never a silent fallback
                self._say(f"train.resume=auto: passing over a checkpoint: {why}")
        elif cfg.train.resume != "none":
            ckpt = Path(cfg.train.resume)
            check_readable(ckpt)
        if ckpt is None and cfg.train.init_from:
            check_readable(cfg.train.init_from)
        return ckpt

    def _resume(self, ckpt: Optional[Path]) -> Progress:
        cfg = self.cfg
        if ckpt is not None:
            progress = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
            self._say(f"resumed from {ckpt} at step {progress.step} ({progress.consumed_samples} samples)")
            return progress
        if cfg.train.init_from:
            load_checkpoint(cfg.train.init_from, self.model, None, None)
            # The optimizer's fp32 main copies (bf16, distributed optimizer) were taken from the weights at build
            # time: take them from the loaded ones, as Megatron-LM does after a load without optimizer state.
            self.optimizer.reload_model_params()
            self._say(f"initialized weights from {cfg.train.init_from}")
        return Progress()

    def _say(self, text: str) -> None:
        if self.is_logger:
            print(f"megafin: {text}", flush=True)

    # ---------------------------------------------------------------- steps
    def _forward_backward(self, batches: Any, consumed: int, forward_only: bool,
                          nan: bool = False) -> dict[str, Any]:
        """One global batch through megatron-core's schedule; the stage's metrics, reduced over the whole batch."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from megafin.data.context_parallel import split_for_context_parallel

        par = self.cfg.parallel
        # tokens this rank's micro-batches hold (packed ones are trimmed at pp=1 or prompt-shared), the positions
        # their output layer runs at and the (query, key) pairs their attention covers (flops.py)
        computed = [0, 0, 0]
        # parallel.cp > 1: the CP ranks of a data-parallel rank read the same micro-batches and each keeps its part
        # of every sequence; the first of them counts the whole micro-batch's tokens (before any CP padding).
        cp, cp_rank = self.ps.get_context_parallel_world_size(), self.ps.get_context_parallel_rank()

        def counted(micro_batches: Iterator[dict]) -> Iterator[dict]:
            for batch in micro_batches:
                if cp_rank == 0:
                    computed[0] += batch["tokens"].numel()
                    computed[1] += logit_positions(batch, self.logits_at_targets)
                    computed[2] += attended_pairs(batch)
                yield split_for_context_parallel(batch, cp, cp_rank)

        forward_step = self.stage.forward_step()
        reports = get_forward_backward_func()(
            forward_step_func=with_nan_output(forward_step) if nan else forward_step,
            data_iterator=self.chunks.data_iterator(counted(batches.global_batch(consumed))),
            model=self.chunks.schedule_model(),
            num_microbatches=batches.num_micro_batches,
            seq_length=self.cfg.data.seq_length * (par.micro_batch_size if self.packed else 1),
            micro_batch_size=1 if self.packed else par.micro_batch_size,
            forward_only=forward_only,
        )
        width = self.stage.report_width
        totals = torch.zeros(width + 3, dtype=torch.float64)  # the stage's sums, then `computed`
        if self.ps.is_pipeline_last_stage():
            for item in reports:
                totals[:width] += item["report"].detach().to("cpu", torch.float64)
            totals[width:] = torch.tensor(computed, dtype=torch.float64)
        # Sums over data-parallel replicas and context-parallel parts (each holds part of every sequence's tokens),
        # then from the last pipeline stage to every rank (others hold zeros).
        totals = totals.to(collective_device())
        dist.all_reduce(totals, group=self.ps.get_data_parallel_group(with_context_parallel=True))
        dist.all_reduce(totals, group=self.ps.get_pipeline_model_parallel_group())
        totals = totals.cpu()
        tokens, positions, pairs = (int(x) for x in totals[width:].tolist())
        return {**self.stage.summarize(totals[:width]), "computed_tokens": tokens,
                "model_flops": tokens * self.flops[0] + positions * self.flops[1] + pairs * self.flops[2]}

    @contextlib.contextmanager
    def _params_gathered(self) -> Iterator[None]:
        """Collective. parallel.overlap_param_gather leaves the step's parameter all-gather to the next training
        forward's pre-hooks: finish it before anything else reads the weights (a save, validation, rank 0's task
        eval, which must not start a collective alone), and re-arm the hooks after."""
        if not self.cfg.parallel.overlap_param_gather:  # validated: only with the distributed optimizer
            yield
            return
        self.chunks.disable_forward_pre_hook()  # waits for, or runs, every bucket's all-gather
        try:
            yield
        finally:
            self.chunks.enable_forward_pre_hook()

    def evaluate(self) -> dict[str, Any]:
        """Validation over train.eval_iters global batches: a metric is the mean of its per-batch values (as logged
        in training), the stage's count (target tokens, pairs) their total."""
        self.chunks.train(False)
        sums: dict[str, float] = {}
        G = self.cfg.parallel.global_batch_size
        iters = self.cfg.train.eval_iters
        with torch.no_grad():
            for i in range(iters):
                stats = self._forward_backward(self.valid_batches, i * G, forward_only=True)
                del stats["computed_tokens"], stats["model_flops"]
                for key, value in stats.items():
                    if value is not None:
                        sums[key] = sums.get(key, 0.0) + value
        self.chunks.train(True)
        count = self.stage.count_name
        return {f"val_{k}": (int(v) if k == count else v / iters) for k, v in sums.items()}

    def fit(self) -> int:
        from megafin.metrics.metrics import MetricsLogger

        cfg = self.cfg
        stop = STOP_REQUEST.install()
        bad = BadStepTracker(cfg.train.max_bad_steps)
        nan_steps = injected_nan_steps()
        metrics = MetricsLogger(cfg, enabled=self.is_logger, printed=self.stage.printed(),
                                resumed_step=self.progress.step)
        if self.is_logger:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.run_dir) / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        self._say(f"{self.num_params / 1e6:.2f}M parameters on this rank; world {dist.get_world_size()} = "
                  f"tp {cfg.parallel.tp} x pp {cfg.parallel.pp} x {self._cp_part()}dp {self.dp_size}; "
                  f"attention {self.chunks.models[0].megafin_attention_backend}; fusions {self._fusions_on()}; "
                  f"{self.launch.launcher} launch")
        saved_at = self.saved_step
        try:
            while self.progress.step < cfg.train.steps:
                record = self.train_step(bad, nan=self.progress.step + 1 in nan_steps)
                step = record["step"]
                if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and self.valid_batches:
                    with self._params_gathered():
                        record.update(self.evaluate())
                if self.task_eval is not None and self.task_eval.due(step):
                    with self._params_gathered():
                        if self.task_eval_here:  # the first replica's ranks decode together; rank 0 records
                            scores = self._task_scores()
                            if self.is_logger:
                                record.update(scores)
                metrics.log(record)
                bad.check(step)
                stop_now = self._agree(stop.requested)
                if stop_now or (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0):
                    self._save()
                    saved_at = step
                if stop_now:
                    self._say(f"stopped on {stop.signal_name or 'a signal on another rank'} after step {step}; "
                              f"exit {EXIT_SIGNAL_CHECKPOINTED}: resume with train.resume=auto")
                    return EXIT_SIGNAL_CHECKPOINTED
            if cfg.checkpoint.save_at_end and saved_at != self.progress.step:
                self._save()
            self._say(f"done: {self.progress.step} steps. metrics: {Path(cfg.run_dir) / 'metrics.jsonl'}; "
                      f"checkpoints: {Path(cfg.run_dir) / 'checkpoints'}")
            return EXIT_OK
        except TrainingDiverged as err:
            self._say(str(err))
            return EXIT_DIVERGED
        finally:
            metrics.close()
            stop.uninstall()

    def _cp_part(self) -> str:
        """'cp N x ' under context parallelism (the log line reads as before without it)."""
        return f"cp {self.cfg.parallel.cp} x " if self.cfg.parallel.cp > 1 else ""

    def train_step(self, bad: BadStepTracker, nan: bool = False) -> dict[str, Any]:
        """One optimizer step on the next global batch (skipped when `bad` finds the loss non-finite; `nan`: the
        fault injection's NaN output); advances self.progress and returns the step's metrics record."""
        step = self.progress.step + 1
        t0 = time.perf_counter()
        self.memory.begin_step()
        self.chunks.zero_grad_buffer()
        self.optimizer.zero_grad()
        stats = self._forward_backward(self.train_batches, self.progress.consumed_samples, forward_only=False,
                                       nan=nan)
        self.memory.forward_backward_done()
        computed_tokens, model_flops = stats.pop("computed_tokens"), stats.pop("model_flops")
        record: dict[str, Any] = {"step": step, **stats}
        if bad.observe(stats["loss"]):
            _, grad_norm, _ = self.optimizer.step()
            record["grad_norm"] = float(grad_norm) if grad_norm is not None else None
        else:
            record.update(skipped=True, grad_norm=None)
        self.scheduler.step(increment=1)
        elapsed = time.perf_counter() - t0
        self.progress.step = step
        self.progress.consumed_samples += self.cfg.parallel.global_batch_size
        self.progress.consumed_tokens += computed_tokens  # tokens, not G * S slots (packs are trimmed)
        tokens_per_s = computed_tokens / elapsed  # real tokens: trimmed packs hold fewer than G * S
        record.update(
            lr=self.optimizer.param_groups[0]["lr"], tokens_per_s=tokens_per_s, step_time_s=elapsed,
            consumed_samples=self.progress.consumed_samples,
            mfu=self.peak.mfu(model_flops / elapsed, dist.get_world_size()),
        )
        record.update(self.memory.record())  # CUDA only
        return record

    def _fusions_on(self) -> str:
        from megafin.models.fusions import FUSIONS

        on = [f.key for f in FUSIONS if getattr(self.cfg.model.fusions, f.key) == "on"]
        return ", ".join(on) if on else "none"

    def _task_scores(self) -> dict[str, Any]:
        """train.eval_tasks on the live model (rank 0); the reason, said once, when it cannot be decoded live."""
        te = self.task_eval
        if te.reason is not None:
            return {}
        scores = te.scores(self.chunks.models)  # this rank's stage: its chunks, one without virtual stages
        if te.reason is not None:
            self._say(f"train.eval_tasks: not evaluated ({te.reason})")
        return scores

    def _agree(self, flag: bool) -> bool:
        """A signal may reach one rank only: every rank stops if any was asked to."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _save(self) -> None:
        with self._params_gathered():
            path = save_checkpoint(self.cfg.run_dir, self.model, self.optimizer, self.scheduler, self.progress,
                                   keep_last=self.cfg.checkpoint.keep_last,
                                   extra_meta={"vocab_size": self.vocab_size, "config": config_to_dict(self.cfg)})
        self._say(f"saved checkpoint {path}")


