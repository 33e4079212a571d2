"""pretrain: round trip through .bin/.idx on the real CPT corpora, formats, workers, dedup."""
from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from dp_helpers import SAMPLES, write_jsonl


def _read(prefix):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(prefix, mmap=True)


def test_round_trip_real_cpt_and_worker_invariance(shared_data, real_tok, tmp_path):
    """Detokenizing what was written gives the input text; 1 and 2 workers write byte-identical files."""
    from data_prep.pretrain import pretrain
    from data_prep.tokenizer import load_tokenizer

    # All of Reuters and the 10-K sections, the first 60 earnings calls: ~7 MB, ~1 s per run.
    calls = tmp_path / "calls.jsonl"
    with open(shared_data / "cpt" / "earnings_calls.jsonl") as f, open(calls, "w") as g:
        for _, line in zip(range(60), f):
            g.write(line)
    inputs = [str(shared_data / "cpt" / "reuters21578_news.jsonl"), str(shared_data / "cpt" / "sec_10k_risk_factors.jsonl"), str(calls)]
    r1 = pretrain(inputs, real_tok, str(tmp_path / "w1"), workers=1, quiet=True)
    r2 = pretrain(inputs, real_tok, str(tmp_path / "w2"), workers=2, quiet=True)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1_text_document{ext}").read_bytes() == (tmp_path / f"w2_text_document{ext}").read_bytes()
    assert r1.stats["encoder"] == "tiktoken"

    texts = [json.loads(l)["text"] for p in inputs for l in open(p)]
    tok = load_tokenizer(real_tok)
    ds = _read(r1.prefix)
    assert len(ds) == len(texts) == r1.stats["docs_written"] == r1.stats["docs_read"]
    assert int(ds.sequence_lengths.sum()) == r1.stats["tokens"]
    assert list(ds.document_indices) == list(range(len(texts) + 1))  # one document per sequence (Megatron)
    for i, text in enumerate(texts):
        ids = ds[i]
        assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]  # EOD appended (Megatron-LM layout)
        assert tok.decode(ids[:-1]) == text
    # And the ids are the HF tokenizer's own.
    for i in (0, len(texts) - 1):
        assert list(ds[i]) == tok(texts[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # --bos auto prepends what the tokenizer adds to plain text (BOS here), nothing else changes.
    r3 = pretrain(inputs[0], real_tok, str(tmp_path / "bos"), bos="auto", quiet=True)
    ds3 = _read(r3.prefix)
    assert list(ds3[5]) == [tok.bos_token_id] + list(ds[5])
    stats = json.loads((tmp_path / "w1_stats.json").read_text())
    assert stats["docs_read"] == stats["docs_written"] + sum(stats["skipped"].values())


def test_input_formats_give_identical_outputs(sample_tok, tmp_path):
    """JSONL, JSONL.gz, parquet and a `datasets` directory of the same rows -> the same .bin/.idx bytes."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.pretrain import pretrain

    rows = [json.loads(l) for l in open(SAMPLES / "sft_sample.jsonl")]
    rows = [{"text": (r.get("answer") or r.get("response") or r["messages"][-1]["content"])} for r in rows]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    with open(src, "rb") as f, gzip.open(tmp_path / "c.jsonl.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "c_ds"))
    outs = {}
    for name in ("c.jsonl", "c.jsonl.gz", "c.parquet", "c_ds"):
        pretrain(str(tmp_path / name), sample_tok, str(tmp_path / f"o_{name}"), quiet=True)
        outs[name] = [(tmp_path / f"o_{name}_text_document{e}").read_bytes() for e in (".bin", ".idx")]
    assert all(v == outs["c.jsonl"] for v in outs.values())
    assert len(_read(str(tmp_path / "o_c.jsonl_text_document"))) == len(rows)


def test_dedup_and_encoder_choice_do_not_change_ids(sample_tok, tmp_path):
    from data_prep.pretrain import pretrain

    rows = [{"text": "Gold rose."}, {"text": "Stocks fell."}, {"text": "Gold rose."}, {"text": "Gold rose. "}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    r = pretrain(str(src), sample_tok, str(tmp_path / "dd"), dedup=True, quiet=True)
    assert r.stats["docs_written"] == 3 and r.stats["skipped"] == {"duplicate": 1}
    a = pretrain(str(src), sample_tok, str(tmp_path / "hf"), encoder="hf", quiet=True)
    b = pretrain(str(src), sample_tok, str(tmp_path / "tk"), encoder="tiktoken", quiet=True)
    assert (a.stats["encoder"], b.stats["encoder"]) == ("hf", "tiktoken")
    assert (tmp_path / "hf_text_document.bin").read_bytes() == (tmp_path / "tk_text_document.bin").read_bytes()


def test_add_many_writes_what_add_document_writes(tmp_path):
    """SequenceWriter.add_many touches the builder's index lists directly: pin it to the public path."""
    from data_prep.writers import SequenceWriter, import_builder

    seqs = [np.arange(n, dtype=np.int32) + n for n in (3, 1, 7, 2)]
    w = SequenceWriter(str(tmp_path / "fast"), np.uint16)
    w.add_many(np.concatenate(seqs[:3]), [3, 1, 7])
    w.add(seqs[3])
    w.finalize()
    b = import_builder()(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for s in seqs:
        b.add_document(s, [s.size])
    b.finalize(str(tmp_path / "ref.idx"))
    for e in (".bin", ".idx"):
        assert (tmp_path / f"fast{e}").read_bytes() == (tmp_path / f"ref{e}").read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_encoder_that_differs_on_the_first_documents_is_not_used(sample_tok, tmp_path, monkeypatch, workers):
    """The tiktoken mirror is used only after its ids equal HF's on the first documents. When they differ (here on
    one document, not on the calibration text), auto uses HF (the output is HF's, byte for byte) and --encoder
    tiktoken fails in one line, writing nothing."""
    from data_prep import encoder as enc_mod
    from data_prep.pretrain import pretrain

    fast = enc_mod.TiktokenEncoder.encode_arrays

    def drifting(self, texts):  # a fast encoder that differs from HF on one document (not the calibration text)
        return [np.append(ids, np.uint32(0)) if "MARKER" in t else ids for t, ids in zip(texts, fast(self, texts))]

    rows = [{"text": f"Revenue rose {i}% in Q{i % 4 + 1}."} for i in range(40)] + [{"text": "MARKER gold fell."}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    want = pretrain(str(src), sample_tok, str(tmp_path / "hf"), encoder="hf", quiet=True)
    monkeypatch.setattr(enc_mod.TiktokenEncoder, "encode_arrays", drifting)
    got = pretrain(str(src), sample_tok, str(tmp_path / "auto"), workers=workers, quiet=True)
    assert got.stats["encoder"] == "hf" and got.stats["docs_written"] == want.stats["docs_written"] == 41
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"auto_text_document{ext}").read_bytes() == (tmp_path / f"hf_text_document{ext}").read_bytes()
    with pytest.raises(ValueError, match="tiktoken fast path unavailable for .*differ from the HF tokenizer's"):
        pretrain(str(src), sample_tok, str(tmp_path / "tk"), encoder="tiktoken", workers=workers, quiet=True)
    assert not list(tmp_path.glob("tk*"))
