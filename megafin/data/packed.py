"""data_prep's packed sequences (docs/formats.md) as THD micro-batches for the trainer.

A micro-batch is `micro_batch_size` packs laid end to end as ONE sequence of exactly micro_batch_size * seq_length
tokens (megatron's THD layout, batch dimension 1). The remainder is a padding document that carries no loss, so
every micro-batch has the same shape (pipeline stages exchange fixed-size activations). Labels and their mask are
shifted inside each document only: the last token of a document predicts nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def read_meta(prefix: str) -> dict[str, Any]:
    return json.loads(Path(f"{prefix}_meta.json").read_text())


class PackedSequences:
    """Memory-mapped packs of one data_prep output; item i is (tokens, loss_mask, doc_lens) of pack i."""

    def __init__(self, prefix: str) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = prefix
        self.meta = read_meta(prefix)
        self.tokens = IndexedDataset(f"{prefix}_tokens", mmap=True)
        self.loss_mask = IndexedDataset(f"{prefix}_loss_mask", mmap=True)
        self.doc_lens = IndexedDataset(f"{prefix}_doc_lens", mmap=True)
        if not len(self.tokens) == len(self.loss_mask) == len(self.doc_lens):
            raise ValueError(f"{prefix}: tokens, loss_mask and doc_lens hold different numbers of packs")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.asarray(self.tokens[i], dtype=np.int64), np.asarray(self.loss_mask[i], dtype=np.int64),
                np.asarray(self.doc_lens[i], dtype=np.int64))


class PackedSplit:
    """The train or validation share of the packs, reshuffled every epoch with the seed: sample k is
    pack perm_epoch[k % n], epoch = k // n. Addressed by sample index, so resume needs only consumed samples."""

    def __init__(self, packs: PackedSequences, pack_ids: np.ndarray, seed: int) -> None:
        if len(pack_ids) == 0:
            raise ValueError(f"{packs.prefix}: no packs in this split (check data.split)")
        self.packs = packs
        self.pack_ids = pack_ids
        self.seed = seed
        self._perm_epoch = -1
        self._perm = pack_ids

    def __len__(self) -> int:
        return len(self.pack_ids)

    def pack_id(self, k: int) -> int:
        epoch, i = divmod(k, len(self.pack_ids))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.pack_ids)
            self._perm_epoch = epoch
        return int(self._perm[i])

    def __getitem__(self, k: int) -> dict[str, Any]:
        pid = self.pack_id(k)
        tokens, mask, lens = self.packs[pid]
        return {"pack_id": pid, "tokens": tokens, "loss_mask": mask, "doc_lens": lens}


def split_packs(packs: PackedSequences, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack ids of the train and validation shares of `split` ("train,valid,test"), fixed by the seed."""
    shares = np.array([float(x) for x in split.split(",")])
    shares = shares / shares.sum()
    perm = np.random.default_rng([seed, 7919]).permutation(len(packs))
    n_train = int(round(shares[0] * len(packs)))
    n_valid = int(round(shares[1] * len(packs)))
    if shares[1] > 0 and n_valid == 0 and len(packs) > 1:
        n_valid, n_train = 1, min(n_train, len(packs) - 1)
    return perm[:n_train], perm[n_train:n_train + n_valid]


def collate_packed(samples: Sequence[dict[str, Any]], seq_length: int, pad_id: int,
                   fixed_length: bool = True) -> dict[str, Any]:
    """Lay the packs end to end and shift labels inside documents. fixed_length: pad to len(samples) * seq_length
    with one padding document (pipeline stages exchange fixed shapes); otherwise stop at the last real token, so no
    compute is spent on filler."""
    total = len(samples) * seq_length if fixed_length else sum(int(s["tokens"].size) for s in samples)
    tokens = np.full(total, pad_id, dtype=np.int64)
    labels = np.zeros(total, dtype=np.int64)
    loss_mask = np.zeros(total, dtype=np.float32)
    position_ids = np.zeros(total, dtype=np.int64)
    cu = [0]
    doc_pack = []  # which sample (pack) each real document came from
    for s_idx, sample in enumerate(samples):
        t, m, lens = sample["tokens"], sample["loss_mask"], sample["doc_lens"]
        if t.size > seq_length:
            raise ValueError(f"pack {sample['pack_id']} has {t.size} tokens, more than data.seq_length={seq_length}")
        base = cu[-1]
        tokens[base:base + t.size] = t
        doc_start = 0
        for n in lens.tolist():
            a = base + doc_start
            # Position j predicts token j+1 of the same document, and carries loss if that token is a target.
            labels[a:a + n - 1] = t[doc_start + 1:doc_start + n]
            loss_mask[a:a + n - 1] = m[doc_start + 1:doc_start + n]
            position_ids[a:a + n] = np.arange(n)
            doc_start += n
            cu.append(a + n)
            doc_pack.append(s_idx)
    used = cu[-1]
    num_docs = len(cu) - 1
    if used < total:  # one padding document: attends to itself only, carries no loss
        position_ids[used:total] = np.arange(total - used)
        cu.append(total)
    return {
        "tokens": torch.from_numpy(tokens).unsqueeze(0),
        "labels": torch.from_numpy(labels).unsqueeze(0),
        "loss_mask": torch.from_numpy(loss_mask).unsqueeze(0),
        "position_ids": torch.from_numpy(position_ids).unsqueeze(0),
        "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
        "max_seqlen": int(np.diff(cu).max()),
        "num_docs": num_docs,  # real documents; a padding document may follow
        "pack_ids": [int(s["pack_id"]) for s in samples],
        "doc_pack": doc_pack,
    }
