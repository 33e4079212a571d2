"""Logits -> next token (greedy, temperature, top-k, top-p, per-sample generators) and the stop helpers."""
from __future__ import annotations

import math

import pytest
import torch

from megafin.generate.api import SamplingParams
from megafin.generate.sampling import cut_at_stop_string, filter_logits, next_tokens, sample_generator, \
    stop_token_ids


def _kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_and_top_p_keep_the_expected_tokens():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05]))
    assert _kept(filter_logits(logits, 1.0, 2, 1.0)) == [1, 3]
    # top-p: the smallest prefix (by probability) whose mass reaches p
    assert _kept(filter_logits(logits, 1.0, 0, 0.5)) == [1]
    assert _kept(filter_logits(logits, 1.0, 0, 0.51)) == [1, 3]
    assert _kept(filter_logits(logits, 1.0, 0, 0.85)) == [1, 2, 3]
    assert _kept(filter_logits(logits, 1.0, 3, 0.7)) == [1, 3]
    assert _kept(filter_logits(logits, 1.0, 0, 1.0)) == [0, 1, 2, 3, 4]
    # temperature divides the logits
    assert torch.allclose(filter_logits(logits, 0.5, 0, 1.0), logits * 2)


def test_greedy_is_argmax_and_top_k_1_sampling_too():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    greedy = next_tokens(logits, [SamplingParams()] * 4, [None] * 4)
    assert greedy.tolist() == logits.argmax(-1).tolist()
    p = SamplingParams(temperature=1.5, top_k=1, seed=1)
    assert next_tokens(logits, [p] * 4, [sample_generator(1, i) for i in range(4)]).tolist() == greedy.tolist()


def test_a_sample_depends_on_its_seed_and_index_only():
    logits = torch.randn(3, 200, generator=torch.Generator().manual_seed(1))
    p = SamplingParams(temperature=1.0, seed=5, n=2)

    def draw(rows: list[int], gens: list[torch.Generator]) -> list[int]:
        return next_tokens(logits[rows], [p] * len(rows), gens).tolist()

    alone = [draw([0], [sample_generator(5, 0)])[0] for _ in range(8)]
    assert len(set(alone)) == 1  # the same seed and index: the same token
    g = [sample_generator(5, 0), sample_generator(9, 0), sample_generator(5, 1)]
    batched = draw([2, 0, 1], [g[1], g[0], g[2]])
    assert batched[1] == alone[0]  # in a batch, after another row: unchanged
    # different indices of one seed are different streams
    firsts = {sample_generator(5, i).initial_seed() for i in range(16)}
    assert len(firsts) == 16


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    p = SamplingParams(temperature=1.0, seed=0)
    gen = sample_generator(0, 0)
    draws = [int(next_tokens(probs.log().unsqueeze(0), [p], [gen])[0]) for _ in range(2000)]
    share = draws.count(0) / len(draws)
    assert math.isclose(share, 0.7, rel_tol=0.06), share
    top_p = SamplingParams(temperature=1.0, top_p=0.6, seed=0)
    assert {int(next_tokens(probs.log().unsqueeze(0), [top_p], [gen])[0]) for _ in range(50)} == {0}


class _Tok:
    eos_token_id = 2

    def get_vocab(self) -> dict[str, int]:
        return {"<s>": 1, "</s>": 2, "<|eot_id|>": 7, "hello": 9}


def test_stop_tokens_and_stop_strings():
    assert stop_token_ids(_Tok()) == {2, 7}
    assert stop_token_ids(_Tok(), (11, 12)) == {2, 7, 11, 12}
    assert cut_at_stop_string("Answer: positive\nQ: next", ["\nQ:", "next"]) == "Answer: positive"
    assert cut_at_stop_string("abc", ["x", ""]) is None
    assert cut_at_stop_string("STOPabc", ["STOP"]) == ""


@pytest.mark.parametrize("seed", [None, 0, 2 ** 70])
def test_generators_accept_any_seed(seed):
    assert isinstance(sample_generator(seed, 3), torch.Generator)
