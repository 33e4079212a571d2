"""The frozen reference's log-probs for the DPO-family losses that use one, provided to the stage by one object.

The reference is the policy's starting point (`train.init_from`) unless `dpo.reference` names another checkpoint.
- precompute (default): its log-probs are computed once before training over every pack (each data-parallel rank
  takes a share) and kept in RUN_DIR/reference_logps/ (chunk files per data-parallel shard), keyed by what they were
  computed from, so a resumed run reuses them and a changed reference or dataset recomputes them;
- online (`dpo.reference_logps: online`): the reference model runs next to the policy at every step (pp=1 only).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from megafin.checkpoint.atomic import write_text_atomic
from megafin.stages.base import StageContext, per_token_loss, sequence_sums

CACHE_DIR = "reference_logps"


def build_reference(cfg: Any, ctx: StageContext) -> "OnlineReference | PrecomputedReference":
    """The provider `dpo.reference_logps` asks for, prepared (model loaded, or log-probs computed / read)."""
    ref_ckpt = cfg.dpo.reference or cfg.train.init_from
    if cfg.dpo.reference_logps == "online":
        return OnlineReference(ctx, ref_ckpt)
    return PrecomputedReference(cfg, ctx, ref_ckpt)


class OnlineReference:
    """A frozen copy of the reference model, run on every micro-batch."""

    def __init__(self, ctx: StageContext, ref_ckpt: str) -> None:
        self.model = ctx.build_model()
        if ref_ckpt:
            ctx.load_weights(ref_ckpt, self.model)
        else:  # no checkpoint: the reference is the policy's own (random) initialization
            self.model.load_state_dict(ctx.model.state_dict())
        self.model.eval().requires_grad_(False)

    def per_token(self, batch: dict) -> Optional[torch.Tensor]:
        with torch.no_grad():
            return per_token_loss(self.model, batch)


class PrecomputedReference:
    """Reference log-probs of every document, computed once (before the policy's own weights are loaded)."""

    def __init__(self, cfg: Any, ctx: StageContext, ref_ckpt: str) -> None:
        self.cfg = cfg
        self.values: dict[int, np.ndarray] = {}  # pack id -> reference log-prob of each of its documents
        cache = Path(cfg.run_dir) / CACHE_DIR
        key = reference_cache_key(cfg, ctx.vocab_size)
        if not self._load_cache(cache, key, ctx):
            if ref_ckpt:
                ctx.load_weights(ref_ckpt, ctx.model)
            self._compute_cache(cache, key, ctx)
            self._load_cache(cache, key, ctx)

    def per_token(self, batch: dict) -> Optional[torch.Tensor]:
        return None

    def sequence_logps(self, batch: dict, device: torch.device) -> torch.Tensor:
        """Reference log-probs of the micro-batch's documents, in order, from the precomputed cache."""
        values = [self.values[pid] for pid in batch["pack_ids"]]
        return torch.from_numpy(np.concatenate(values).astype(np.float32)).to(device=device, dtype=torch.float32)

    def _load_cache(self, cache: Path, key: dict[str, Any], ctx: StageContext) -> bool:
        """Read the cache if it was computed from this reference, data and model; else remove it (False)."""
        meta_path = cache / "meta.json"
        if not meta_path.is_file():
            return False
        meta = json.loads(meta_path.read_text())
        changed = [name for name in sorted(set(key) | set(meta.get("key", {})))
                   if meta.get("key", {}).get(name) != key.get(name)]
        if changed:
            dist.barrier()  # every rank has read meta.json before rank 0 removes it
            if dist.get_rank() == 0:
                print(f"megafin: {cache} was computed from another {', '.join(changed)} than this run's; "
                      f"recomputing the reference log-probs", flush=True)
                shutil.rmtree(cache)
            dist.barrier()
            return False
        self.values = {}
        for shard in meta["shards"]:
            data = np.load(cache / shard)
            offsets = data["offsets"]
            for k, pid in enumerate(data["pack_ids"].tolist()):
                self.values[pid] = data["values"][offsets[k]:offsets[k + 1]]
        num_packs = len(ctx.train_data.packs)  # train and validation shares alike
        missing = [p for p in range(num_packs) if p not in self.values]
        if missing:
            raise RuntimeError(f"{cache}: reference log-probs missing for {len(missing)} packs (e.g. {missing[:3]}); "
                               f"delete the directory to recompute")
        return True

    def _compute_cache(self, cache: Path, key: dict[str, Any], ctx: StageContext) -> None:
        """Forward-only passes of the reference over every pack; data-parallel rank r takes packs r, r+D, ...

        The pass runs in chunks of REFERENCE_CHUNK micro-batches, each written to its own file as it completes, so a
        run stopped by a signal (exit 75) or killed continues the pass where it stopped instead of starting over: a
        pass longer than a Slurm job's time limit still finishes over requeues. Between chunks every rank agrees on
        whether a stop was requested (a signal may reach one rank only)."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from megafin.runtime.stop_request import STOP_REQUEST, StopInPreparation
        from megafin.data.build import packed_fixed_length, shares_prompt
        from megafin.data.packed_collate import collate_packed

        packs = ctx.train_data.packs
        dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        mbs, seq = self.cfg.parallel.micro_batch_size, self.cfg.data.seq_length
        total = len(packs)
        mine = np.arange(total)[dp_rank::dp_size]
        # Every data-parallel rank runs the same number of micro-batches (pipeline stages must agree).
        n_micro = math.ceil(math.ceil(total / dp_size) / mbs)
        n_chunks = math.ceil(n_micro / REFERENCE_CHUNK)
        plan = {"key": key, "num_packs": total, "dp_size": dp_size, "micro_batch_size": mbs, "chunk": REFERENCE_CHUNK}
        done = self._chunks_done(cache, plan, n_chunks)
        pad_id = int(packs.meta.get("pad_id", 0))

        def micro_batch(m: int) -> dict:
            ids = mine[m * mbs:(m + 1) * mbs].tolist()
            samples = [{"pack_id": pid, "tokens": t, "loss_mask": lm, "doc_lens": dl}
                       for pid in ids for t, lm, dl in [packs[pid]]]
            if not samples:  # a short shard repeats its first pack so shapes stay fixed; the result is dropped
                t, lm, dl = packs[int(mine[0])]
                samples = [{"pack_id": -1, "tokens": t, "loss_mask": lm, "doc_lens": dl}]
            return collate_packed(samples, seq, pad_id, fixed_length=packed_fixed_length(self.cfg),
                                  share_prompt=shares_prompt(self.cfg))

        results: dict[int, np.ndarray] = {}

        def record(batch: dict, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
            mask = batch["loss_mask"].reshape(-1).float()
            logp = sequence_sums(-output_tensor.reshape(-1).float().cpu() * mask, batch["cu_seqlens"],
                                 batch["num_docs"]).numpy()
            doc_pack = np.asarray(batch["doc_pack"])
            for s_idx, pid in enumerate(batch["pack_ids"]):
                if pid >= 0:
                    results[pid] = logp[doc_pack == s_idx].astype(np.float64)
            zero = output_tensor.sum() * 0.0
            return zero, torch.tensor(1, dtype=torch.int), {"report": torch.zeros(2)}

        def forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Callable]:
            batch = next(data_iterator)
            return per_token_loss(model, batch), partial(record, batch)

        # The last pipeline stage holds the values; its first tensor-parallel rank writes this rank's chunk files.
        writer = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        was_training = ctx.forward_model.training
        ctx.forward_model.eval()
        for chunk in range(n_chunks):
            if chunk in done:
                continue
            if _agree_to_stop(STOP_REQUEST.requested):
                ctx.forward_model.train(was_training)
                raise StopInPreparation(
                    f"stopped on {STOP_REQUEST.signal_name or 'a signal on another rank'} during the DPO reference "
                    f"pass ({len(done)} of {n_chunks} chunks of {cache} complete, kept); resume with "
                    f"train.resume=auto to continue the pass")
            first, last = chunk * REFERENCE_CHUNK, min(n_micro, (chunk + 1) * REFERENCE_CHUNK)
            results.clear()
            with torch.no_grad():
                get_forward_backward_func()(
                    forward_step_func=forward_step, data_iterator=(micro_batch(m) for m in range(first, last)),
                    model=[ctx.forward_model], num_microbatches=last - first, seq_length=seq * mbs, micro_batch_size=1,
                    forward_only=True)
            if writer:
                _save_chunk(cache / _chunk_name(dp_rank, dp_size, chunk), results)
            done.add(chunk)
        ctx.forward_model.train(was_training)
        dist.barrier()
        if dist.get_rank() == dist.get_world_size() - 1:  # a last-stage rank: writes the marker after all shards
            meta = {"shards": [_chunk_name(r, dp_size, c) for r in range(dp_size) for c in range(n_chunks)],
                    "num_packs": total, "key": key}
            write_text_atomic(cache / "meta.json", json.dumps(meta, indent=2))
        dist.barrier()

    def _chunks_done(self, cache: Path, plan: dict[str, Any], n_chunks: int) -> set[int]:
        """Chunks an interrupted pass with the same plan already wrote (every data-parallel rank's file present);
        a pass with another plan is discarded. Every rank returns the same set."""
        plan_path = cache / "pass.json"
        try:
            same = json.loads(plan_path.read_text()) == json.loads(json.dumps(plan))
        except (OSError, ValueError):
            same = False
        dist.barrier()  # every rank has read pass.json before rank 0 may replace it
        if not same and dist.get_rank() == 0:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            write_text_atomic(plan_path, json.dumps(plan, indent=2))
        dist.barrier()
        if not same:
            return set()
        done = {c for c in range(n_chunks)
                if all((cache / _chunk_name(r, plan["dp_size"], c)).is_file() for r in range(plan["dp_size"]))}
        dist.barrier()  # all ranks looked before any writes a new chunk
        if done and dist.get_rank() == 0:
            print(f"megafin: continuing the DPO reference pass in {cache}: {len(done)} of {n_chunks} chunks done",
                  flush=True)
        return done


def reference_cache_key(cfg: Any, vocab_size: int) -> dict[str, Any]:
    """What the cached reference log-probs were computed from; any difference means they are stale.

    The reference is identified by its checkpoint's megafin.json and .metadata bytes (a re-trained checkpoint at the
    same path differs in both), or, without one, by the seed that initialized the policy. The data by the bytes of
    every file of the packed dataset (a preference set is small next to its training cost; the .idx alone would
    miss a change that keeps every length)."""
    ref = cfg.dpo.reference or cfg.train.init_from
    if ref:
        reference = {"checkpoint": str(Path(ref).resolve()),
                     "sha256": _files_sha256([Path(ref) / "megafin.json", Path(ref) / ".metadata"])}
    else:
        reference = {"checkpoint": None, "seed": cfg.train.seed}
    from megafin.data.build import packed_prefix_files

    prefix = cfg.data.blend[0].path
    return {"reference": reference,
            "data": {"prefix": str(Path(prefix).resolve()),
                     "sha256": _files_sha256([Path(f) for f in packed_prefix_files(prefix)])},
            "model": dataclasses.asdict(cfg.model), "vocab_size": vocab_size, "precision": cfg.precision.dtype,
            "seq_length": cfg.data.seq_length, "share_prompt": cfg.dpo.share_prompt}


def _files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        if path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
        else:
            digest.update(b"(missing)")
    return digest.hexdigest()


# Micro-batches per chunk of the reference pass: the unit that is written at once, and between which a stop signal
# is honoured (kept small next to Slurm's kill grace; large enough that one file per chunk stays few).
REFERENCE_CHUNK = 64


def _chunk_name(dp_rank: int, dp_size: int, chunk: int) -> str:
    return f"dp{dp_rank:05d}-of-{dp_size:05d}.chunk{chunk:06d}.npz"


def _save_chunk(path: Path, results: dict[int, np.ndarray]) -> None:
    """One chunk's values, appearing only when complete (written under a temporary name, then renamed)."""
    ids = sorted(results)
    values = [results[i] for i in ids]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])])
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, pack_ids=np.asarray(ids, dtype=np.int64), offsets=offsets,
             values=np.concatenate(values) if values else np.zeros(0))
    os.replace(tmp, path)


def _agree_to_stop(requested: bool) -> bool:
    from megafin.runtime.distributed import collective_device

    flag = torch.tensor([1 if requested else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
