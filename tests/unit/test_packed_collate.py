"""collate_packed: labels shifted inside documents, positions restarting per document, and the two lengths (fixed
for pipeline stages; trimmed to the real tokens otherwise)."""
from __future__ import annotations

import numpy as np
import torch

from megafin.data.packed_collate import collate_packed


def _sample(pid: int, lens: list[int], mask_from: list[int]) -> dict:
    tokens = np.arange(100 * pid, 100 * pid + sum(lens))
    mask = np.concatenate([(np.arange(n) >= m).astype(np.int64) for n, m in zip(lens, mask_from)])
    return {"pack_id": pid, "tokens": tokens, "loss_mask": mask, "doc_lens": np.array(lens)}


def test_labels_positions_and_the_padding_document():
    b = collate_packed([_sample(1, [3, 4], [1, 2])], seq_length=10, pad_id=0)
    assert b["tokens"].shape == (1, 10)
    assert b["cu_seqlens"].tolist() == [0, 3, 7, 10]  # the filler is a document of its own
    assert b["num_docs"] == 2
    assert b["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2]
    # position j predicts token j+1 of its own document; the last token of a document predicts nothing
    assert b["labels"][0, :7].tolist() == [101, 102, 0, 104, 105, 106, 0]
    assert b["loss_mask"][0].tolist() == [1, 1, 0, 0, 1, 1, 0, 0, 0, 0]


def test_trimmed_length_drops_only_the_filler():
    samples = [_sample(1, [3, 4], [1, 2]), _sample(2, [5], [0])]
    fixed = collate_packed(samples, seq_length=10, pad_id=0)
    trimmed = collate_packed(samples, seq_length=10, pad_id=0, fixed_length=False)
    n = 12  # 7 + 5 real tokens
    assert trimmed["tokens"].shape == (1, n) and fixed["tokens"].shape == (1, 20)
    assert trimmed["cu_seqlens"].tolist() == [0, 3, 7, 12]
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        assert torch.equal(trimmed[key][0], fixed[key][0, :n]), key
    assert trimmed["num_docs"] == fixed["num_docs"] == 3
    assert fixed["loss_mask"][0, n:].sum() == 0  # the filler never carried loss
