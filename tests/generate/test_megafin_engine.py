"""The megafin engine (KV cache, batches of prompts of different lengths) against HF `generate` and the cache-less
reference, and its sampling, `n`, stop and length behaviour, on a tiny random Llama converted by from-hf."""
from __future__ import annotations

import pytest
import torch

from megafin.generate.api import GenerationError, GenerationRequest, SamplingParams
from tests.greedy_reference import greedy_decode

TEXTS = ["Revenue", "Quarterly revenue rose while operating margins fell sharply in the",
         "The bank said net interest income", "EPS?", "Analysts expect the company to report higher"]


@pytest.fixture(scope="module")
def engine(llama_pair):
    from megafin.generate.engines import open_engine

    with open_engine("auto", str(llama_pair[1]), max_batch_size=8) as eng:
        yield eng


@pytest.fixture(scope="module")
def prompts(engine) -> list[list[int]]:
    ids = [engine.prompt_ids(GenerationRequest(prompt=t)) for t in TEXTS]
    assert len({len(p) for p in ids}) == len(ids)  # all lengths differ: the batch is left-padded
    return ids


def test_greedy_batch_equals_hf_generate(engine, llama_pair, prompts):
    from transformers import AutoModelForCausalLM

    n_new = 10
    seqs = engine.generate_ids(prompts, [SamplingParams(max_new_tokens=n_new)] * len(prompts))  # one batch
    hf = AutoModelForCausalLM.from_pretrained(llama_pair[0], dtype=torch.float32).eval()
    stops = sorted(seqs[0].stop_ids)
    for prompt, seq in zip(prompts, seqs):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=n_new, do_sample=False, eos_token_id=stops, pad_token_id=0)
        assert seq.tokens == out[0, len(prompt):].tolist(), prompt
        assert seq.finish_reason == ("stop" if seq.tokens[-1] in stops else "length")
    assert sum(len(set(s.tokens)) >= 3 for s in seqs) >= 3  # not one repeated token


def test_greedy_equals_the_cacheless_reference(engine, prompts):
    chosen = prompts[1:4]
    seqs = engine.generate_ids(chosen, [SamplingParams(max_new_tokens=8)] * len(chosen))
    for prompt, seq in zip(chosen, seqs):
        ref = greedy_decode(engine.net, prompt, engine.vocab_size, 8)
        assert seq.tokens == ref[:len(seq.tokens)] and (len(seq.tokens) == 8 or seq.finish_reason == "stop")


def _texts(result) -> list[str]:
    return [s.text for s in result.samples]


def test_sampling_is_reproducible_independent_of_the_batch_and_n_samples_differ(engine):
    sampled = GenerationRequest(prompt=TEXTS[2], params=SamplingParams(max_new_tokens=12, temperature=1.0,
                                                                        top_p=0.95, n=3, seed=11))
    other = GenerationRequest(prompt=TEXTS[1], params=SamplingParams(max_new_tokens=6, temperature=0.7, seed=2))
    greedy = GenerationRequest(prompt=TEXTS[0], params=SamplingParams(max_new_tokens=4))
    alone = engine.generate([sampled])[0]
    again = engine.generate([sampled])[0]
    mixed = engine.generate([other, sampled, greedy])
    assert _texts(alone) == _texts(again) == _texts(mixed[1])
    assert len(set(_texts(alone))) == 3  # n samples of one request differ
    reseeded = engine.generate([GenerationRequest(prompt=TEXTS[2], params=SamplingParams(
        max_new_tokens=12, temperature=1.0, top_p=0.95, n=3, seed=12))])[0]
    assert _texts(reseeded) != _texts(alone)
    for s in alone.samples:
        assert s.completion_tokens == 12 or s.finish_reason == "stop"


def test_stop_strings_stop_tokens_and_length(engine, prompts):
    tok = engine.tokenizer
    n_new = 12
    params = SamplingParams(max_new_tokens=n_new)
    full = engine.generate_ids([prompts[2]], [params])[0]
    assert full.finish_reason == "length" and len(full.tokens) == n_new, "pick another prompt: this one stops"
    text = tok.decode(full.tokens, skip_special_tokens=True)
    result = engine.generate([GenerationRequest(prompt=TEXTS[2], params=params)])[0]
    assert (result.samples[0].text, result.samples[0].finish_reason) == (text, "length")
    assert (result.samples[0].completion_tokens, result.prompt_tokens) == (n_new, len(prompts[2]))

    # A stop string from the middle of the greedy text: the text ends right before its first occurrence.
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = text[:text.index(stop)]
    needed = next(k for k in range(1, n_new + 1) if stop in tok.decode(full.tokens[:k], skip_special_tokens=True))
    got = engine.generate([GenerationRequest(prompt=TEXTS[2], params=SamplingParams(
        max_new_tokens=n_new, stop=("never-there", stop)))])[0].samples[0]
    assert (got.text, got.finish_reason, got.completion_tokens) == (cut, "stop", needed)
    assert stop not in got.text and needed < n_new

    # A stop token: generation ends there, the token counted but not in the text.
    stop_id = full.tokens[4]
    first = full.tokens.index(stop_id)
    got = engine.generate([GenerationRequest(prompt=TEXTS[2], params=SamplingParams(
        max_new_tokens=n_new, stop_token_ids=(stop_id,)))])[0].samples[0]
    assert (got.text, got.finish_reason, got.completion_tokens) == (
        tok.decode(full.tokens[:first], skip_special_tokens=True), "stop", first + 1)

    short = engine.generate([GenerationRequest(prompt=TEXTS[2], params=SamplingParams(max_new_tokens=3))])[0]
    assert (short.samples[0].finish_reason, short.samples[0].completion_tokens) == ("length", 3)


def test_the_vocabulary_is_read_once_per_engine_not_per_request(engine, monkeypatch):
    """Finding the end-of-turn stop tokens builds the tokenizer's whole vocabulary dict: per request that was half
    of a tiny model's evaluation time (and ~40 ms a request at Llama-3's 128K vocabulary)."""
    monkeypatch.delitem(engine.__dict__, "_tokenizer_stops", raising=False)  # as a fresh engine
    reads = []
    real = engine.tokenizer.get_vocab
    monkeypatch.setattr(engine.tokenizer, "get_vocab", lambda: reads.append(1) or real())
    params = SamplingParams(max_new_tokens=2)
    for _ in range(2):
        engine.generate([GenerationRequest(prompt=t, params=params) for t in TEXTS])
    assert len(reads) <= 1


def test_chat_messages_use_the_checkpoints_chat_template(engine):
    messages = [{"role": "user", "content": "Sentiment of: profit rose?"}]
    ids = engine.prompt_ids(GenerationRequest(messages=messages))
    assert engine.tokenizer.decode(ids) == "<|user|>Sentiment of: profit rose?\n<|assistant|>"
    result = engine.generate([GenerationRequest(messages=messages, params=SamplingParams(max_new_tokens=5))])[0]
    assert result.prompt_tokens == len(ids)
    assert result.samples[0].text == engine.tokenizer.decode(
        engine.generate_ids([ids], [SamplingParams(max_new_tokens=5)])[0].tokens[:5], skip_special_tokens=True)


def test_bad_requests_and_options_are_one_line(engine, llama_pair, tmp_path):
    from megafin.generate.engines import open_engine

    with pytest.raises(GenerationError, match=r"^request 1: temperature: expected a number >= 0, got -1"):
        engine.generate([GenerationRequest(prompt="a"), GenerationRequest(prompt="b", params=SamplingParams(
            temperature=-1))])
    with pytest.raises(GenerationError, match=r"^request 0: a request needs exactly one of"):
        engine.generate([GenerationRequest()])
    with pytest.raises(GenerationError, match=r"^request 0: the prompt has \d+ tokens, the model takes at most 255"):
        engine.generate([GenerationRequest(prompt="revenue " * 300)])
    # Refused before any process group starts (the module's engine holds this process's session).
    with pytest.raises(GenerationError, match=rf"^tokenizer={tmp_path}: not a tokenizer directory"):
        open_engine("megafin", str(llama_pair[1]), tokenizer=str(tmp_path))
    with pytest.raises(GenerationError, match=rf"^{tmp_path / 'nope'}: checkpoint directory not found$"):
        open_engine("megafin", str(tmp_path / "nope"))
    with pytest.raises(GenerationError, match=r"^the megafin engine takes the options tokenizer and max_batch_size, "
                                              r"got temprature$"):
        open_engine("megafin", str(llama_pair[1]), temprature=1.0, base_url=None)


def test_lean_path_equals_megatrons_path(engine, prompts):
    """The lean path (prefill and decode in plain torch ops, megafin/generate/lean_decode.py) against megatron's own
    path on one
    left-padded batch that drops rows as they end (length and a stop token) and mixes greedy with sampled rows."""
    assert engine.lean is not None  # a Llama: the lean step covers it
    stop_id = engine.generate_ids([prompts[0]], [SamplingParams(max_new_tokens=6)])[0].tokens[3]
    params = [SamplingParams(max_new_tokens=4 if i == 1 else 12) for i in range(len(prompts))] + [
        SamplingParams(max_new_tokens=12, stop_token_ids=(stop_id,)),
        SamplingParams(max_new_tokens=7, temperature=0.9, top_k=20, n=2, seed=5)]
    batch = prompts + [prompts[0], prompts[2]]
    lean_seqs = engine.generate_ids(batch, params)
    lean, engine.lean = engine.lean, None
    try:
        megatron_seqs = engine.generate_ids(batch, params)
    finally:
        engine.lean = lean
    assert [(s.tokens, s.finish_reason) for s in lean_seqs] == [(s.tokens, s.finish_reason) for s in megatron_seqs]
    assert lean_seqs[5].finish_reason == "stop" and len(lean_seqs[5].tokens) < 12  # a row dropped mid-batch
    assert len(lean_seqs[1].tokens) == 4
