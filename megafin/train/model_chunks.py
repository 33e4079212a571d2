"""This rank's model as megatron-core's schedules run it: one chunk per virtual pipeline stage (parallel.virtual_pp;
one chunk otherwise), each wrapped for training. Megatron-LM's get_model / wrap-with-DDP pattern.

With virtual_pp = V on a pipeline of P ranks, rank r holds chunks v = 0..V-1 with the layers of virtual stage
v * P + r; the first rank's chunk 0 has the embedding, the last rank's chunk V-1 the output layer. Layer numbers,
and so the init of every layer (megafin.models.gpt seeds each layer from its global number) and the checkpoint keys,
are the global ones megatron-core computes: a checkpoint does not depend on the chunking.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator

from megafin.config.schema import Config


class ModelChunks:
    """`models`: the bare GPTModel chunks (for checkpoints and weights); `wrapped`: what the schedules and the
    optimizer take (Float16Module under bf16, inside megatron-core's DistributedDataParallel)."""

    def __init__(self, cfg: Config, vocab_size: int, initialize: bool = True) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.transformer.module import Float16Module

        from megafin.models.gpt import build_model

        par = cfg.parallel
        stages = [None] if par.virtual_pp == 1 else list(range(par.virtual_pp))
        # initialize=False: every weight is loaded next (train.init_from), so none is drawn
        self.models = [build_model(cfg, vocab_size, vp_stage=v, initialize=initialize) for v in stages]
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=par.overlap_grad_reduce,
            overlap_param_gather=par.overlap_param_gather,
            use_distributed_optimizer=par.distributed_optimizer,
        )
        self.wrapped = []
        for i, model in enumerate(self.models):
            # As Megatron-LM does under bf16: every parameter (norms included) in bf16, outputs cast back to fp32.
            module = Float16Module(model.config, model) if model.config.bf16 else model
            # Chunks after the first: one bucket each, as Megatron-LM (their grads are ready late in the backward).
            self.wrapped.append(DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=module,
                                                        disable_bucketing=i > 0))

    @property
    def config(self) -> Any:
        """The TransformerConfig the schedules read (megatron-core's get_model_config takes the first chunk's)."""
        return self.models[0].config

    def install_grad_sync(self, overlap_grad_reduce: bool) -> None:
        """The schedule's hooks: no grad all-reduce until the last micro-batch, and (overlap) start it per chunk."""
        config = self.config
        if len(self.wrapped) == 1:
            config.no_sync_func = self.wrapped[0].no_sync
            if overlap_grad_reduce:
                config.grad_sync_func = self.wrapped[0].start_grad_sync
            return
        config.no_sync_func = [chunk.no_sync for chunk in self.wrapped]
        if overlap_grad_reduce:
            config.grad_sync_func = [chunk.start_grad_sync for chunk in self.wrapped]

    def schedule_model(self) -> list:
        return list(self.wrapped)

    def data_iterator(self, micro_batches: Iterator[dict]) -> Any:
        """The schedules' data_iterator: the iterator itself for one chunk; for several, one per chunk over the same
        micro-batches (each chunk's forward step reads micro-batch k; the source is read once)."""
        if len(self.wrapped) == 1:
            return micro_batches
        return list(itertools.tee(micro_batches, len(self.wrapped)))

    def disable_forward_pre_hook(self) -> None:
        """parallel.overlap_param_gather: finish every chunk's pending parameter all-gather, hooks off."""
        for chunk in self.wrapped:
            chunk.disable_forward_pre_hook()

    def enable_forward_pre_hook(self) -> None:
        for chunk in self.wrapped:
            chunk.enable_forward_pre_hook()

    def zero_grad_buffer(self) -> None:
        for chunk in self.wrapped:
            chunk.zero_grad_buffer()

    def train(self, mode: bool = True) -> None:
        for chunk in self.wrapped:
            chunk.train(mode)

    def num_params(self) -> int:
        return sum(p.numel() for model in self.models for p in model.parameters())

    def checkpoint_model(self) -> Any:
        """What megafin.checkpoint.manager saves and loads (and a stage's context holds): the model, or the list of
        chunks."""
        return self.models[0] if len(self.models) == 1 else list(self.models)

    def forward_model(self) -> Any:
        """The wrapped model a stage's own schedule runs (StageContext.forward_model), or the list of chunks."""
        return self.wrapped[0] if len(self.wrapped) == 1 else list(self.wrapped)
