"""The one reader of data_prep's packed format (docs/formats.md), and the trainer's train/validation splits of it.

`PackedSequences` is what the trainer, data_prep's tests and the benches read packed data with (data_prep writes it:
`data_prep.packed_writer`). `megafin.data.packed_collate` lays the packs out as micro-batches.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_meta(prefix: str) -> dict[str, Any]:
    return json.loads(Path(f"{prefix}_meta.json").read_text())


class PackedSequences:
    """Memory-mapped packs of one data_prep output (PREFIX_{tokens,loss_mask,doc_lens}.bin/.idx + PREFIX_meta.json);
    item i is (tokens, loss_mask, doc_lens) of pack i as int64 copies (never views that outlive the memory map).
    Preference data with judge rewards also has PREFIX_rewards (listed in the meta's files): `doc_rewards(i)`."""

    def __init__(self, prefix: str) -> None:
        import warnings

        with warnings.catch_warnings():  # megatron-core's package import warns about missing TE/Apex: noise here
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = prefix
        self.meta = read_meta(prefix)
        self.tokens = IndexedDataset(f"{prefix}_tokens", mmap=True)
        self.loss_mask = IndexedDataset(f"{prefix}_loss_mask", mmap=True)
        self.doc_lens = IndexedDataset(f"{prefix}_doc_lens", mmap=True)
        if not len(self.tokens) == len(self.loss_mask) == len(self.doc_lens):
            raise ValueError(f"{prefix}: tokens, loss_mask and doc_lens hold different numbers of packs")
        self.rewards = None
        if "rewards" in self.meta.get("files", {}):
            self.rewards = IndexedDataset(f"{prefix}_rewards", mmap=True)
            if len(self.rewards) != len(self.tokens):
                raise ValueError(f"{prefix}: rewards and tokens hold different numbers of packs")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.asarray(self.tokens[i], dtype=np.int64), np.asarray(self.loss_mask[i], dtype=np.int64),
                np.asarray(self.doc_lens[i], dtype=np.int64))

    def doc_rewards(self, i: int) -> np.ndarray | None:
        """The judge's reward of each document of pack i (float64, aligned with doc_lens); None: the data has none
        (a reader then uses 1 for chosen, 0 for rejected)."""
        return None if self.rewards is None else np.array(self.rewards[i], dtype=np.float64)

    def documents(self, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(tokens, loss_mask) of each document of pack i, in order."""
        tokens, mask, lens = self[i]
        cu = np.concatenate([[0], np.cumsum(lens)])
        return [(tokens[a:b], mask[a:b]) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]


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
        sample = {"pack_id": pid, "tokens": tokens, "loss_mask": mask, "doc_lens": lens}
        if self.packs.rewards is not None:
            sample["doc_rewards"] = self.packs.doc_rewards(pid)
        return sample


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
