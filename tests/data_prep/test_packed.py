"""sft / preference / mix packs: masks, packing invariants, nothing lost or duplicated (real sets in ../shared)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from dp_helpers import SAMPLES, write_jsonl


def _check_packs(prefix: str, seq_length: int):
    """Format invariants of every pack; returns the list of (tokens, mask) documents, in file order."""
    from megafin.data.packed_dataset import PackedSequences

    ds = PackedSequences(prefix)
    meta = ds.meta
    assert meta["format"] == "megafin-packed" and meta["version"] == 1 and meta["seq_length"] == seq_length
    assert len(ds) == meta["num_packs"]
    assert ds.loss_mask.index.dtype == np.uint8 and ds.doc_lens.index.dtype == np.int32
    docs, n_tok = [], 0
    for i in range(len(ds)):
        t, m, lens = ds[i]
        assert 0 < t.size <= seq_length and m.size == t.size and int(lens.sum()) == t.size and (lens > 0).all()
        assert set(np.unique(m).tolist()) <= {0, 1}
        pack_docs = ds.documents(i)
        assert [d.size for d, _ in pack_docs] == lens.tolist()
        assert np.array_equal(np.concatenate([d for d, _ in pack_docs]), t)
        assert np.array_equal(np.concatenate([dm for _, dm in pack_docs]), m)
        docs += pack_docs
        n_tok += t.size
    assert len(docs) == meta["num_docs"] and n_tok == meta["num_tokens"]
    return docs, meta


def _key(t, m) -> tuple:
    return (np.asarray(t, dtype=np.int64).tobytes(), np.asarray(m, dtype=np.uint8).tobytes())


def _expected_sft(tok, records, seq_length):
    """Independent of data_prep.chat: transformers renders, the mask is 'everything after the generation prompt'."""
    convs = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}] for r in records]
    full = tok([tok.apply_chat_template(c, tokenize=False) for c in convs], add_special_tokens=False)["input_ids"]
    head = tok([tok.apply_chat_template(c[:1], tokenize=False, add_generation_prompt=True) for c in convs],
               add_special_tokens=False)["input_ids"]
    exp, too_long = Counter(), 0
    for f, h in zip(full, head):
        assert f[: len(h)] == h
        if len(f) > seq_length:
            too_long += 1
            continue
        exp[_key(f, [0] * len(h) + [1] * (len(f) - len(h)))] += 1
    return exp, too_long


def test_sft_real_sets_masks_and_packing(shared_data, real_tok, tmp_path):
    """FPB, FiQA-SA, gold headlines and XBRL terms: every example is in exactly one pack, intact, with the
    loss on its assistant tokens (response + <|eot_id|>) only."""
    from data_prep.packed_writer import sft
    from megafin.eval.tasks import sft_records
    from data_prep.tokenizer import load_tokenizer

    sets = {"fpb": "fpb/train.jsonl", "fiqa_sa": "fiqa_sa/train.jsonl", "headline": "headline/train.jsonl",
            "xbrl": "instruct/xbrl_terms_train.jsonl"}
    paths, records = [], []
    for task, rel in sets.items():
        recs = list(sft_records.convert(task, str(shared_data / rel)))
        paths.append(str(write_jsonl(tmp_path / f"{task}.jsonl", recs)))
        records += recs
    L = 256
    r = sft(paths, real_tok, str(tmp_path / "sft"), seq_length=L, workers=2, quiet=True)
    tok = load_tokenizer(real_tok)
    expected, too_long = _expected_sft(tok, records, L)
    assert too_long > 0  # some XBRL definitions are long: the drop path is exercised
    assert r.stats["docs_read"] == len(records)
    assert r.stats["skipped"] == {"too_long": too_long}
    assert r.stats["docs_written"] == sum(expected.values())
    docs, meta = _check_packs(str(tmp_path / "sft"), L)
    assert Counter(_key(t, m) for t, m in docs) == expected  # nothing lost, nothing duplicated, masks exact
    assert meta["num_target_tokens"] == sum(int(m.sum()) for _, m in docs)
    assert meta["fill"] > 0.9  # 50-250-token examples into 256-token packs (bench/packing.py: 2048)


def test_sft_same_bytes_for_any_worker_count_and_seeded_order(shared_data, real_tok, tmp_path):
    from data_prep.packed_writer import sft
    from megafin.eval.tasks import sft_records

    src = write_jsonl(tmp_path / "fpb.jsonl", list(sft_records.convert("fpb", str(shared_data / "fpb/train.jsonl")))[:1500])
    outs = {}
    for name, w, seed in (("a", 1, 7), ("b", 2, 7), ("c", 1, 8)):
        sft(str(src), real_tok, str(tmp_path / name), seq_length=512, workers=w, seed=seed, quiet=True)
        outs[name] = b"".join((tmp_path / f"{name}_{k}{e}").read_bytes()
                              for k in ("tokens", "loss_mask", "doc_lens") for e in (".bin", ".idx"))
    assert outs["a"] == outs["b"]
    assert outs["a"] != outs["c"]  # the seed orders the packs


def test_sft_multi_turn_masks_every_assistant_turn(sample_tok, tmp_path):
    from data_prep.packed_writer import sft
    from data_prep.tokenizer import load_tokenizer

    conv = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is EBIT?"}, {"role": "assistant", "content": "Earnings before interest and taxes."},
        {"role": "user", "content": "And EBITDA?"}, {"role": "assistant", "content": "EBIT plus depreciation and amortization."}]}
    sft(str(write_jsonl(tmp_path / "c.jsonl", [conv])), sample_tok, str(tmp_path / "o"), seq_length=256, quiet=True)
    (t, m), = _check_packs(str(tmp_path / "o"), 256)[0]
    tok = load_tokenizer(sample_tok)
    assert tok.decode(t[m == 1]) == "Earnings before interest and taxes.<|eot_id|>EBIT plus depreciation and amortization.<|eot_id|>"
    assert tok.decode(t) == tok.apply_chat_template(conv["messages"], tokenize=False)


def test_sft_truncate_mode(sample_tok, tmp_path):
    from data_prep.packed_writer import sft

    rows = [{"prompt": "Summarize.", "response": "word " * 300}, {"prompt": "long " * 300, "response": "x"}]
    r = sft(str(write_jsonl(tmp_path / "t.jsonl", rows)), sample_tok, str(tmp_path / "o"), seq_length=64,
            on_overflow="truncate", quiet=True)
    assert r.stats["docs_written"] == 1 and r.stats["skipped"] == {"too_long": 1}  # prompt-only after truncation
    (t, m), = _check_packs(str(tmp_path / "o"), 64)[0]
    assert t.size == 64 and m[-1] == 1


def test_preference_pairs_stay_together_with_response_masks(sample_tok, tmp_path):
    from data_prep.packed_writer import preference
    from data_prep.tokenizer import load_tokenizer

    rows = [json.loads(l) for l in open(SAMPLES / "preference_sample.jsonl")]
    rows = rows * 3  # 36 pairs over several packs
    r = preference(str(write_jsonl(tmp_path / "p.jsonl", rows)), sample_tok, str(tmp_path / "p"), seq_length=320, quiet=True)
    assert r.meta["num_pairs"] == len(rows) and r.stats["docs_written"] == len(rows)
    from megafin.data.packed_dataset import PackedSequences

    ds = PackedSequences(str(tmp_path / "p"))
    assert len(ds) > 1
    tok = load_tokenizer(sample_tok)
    eot = "<|eot_id|>"
    seen = Counter()
    for i in range(len(ds)):
        docs = ds.documents(i)
        assert len(docs) % 2 == 0  # a pair never straddles two packs
        for (ct, cm), (rt, rm) in zip(docs[0::2], docs[1::2]):
            n = int(np.argmax(cm))  # the prompt is identical and unmasked in both documents
            assert cm[:n].sum() == 0 and (ct[:n] == rt[:n]).all() and rm[:n].sum() == 0 and cm[n:].all() and rm[n:].all()
            chosen, rejected = tok.decode(ct[cm == 1]), tok.decode(rt[rm == 1])
            assert chosen.endswith(eot) and rejected.endswith(eot)
            seen[(chosen[: -len(eot)], rejected[: -len(eot)])] += 1
    def content(v):
        return v if isinstance(v, str) else v[-1]["content"]
    assert seen == Counter((content(x["chosen"]), content(x["rejected"])) for x in rows)


def test_mix_ratio_masks_and_cpt_chunking(shared_data, real_tok, tmp_path):
    from data_prep.packed_writer import mix
    from megafin.eval.tasks import sft_records
    from data_prep.tokenizer import load_tokenizer

    cpt = tmp_path / "cpt.jsonl"
    with open(shared_data / "cpt/reuters21578_news.jsonl") as f, open(shared_data / "cpt/earnings_calls.jsonl") as g, open(cpt, "w") as o:
        for _, line in zip(range(400), f):
            o.write(line)
        for _, line in zip(range(3), g):  # transcripts of ~10k tokens: split into seq-length pieces
            o.write(line)
    it = write_jsonl(tmp_path / "it.jsonl", list(sft_records.convert("fpb", str(shared_data / "fpb/train.jsonl")))[:150])
    L = 512
    r = mix(str(cpt), str(it), real_tok, str(tmp_path / "m"), seq_length=L, cpt_ratio=0.5, workers=2, quiet=True)
    m = r.meta
    assert (m["num_cpt_examples"], m["num_it_examples"]) == (150, 150)  # CPT downsampled to the IT count
    assert r.stats["skipped"] == {"downsampled": 403 - 150} and r.stats["docs_read"] == 553
    docs, _ = _check_packs(str(tmp_path / "m"), L)
    tok = load_tokenizer(real_tok)
    bos, eot = tok.bos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")
    n_it = 0
    for t, msk in docs:
        if eot in t:  # an instruction example: prompt masked, response + <|eot_id|> targets
            n_it += 1
            n = int(np.argmax(msk))
            assert n > 0 and msk[n:].all() and t[-1] == eot
        else:  # a CPT document (or piece): every token a target except the first
            assert msk[0] == 0 and msk[1:].all() and t[0] != bos
    assert n_it == 150
    # Same mix at 0.25: IT is now the larger side and gets downsampled.
    r2 = mix(str(cpt), str(it), real_tok, str(tmp_path / "m2"), seq_length=L, cpt_ratio=0.75, quiet=True)
    assert (r2.meta["num_cpt_examples"], r2.meta["num_it_examples"]) == (403, 134)


def test_best_fit_decreasing_invariants_and_beats_first_fit():
    from data_prep.packing import best_fit_decreasing, fill_ratio, first_fit

    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(20, 200, 3000), rng.integers(500, 2048, 200)])
    bins = best_fit_decreasing(lengths, 2048)
    assert sorted(i for b in bins for i in b) == list(range(lengths.size))
    assert all(lengths[b].sum() <= 2048 for b in bins)
    assert bins == best_fit_decreasing(lengths, 2048)
    ff = first_fit(lengths, 2048)
    assert sorted(i for b in ff for i in b) == list(range(lengths.size))
    assert len(bins) <= len(ff)
    assert fill_ratio(lengths, bins, 2048) > 0.99
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing([3000], 2048)
