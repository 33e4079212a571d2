"""DPO-family preference alignment (DPO, RPO = DPO + NLL on chosen, IPO) on packed pairs, as NeMo-Aligner did.

Pairs come from `data_prep preference`: in every pack, document 2k is the chosen and 2k+1 the rejected response
(prompt + response, loss mask on the response). A sequence's log-prob is the sum of its target tokens' log-probs,
taken from GPTModel's per-token (vocab-parallel) cross entropy.

Losses, per pair, with delta = (pi_c - ref_c) - (pi_r - ref_r):
- dpo: -(1 - ls) * logsigmoid(beta * delta) - ls * logsigmoid(-beta * delta)   (ls: dpo.label_smoothing)
- ipo: (delta_avg - 1 / (2 * beta))^2 with per-token averaged log-ratios (as TRL and the IPO authors do)
- rpo: dpo + rpo_alpha * NLL(chosen) / |chosen|   (Pang et al. 2024: NLL length-normalized per sequence)
Implicit rewards: beta * (pi - ref). The loss is a mean over all pairs of the global batch.

The frozen reference is the policy's starting point (`train.init_from`) unless `dpo.reference` names another
checkpoint. Its log-probs are computed once before training over every pack (each data-parallel rank takes a
share) and kept in RUN_DIR/reference_logps/ (one file per data-parallel shard), so a resumed run reuses them;
`dpo.reference_logps: online` instead runs the reference model next to the policy at every step (pp=1 only).
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
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megafin.checkpoint.atomic import write_text_atomic
from megafin.train.stages import Stage, per_token_loss

CACHE_DIR = "reference_logps"


def sequence_sums(values: torch.Tensor, cu_seqlens: torch.Tensor, num_docs: int) -> torch.Tensor:
    """Per-document sums of per-token values over a THD micro-batch (the padding document dropped)."""
    from kernels import segment_sum

    return segment_sum(values, cu_seqlens.to(values.device))[:num_docs]


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


class DPOStage(Stage):
    metric_names = ("pref_loss", "nll", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.d = cfg.dpo
        self.reference: dict[int, np.ndarray] = {}  # pack id -> reference log-prob of each of its documents
        self.ref_model: Any = None

    # ------------------------------------------------------------------ loss
    def pair_losses(self, logp: torch.Tensor, ntok: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pair tensors from per-sequence policy log-probs, target-token counts and reference log-probs."""
        beta = self.d.beta
        pc, pr, rc, rr = logp[0::2], logp[1::2], ref[0::2], ref[1::2]
        nc, nr = ntok[0::2].clamp(min=1), ntok[1::2].clamp(min=1)
        chosen_ratio, rejected_ratio = pc - rc, pr - rr
        if self.d.loss == "ipo":
            delta = chosen_ratio / nc - rejected_ratio / nr
            pref = (delta - 1.0 / (2.0 * beta)) ** 2
        else:
            delta = chosen_ratio - rejected_ratio
            ls = self.d.label_smoothing
            pref = -(1.0 - ls) * F.logsigmoid(beta * delta) - ls * F.logsigmoid(-beta * delta)
        nll = -pc / nc
        total = pref + self.d.rpo_alpha * nll if self.d.loss == "rpo" else pref
        reward_c, reward_r = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        return {"loss": total, "pref_loss": pref, "nll": nll, "reward_chosen": reward_c, "reward_rejected": reward_r}

    def loss(self, batch: dict, output_tensor: torch.Tensor, ref_output: Any = None
             ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        device = output_tensor.device
        mask = batch["loss_mask"].reshape(-1).to(device).float()
        num_docs = batch["num_docs"]
        logp = sequence_sums(-output_tensor.reshape(-1).float() * mask, batch["cu_seqlens"], num_docs)
        ntok = sequence_sums(mask, batch["cu_seqlens"], num_docs)
        if ref_output is not None:
            ref = sequence_sums(-ref_output.reshape(-1).float() * mask, batch["cu_seqlens"], num_docs)
        else:
            ref = torch.from_numpy(self._lookup(batch)).to(device=device, dtype=torch.float32)
        out = self.pair_losses(logp, ntok, ref)
        pairs = out["loss"].numel()
        margin = out["reward_chosen"] - out["reward_rejected"]
        loss_sum = out["loss"].sum()
        report = torch.stack([loss_sum.detach(), torch.tensor(float(pairs), device=device),
                              out["pref_loss"].detach().sum(), out["nll"].detach().sum(),
                              out["reward_chosen"].sum(), out["reward_rejected"].sum(), margin.sum(),
                              (margin > 0).float().sum()])
        return loss_sum, torch.tensor(pairs, dtype=torch.int, device=device), {"report": report}

    def summarize(self, totals: torch.Tensor) -> dict:
        out = super().summarize(totals)
        out["pairs"] = int(totals[1].item())
        return out

    def _lookup(self, batch: dict) -> np.ndarray:
        """Reference log-probs of the micro-batch's documents, in order, from the precomputed cache."""
        values = []
        for pid in batch["pack_ids"]:
            values.append(self.reference[pid])
        return np.concatenate(values).astype(np.float32)

    def forward_step(self, nan_loss: bool = False) -> Callable:
        if self.ref_model is None:
            return super().forward_step(nan_loss)

        def forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Callable]:
            batch = next(data_iterator)
            with torch.no_grad():
                ref_out = per_token_loss(self.ref_model, batch)
            return per_token_loss(model, batch, nan_loss), partial(self.loss, batch, ref_output=ref_out)

        return forward_step

    # ----------------------------------------------------------- reference
    def prepare(self, trainer: Any) -> None:
        from megafin.checkpoint.manager import load_checkpoint

        ref_ckpt = self.d.reference or self.cfg.train.init_from
        if self.d.reference_logps == "online":
            from megafin.models.gpt import build_model

            self.ref_model = build_model(self.cfg, trainer.vocab_size)
            if ref_ckpt:
                load_checkpoint(ref_ckpt, self.ref_model, None, None)
            else:  # no checkpoint: the reference is the policy's own (random) initialization
                self.ref_model.load_state_dict(trainer.model.state_dict())
            self.ref_model.eval().requires_grad_(False)
            return
        cache = Path(self.cfg.run_dir) / CACHE_DIR
        key = reference_cache_key(self.cfg, trainer.vocab_size)
        if not self._load_cache(cache, key, trainer):
            if ref_ckpt:
                load_checkpoint(ref_ckpt, trainer.model, None, None)
            self._compute_cache(cache, key, trainer)
            self._load_cache(cache, key, trainer)

    def _load_cache(self, cache: Path, key: dict[str, Any], trainer: Any) -> bool:
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
        self.reference = {}
        for shard in meta["shards"]:
            data = np.load(cache / shard)
            offsets = data["offsets"]
            for k, pid in enumerate(data["pack_ids"].tolist()):
                self.reference[pid] = data["values"][offsets[k]:offsets[k + 1]]
        num_packs = len(trainer.train_batches.dataset.packs)  # train and validation shares alike
        missing = [p for p in range(num_packs) if p not in self.reference]
        if missing:
            raise RuntimeError(f"{cache}: reference log-probs missing for {len(missing)} packs (e.g. {missing[:3]}); "
                               f"delete the directory to recompute")
        return True

    def _compute_cache(self, cache: Path, key: dict[str, Any], trainer: Any) -> None:
        """Forward-only passes of the reference over every pack; data-parallel rank r takes packs r, r+D, ...

        The pass runs in chunks of REFERENCE_CHUNK micro-batches, each written to its own file as it completes, so a
        run stopped by a signal (exit 75) or killed continues the pass where it stopped instead of starting over: a
        pass longer than a Slurm job's time limit still finishes over requeues. Between chunks every rank agrees on
        whether a stop was requested (a signal may reach one rank only)."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from megafin.checkpoint.signals import STOP_REQUEST, StopInPreparation
        from megafin.data.build import packed_fixed_length, shares_prompt
        from megafin.data.packed import collate_packed

        packs = trainer.train_batches.dataset.packs
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
        was_training = trainer.ddp.training
        trainer.ddp.eval()
        for chunk in range(n_chunks):
            if chunk in done:
                continue
            if _agree_to_stop(STOP_REQUEST.requested):
                trainer.ddp.train(was_training)
                raise StopInPreparation(
                    f"stopped on {STOP_REQUEST.signal_name or 'a signal on another rank'} during the DPO reference "
                    f"pass ({len(done)} of {n_chunks} chunks of {cache} complete, kept); resume with "
                    f"train.resume=auto to continue the pass")
            first, last = chunk * REFERENCE_CHUNK, min(n_micro, (chunk + 1) * REFERENCE_CHUNK)
            results.clear()
            with torch.no_grad():
                get_forward_backward_func()(
                    forward_step_func=forward_step, data_iterator=(micro_batch(m) for m in range(first, last)),
                    model=[trainer.ddp], num_microbatches=last - first, seq_length=seq * mbs, micro_batch_size=1,
                    forward_only=True)
            if writer:
                _save_chunk(cache / _chunk_name(dp_rank, dp_size, chunk), results)
            done.add(chunk)
        trainer.ddp.train(was_training)
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
    flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
