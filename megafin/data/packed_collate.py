"""Packs (`megafin.data.packed_dataset`) as THD micro-batches for the trainer.

A micro-batch is `micro_batch_size` packs laid end to end as ONE sequence of exactly micro_batch_size * seq_length
tokens (megatron's THD layout, batch dimension 1). The remainder is a padding document that carries no loss, so
every micro-batch has the same shape (pipeline stages exchange fixed-size activations). Labels and their mask are
shifted inside each document only: the last token of a document predicts nothing.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def shared_prompt_length(chosen: np.ndarray, chosen_mask: np.ndarray, rejected: np.ndarray,
                         rejected_mask: np.ndarray) -> int:
    """Tokens a preference pair's two documents share before either response starts (the rendered prompt)."""
    limit = min(int(np.argmax(chosen_mask)) if chosen_mask.any() else chosen.size,
                int(np.argmax(rejected_mask)) if rejected_mask.any() else rejected.size)
    same = chosen[:limit] == rejected[:limit]
    return int(limit if same.all() else np.argmin(same))


def _documents(sample: dict[str, Any], share_prompt: bool) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """(tokens, raw loss mask, first position, prefix) per document of a pack. With share_prompt, documents 2k and
    2k+1 are a preference pair: the rejected one keeps only the last shared prompt token and its response, starts
    at that token's position and attends to the chosen document's first `prefix` tokens (the rest of the prompt),
    which is exactly the context it had whole."""
    t, m, lens = sample["tokens"], sample["loss_mask"], sample["doc_lens"].tolist()
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int).tolist()
    docs = [(t[a:a + n], m[a:a + n], 0, 0) for a, n in zip(starts, lens)]
    if share_prompt:
        for k in range(0, len(docs) - 1, 2):
            (ct, cm, _, _), (rt, rm, _, _) = docs[k], docs[k + 1]
            shared = shared_prompt_length(ct, cm, rt, rm)
            if shared >= 2:
                docs[k + 1] = (rt[shared - 1:], rm[shared - 1:], shared - 1, shared - 1)
    return docs


def collate_packed(samples: Sequence[dict[str, Any]], seq_length: int, pad_id: int,
                   fixed_length: bool = True, share_prompt: bool = False) -> dict[str, Any]:
    """Lay the packs end to end and shift labels inside documents. fixed_length: pad to len(samples) * seq_length
    with one padding document (pipeline stages exchange fixed shapes); otherwise stop at the last real token, so no
    compute is spent on filler. share_prompt: preference pairs keep their prompt once (see `_documents`);
    `attn_prefix` then lists, per document, how many tokens of the document before it it also attends to.
    Samples with `doc_rewards` (preference packs with judge rewards) give `doc_rewards`, one per real document."""
    docs_per_sample = []
    for sample in samples:
        if sample["tokens"].size > seq_length:
            raise ValueError(f"pack {sample['pack_id']} has {sample['tokens'].size} tokens, more than "
                             f"data.seq_length={seq_length}")
        docs_per_sample.append(_documents(sample, share_prompt))
    used_total = sum(d[0].size for docs in docs_per_sample for d in docs)
    total = len(samples) * seq_length if fixed_length else used_total
    tokens = np.full(total, pad_id, dtype=np.int64)
    labels = np.zeros(total, dtype=np.int64)
    loss_mask = np.zeros(total, dtype=np.float32)
    position_ids = np.zeros(total, dtype=np.int64)
    cu = [0]
    doc_pack = []  # which sample (pack) each real document came from
    attn_prefix = []
    for s_idx, docs in enumerate(docs_per_sample):
        for t, m, first_pos, prefix in docs:
            a, n = cu[-1], t.size
            tokens[a:a + n] = t
            # Position j predicts token j+1 of the same document, and carries loss if that token is a target.
            labels[a:a + n - 1] = t[1:]
            loss_mask[a:a + n - 1] = m[1:]
            position_ids[a:a + n] = np.arange(first_pos, first_pos + n)
            cu.append(a + n)
            doc_pack.append(s_idx)
            attn_prefix.append(prefix)
    used = cu[-1]
    num_docs = len(cu) - 1
    if used < total:  # one padding document: attends to itself only, carries no loss
        position_ids[used:total] = np.arange(total - used)
        cu.append(total)
        attn_prefix.append(0)
    batch = {
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
    if any(attn_prefix):
        batch["attn_prefix"] = attn_prefix
    if samples and all("doc_rewards" in s for s in samples):
        rewards = np.concatenate([np.asarray(s["doc_rewards"], dtype=np.float64) for s in samples])
        if rewards.size != num_docs:
            raise ValueError(f"packs {batch['pack_ids']}: {rewards.size} document rewards for {num_docs} documents")
        batch["doc_rewards"] = torch.from_numpy(rewards)
    return batch
