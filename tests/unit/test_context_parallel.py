"""Context parallelism (parallel.cp) in one process: the batch split per CP rank (megatron-core's for [b, s] batches,
Transformer Engine's per-document layout for packed ones), its inverse, the global causal mask, and the all-gather
attention of every rank's queries equal to whole-sequence attention. The 2-process runs that train under cp=2 to the
single-process losses are cases of tests/distributed/test_parallel_equivalence.py."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from megafin.config import ConfigError, load_config, validate
from megafin.data.context_parallel import (bshd_indices, bshd_layout, padded_cu_seqlens, split_bshd, split_thd,
                                           thd_indices)
from megafin.models.cp_attention import attend
from tests.helpers import REPO, TINY_RECIPE, data_overrides


class _FakeGroup:
    """What megatron-core's get_batch_on_this_cp_rank asks of a CP group (once torch.distributed is up)."""

    def __init__(self, size: int, rank: int) -> None:
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


@pytest.mark.parametrize("cp", [2, 3])
def test_bshd_split_is_megatrons_and_its_ranks_tile_the_sequence(cp, megatron_world):
    from megatron.core.utils import get_batch_on_this_cp_rank

    b, s = 2, 12 * cp
    batch = {"tokens": torch.randint(0, 1000, (b, s)), "labels": torch.randint(0, 1000, (b, s)),
             "loss_mask": torch.rand(b, s), "position_ids": torch.arange(s).repeat(b, 1)}
    seen = []
    for rank in range(cp):
        ours = split_bshd(dict(batch), cp, rank)
        theirs = get_batch_on_this_cp_rank(dict(batch), cp_group=_FakeGroup(cp, rank))
        for key in batch:
            assert torch.equal(ours[key], theirs[key]), (rank, key)
        # chunks rank and 2cp-1-rank: rank 0 holds the first and the last chunk
        assert torch.equal(ours["position_ids"][0], bshd_indices(s, cp, rank))
        seen.append(bshd_indices(s, cp, rank))
    order = torch.cat(seen)  # the gathered order: its inverse permutation restores the sequence
    assert torch.equal(torch.sort(order).values, torch.arange(s))
    inverse = torch.argsort(order)
    gathered = torch.cat([split_bshd(dict(batch), cp, r)["tokens"] for r in range(cp)], dim=1)
    assert torch.equal(gathered[:, inverse], batch["tokens"])


def test_bshd_split_refuses_a_length_not_divisible_by_2cp():
    with pytest.raises(ValueError, match="multiple of 2\\*cp=4"):
        bshd_indices(10, 2, 0)


def _packed(lens: list[int]) -> dict:
    total = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lens])[None]
    return {"tokens": torch.arange(1, total + 1)[None], "labels": torch.arange(2, total + 2)[None],
            "loss_mask": torch.ones(1, total), "position_ids": positions, "cu_seqlens": cu,
            "max_seqlen": max(lens), "num_docs": len(lens)}


def test_thd_split_pads_each_document_and_splits_it_as_transformer_engine_does():
    cp, lens = 2, [3, 5, 2, 8]
    batch = _packed(lens)
    cu_pad = padded_cu_seqlens(batch["cu_seqlens"].tolist(), cp)
    assert cu_pad == [0, 4, 12, 16, 24]  # every document up to a multiple of 2*cp=4
    # TE's thd_get_partitioned_indices: chunk r and 2cp-1-r of every document, documents in order
    assert thd_indices(cu_pad, cp, 0).tolist() == [0, 3, 4, 5, 10, 11, 12, 15, 16, 17, 22, 23]
    assert thd_indices(cu_pad, cp, 1).tolist() == [1, 2, 6, 7, 8, 9, 13, 14, 18, 19, 20, 21]
    parts = [split_thd(batch, cp, r) for r in range(cp)]
    # inverse: the ranks' tokens put back at their padded rows, filler dropped, give the micro-batch back
    whole = torch.zeros(1, cu_pad[-1], dtype=torch.long)
    mask = torch.zeros(1, cu_pad[-1])
    for r, part in enumerate(parts):
        whole[:, thd_indices(cu_pad, cp, r)] = part["tokens"]
        mask[:, thd_indices(cu_pad, cp, r)] = part["loss_mask"]
    real = torch.cat([torch.arange(s, s + n) for s, n in zip(cu_pad[:-1], lens)])
    assert torch.equal(whole[:, real], batch["tokens"])
    assert mask.sum() == batch["loss_mask"].sum()  # filler carries no loss
    assert whole.count_nonzero() == sum(lens)
    for part in parts:
        assert part["cu_seqlens_padded"].tolist() == cu_pad and part["max_seqlen"] == 8
        assert torch.equal(part["cu_seqlens"], batch["cu_seqlens"])  # real lengths, as TE takes them
        # every token's RoPE row is its position in its document
        assert torch.equal(part["position_ids"][0], part["cp_layout"].q_pos)


def test_thd_indices_are_transformer_engines():
    """GPU only: the per-document split equals TE's own partitioning kernel, which its THD CP attention assumes."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA and Transformer Engine (TE's thd_get_partitioned_indices is a CUDA kernel)")
    tex = pytest.importorskip("transformer_engine_torch")
    for cp, cu_pad in ((2, [0, 4, 12, 16, 24]), (4, [0, 8, 40, 48])):
        cu = torch.tensor(cu_pad, dtype=torch.int32, device="cuda")
        for rank in range(cp):
            theirs = tex.thd_get_partitioned_indices(cu, cu_pad[-1], cp, rank).cpu().tolist()
            assert theirs == thd_indices(cu_pad, cp, rank).tolist(), (cp, rank)


def test_mask_is_causal_in_global_positions_within_documents():
    cp, s = 2, 8
    for rank in range(cp):
        layout = bshd_layout(s, cp, rank)
        q, kv = bshd_indices(s, cp, rank), torch.cat([bshd_indices(s, cp, r) for r in range(cp)])
        assert torch.equal(layout.mask(), kv[None, :] <= q[:, None])
    # packed: rank 0 holds chunks 0 and 3 of each document; a query sees its own document's earlier tokens only
    part = split_thd(_packed([3, 5]), cp, 0)
    mask = part["cp_layout"].mask()
    layout = part["cp_layout"]
    for i in range(mask.size(0)):
        for j in range(mask.size(1)):
            want = bool(layout.q_doc[i] == layout.kv_doc[j] and layout.kv_pos[j] <= layout.q_pos[i])
            assert bool(mask[i, j]) == want
    assert mask.sum(1).min() >= 1  # every query sees at least itself


@pytest.mark.parametrize("packed", [False, True], ids=["bshd", "thd"])
def test_each_ranks_attention_over_gathered_keys_is_its_rows_of_the_whole(packed):
    """What ContextParallelSDPAAttention computes on rank r (local queries, every rank's K/V gathered in rank order,
    the layout's mask) equals rank r's rows of attention over the whole sequence (per document when packed)."""
    torch.manual_seed(0)
    cp, h, g, d = 2, 4, 2, 8
    lens = [5, 11, 8] if packed else [24]
    cu_pad = padded_cu_seqlens([0, *torch.tensor(lens).cumsum(0).tolist()], cp)
    total = cu_pad[-1]
    q, k, v = torch.randn(1, h, total, d), torch.randn(1, g, total, d), torch.randn(1, g, total, d)
    want = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                     enable_gqa=True) for a, b in zip(cu_pad[:-1], cu_pad[1:])], 2)
    rows = (lambda r: thd_indices(cu_pad, cp, r)) if packed else (lambda r: bshd_indices(total, cp, r))
    gathered = torch.cat([rows(r) for r in range(cp)])
    for rank in range(cp):
        if packed:
            layout = split_thd(_packed([b - a for a, b in zip(cu_pad[:-1], cu_pad[1:])]), cp, rank)["cp_layout"]
        else:
            layout = bshd_layout(total, cp, rank)
        out = attend(q[:, :, rows(rank)], k[:, :, gathered], v[:, :, gathered], layout.mask(), d ** -0.5)
        torch.testing.assert_close(out, want[:, :, rows(rank)], rtol=1e-5, atol=1e-6)


def _cfg(tiny_data, *overrides, recipe=TINY_RECIPE):
    return load_config(recipe, [*data_overrides(tiny_data), *overrides])


CP_BAD = [
    (["parallel.cp=0"], 1, "parallel.cp: expected a positive integer"),
    (["parallel.cp=2"], 3, "parallel.tp: expected tp*pp*cp=2 to divide the world size 3"),
    (["parallel.cp=2", "data.seq_length=126"], 2, "data.seq_length: expected a multiple of 2*parallel.cp=4"),
    (["parallel.cp=2", "model.attention_backend=local"], 2,
     "model.attention_backend: expected one of te, sdpa with parallel.cp=2"),
    (["parallel.cp=2", "parallel.cp_comm_type=a2a"], 2, "parallel.cp_comm_type: expected p2p (the default) with "
     "model.attention_backend=sdpa"),
    (["parallel.cp_comm_type=ring"], 1, "parallel.cp_comm_type: expected one of p2p, a2a, all_gather, a2a+p2p"),
    (["parallel.cp=2", "model.attention_backend=te"], 2, "model.attention_backend: expected te only with CUDA"),
]


@pytest.mark.parametrize("overrides,world,message", CP_BAD, ids=[f"cp-bad-{i}" for i in range(len(CP_BAD))])
def test_context_parallel_config_errors_are_one_line(overrides, world, message, tiny_data):
    if "model.attention_backend=te" in overrides and torch.cuda.is_available():
        pytest.skip("te is available on this machine")
    with pytest.raises(ConfigError) as err:
        validate(_cfg(tiny_data, *overrides), world_size=world)
    text = str(err.value)
    assert "\n" not in text and text.startswith(message), text


def test_pipeline_stages_take_context_parallel_on_indexed_corpora_only(tiny_data):
    validate(_cfg(tiny_data, "parallel.cp=2", "parallel.pp=2"), world_size=4)  # fixed [b, s/cp] activations
    cfg = _cfg(tiny_data, "parallel.cp=2", "parallel.pp=2", f"data.blend=[{{path: {tiny_data / 'sft'}, weight: 1}}]",
               recipe=REPO / "recipes/tiny/sft.yaml")
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=4)
    assert str(err.value).startswith("parallel.cp: expected 1 with parallel.pp=2 on packed data"), str(err.value)


def test_preference_stages_refuse_context_parallel(tiny_data):
    cfg = _cfg(tiny_data, "parallel.cp=2", f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]",
               recipe=REPO / "recipes/tiny/dpo.yaml")
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=2)
    assert "parallel.cp: expected 1 for stage dpo" in str(err.value), str(err.value)


def test_a_valid_context_parallel_config_resolves_to_the_all_gather_attention(tiny_data):
    cfg = _cfg(tiny_data, "parallel.cp=2", "model.attention_backend=auto")
    validate(cfg, world_size=4)  # dp=2 x cp=2
    if not torch.cuda.is_available():
        assert cfg.model.attention_backend == "sdpa"
    from megafin.models.spec import decoder_layer_spec

    spec = decoder_layer_spec("sdpa", "auto", cp=2)
    assert spec.submodules.self_attention.submodules.core_attention.__name__ == "ContextParallelSDPAAttention"
    with pytest.raises(ValueError, match="cannot attend across parallel.cp=2"):
        decoder_layer_spec("local", "local", cp=2)


def test_planner_reads_the_recipes_cp(tiny_data):
    from megafin.plan.layouts import overrides, recipe_layout

    lay = recipe_layout(_cfg(tiny_data, "parallel.cp=2"))
    assert lay.cp == 2 and "parallel.cp=2" in overrides(lay)


def test_rope_rows_of_a_packed_cp_batch_are_positions_in_documents():
    """CachedRopeSelfAttention's per-token table rows under cp > 1: each token's position in its padded document."""
    from megafin.models.rope import _thd_rows

    part = split_thd(_packed([3, 5]), 2, 1)
    params = types.SimpleNamespace(cp_layout=part["cp_layout"], cu_seqlens_q=part["cu_seqlens"],
                                   cu_seqlens_q_padded=part["cu_seqlens_padded"], cu_seqlens_kv=part["cu_seqlens"])
    rows = _thd_rows(params, freqs_len=8, tokens=part["tokens"].size(1))
    assert rows.tolist() == [1, 2, 2, 3, 4, 5]  # doc 0 (padded to 4): chunks 1, 2; doc 1 (padded to 8): chunks 1, 2
    assert _thd_rows(types.SimpleNamespace(cp_layout=part["cp_layout"], cu_seqlens_q=part["cu_seqlens"]),
                     freqs_len=4, tokens=6) is None  # a table too short for the padded documents: megatron's path
