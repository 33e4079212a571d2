"""The model FLOPs the trainer's logged MFU counts (megafin/train/flops.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megafin.config.schema import ModelConfig
from megafin.data.packed_collate import collate_packed
from megafin.train.flops import (attended_pairs, attention_flops_per_pair, flops_per_token, layer_flops_per_token,
                                 logit_positions, logits_flops_per_position, matmul_flops_per_token)

MODEL = ModelConfig(num_layers=2, hidden_size=128, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=352)


def test_a_full_length_batch_counts_as_the_planners_flops_per_token():
    b, s, vocab = 3, 64, 4096
    batch = {"tokens": torch.zeros(b, s, dtype=torch.long)}
    assert attended_pairs(batch) == b * s * s
    step = b * s * matmul_flops_per_token(MODEL, vocab) + attended_pairs(batch) * attention_flops_per_pair(MODEL)
    assert step == pytest.approx(b * s * flops_per_token(MODEL, vocab, s), rel=1e-12)


def test_the_output_layer_runs_at_every_token_or_at_the_loss_positions_alone():
    batch = {"tokens": torch.zeros(2, 8, dtype=torch.long), "loss_mask": torch.zeros(2, 8)}
    batch["loss_mask"][0, 5:] = 1
    assert logit_positions(batch, targets_only=False) == 16 and logit_positions(batch, targets_only=True) == 3
    assert layer_flops_per_token(MODEL) + logits_flops_per_position(MODEL, 100) == matmul_flops_per_token(MODEL, 100)


def _pack(pack_id: int, lens: list[int], masks: list[np.ndarray]) -> dict:
    tokens = np.concatenate([np.arange(100, 100 + n) for n in lens])
    return {"pack_id": pack_id, "tokens": tokens, "loss_mask": np.concatenate(masks).astype(np.uint8),
            "doc_lens": np.asarray(lens)}


def test_packed_documents_count_their_own_lengths_not_seq_length_and_padding_none():
    batch = collate_packed([_pack(0, [3, 5], [np.ones(3), np.ones(5)]), _pack(1, [4], [np.ones(4)])],
                           seq_length=16, pad_id=0, fixed_length=True)
    assert batch["tokens"].numel() == 32  # two packs of 16, 20 slots of them padding
    assert attended_pairs(batch) == 3 * 3 + 5 * 5 + 4 * 4


def test_a_shared_prompt_is_counted_once_with_the_keys_the_rejected_answer_also_sees():
    chosen = np.array([1, 2, 3, 4, 5, 6])  # prompt 1 2 3, answer 4 5 6
    rejected = np.array([1, 2, 3, 7, 8])
    pack = {"pack_id": 0, "tokens": np.concatenate([chosen, rejected]),
            "loss_mask": np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1], dtype=np.uint8), "doc_lens": np.array([6, 5])}
    batch = collate_packed([pack], seq_length=16, pad_id=0, fixed_length=False, share_prompt=True)
    # the rejected document keeps the prompt's last token (3) and its answer, and also sees the chosen one's 1 2
    assert batch["cu_seqlens"].tolist() == [0, 6, 9] and batch["attn_prefix"] == [0, 2]
    assert attended_pairs(batch) == 6 * 6 + 3 * (3 + 2)
