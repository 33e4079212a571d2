"""`data_prep merge`: N shards -> the bytes of one run; mixed, missing or duplicate shards refused in one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dp_helpers import write_jsonl

# Stats fields that legitimately differ between one run and a merge (timings and --workers are the shards' own;
# the merge names its shards). Every other field must be equal.
DIFFERS = {"seconds", "docs_per_s", "tokens_per_s", "workers", "merged_from"}


def _rows():
    rows = [{"text": f"Q{i % 4} revenue rose {i}% on strong demand. " * (1 + i % 9)} for i in range(120)]
    rows[7], rows[30], rows[31], rows[90] = "not json", {"txt": "wrong key"}, {"text": "   "}, "{broken"
    rows[50] = {"text": "Long filing. " * 400}
    return rows


def _corpus(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _rows())
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"short {i}"} for i in range(25)])
    return [str(a), str(b)]


def _shards(paths, tok, prefix, n, **kw):
    from data_prep.pretrain import pretrain

    return [pretrain(paths, tok, str(prefix), shard=f"{i}/{n}", quiet=True, **kw) for i in range(n)]


def _same_output(a, b):
    for ext in ("_text_document.bin", "_text_document.idx"):
        assert (a.parent / (a.name + ext)).read_bytes() == (b.parent / (b.name + ext)).read_bytes(), ext
    sa, sb = (json.loads((p.parent / f"{p.name}_stats.json").read_text()) for p in (a, b))
    assert set(sb) - set(sa) == {"merged_from"}
    sa["output"] = sb["output"] = None  # the path differs only by directory
    assert {k: v for k, v in sa.items() if k not in DIFFERS} == {k: v for k, v in sb.items() if k not in DIFFERS}


@pytest.mark.parametrize("n,workers", [(3, 1), (8, 2)])
def test_merge_of_shards_is_byte_identical_to_one_run(sample_tok, tmp_path, n, workers):
    from data_prep.merge import merge
    from data_prep.pretrain import pretrain

    paths = _corpus(tmp_path)
    one = pretrain(paths, sample_tok, str(tmp_path / "one" / "cpt"), quiet=True)
    assert one.stats["skipped"] == {"empty_text": 1, "malformed_json": 2, "missing_key": 1}
    shards = _shards(paths, sample_tok, tmp_path / "sh" / "cpt", n, workers=workers)
    assert sum(s.stats["docs_written"] for s in shards) == one.stats["docs_written"]
    assert len({s.stats["docs_written"] for s in shards}) > 1  # really split (not all in one shard)
    merge([str(tmp_path / "sh" / "cpt")], str(tmp_path / "merged" / "cpt"), quiet=True)
    _same_output(tmp_path / "one" / "cpt", tmp_path / "merged" / "cpt")
    from data_prep.outputs import check_complete

    assert check_complete(str(tmp_path / "merged" / "cpt_text_document")) is None


def _repeating_corpus(tmp_path):
    """_corpus with repeats: inside a.jsonl (near and far, so within one shard and across shards), and b.jsonl
    repeating a.jsonl."""
    rows = _rows()
    rows[60], rows[61], rows[110] = rows[59], rows[3], rows[1]
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"short {i % 20}"} for i in range(25)] + rows[10:14])
    return [str(a), str(b)]


@pytest.mark.parametrize("n", [3, 8])
def test_dedup_shards_merge_to_one_dedup_run(sample_tok, tmp_path, n):
    """--dedup with --shard: each shard drops its own repeats, the merge those across shards; the result is one
    --dedup run's bytes and stats (the first duplicate's line included), and --strict stops where one run stops."""
    from data_prep.merge import merge
    from data_prep.pretrain import pretrain
    from data_prep.stats import BadInputError

    paths = _repeating_corpus(tmp_path)
    one = pretrain(paths, sample_tok, str(tmp_path / "one" / "cpt"), dedup=True, quiet=True)
    assert one.stats["skipped"]["duplicate"] == 12
    shards = _shards(paths, sample_tok, tmp_path / "sh" / "cpt", n, dedup=True)
    own = sum(s.stats["skipped"].get("duplicate", 0) for s in shards)
    assert 0 < own < 12  # repeats inside a shard and across shards
    merge(str(tmp_path / "sh" / "cpt"), str(tmp_path / "merged" / "cpt"), quiet=True)
    _same_output(tmp_path / "one" / "cpt", tmp_path / "merged" / "cpt")

    # No malformed rows, repeats 20 lines apart only: --strict stops at the first repeat, which is across shards.
    clean = [str(write_jsonl(tmp_path / "c.jsonl", [{"text": f"short {i % 20}"} for i in range(25)]))]
    with pytest.raises(BadInputError) as stopped:
        pretrain(clean, sample_tok, str(tmp_path / "one" / "strict"), dedup=True, strict=True, quiet=True)
    _shards(clean, sample_tok, tmp_path / "st" / "cpt", 2, dedup=True, strict=True)
    with pytest.raises(BadInputError) as merged:
        merge(str(tmp_path / "st" / "cpt"), str(tmp_path / "st" / "merged"), quiet=True)
    assert str(merged.value) == str(stopped.value) and "c.jsonl:21: exact duplicate" in str(merged.value)
    assert not (tmp_path / "st" / "merged_text_document.bin").exists()


def test_dedup_shard_digests_are_checked(sample_tok, tmp_path, capsys):
    from data_prep.cli import main

    paths = _repeating_corpus(tmp_path)
    _shards(paths, sample_tok, tmp_path / "cpt", 2, dedup=True)
    digests = tmp_path / "cpt_shard1-of-2_text_document_digests.npy"
    rows = np.load(str(digests))
    args = ["merge", "--inputs", str(tmp_path / "cpt"), "--output-prefix", str(tmp_path / "out" / "cpt")]

    def replaced(new, manifest_too):
        np.save(str(digests), new, allow_pickle=True)
        if manifest_too:  # as if the shard had been written so: only the content check can tell
            stats_path = tmp_path / "cpt_shard1-of-2_stats.json"
            stats = json.loads(stats_path.read_text())
            stats["file_bytes"][digests.name] = digests.stat().st_size
            stats_path.write_text(json.dumps(stats))
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("data_prep merge: error: ") and digests.name in err, err
        return err

    assert "bytes but" in replaced(rows[:-1], manifest_too=False)  # the shard's manifest has its size
    assert "does not match its shard's stats" in replaced(rows[:-1], manifest_too=True)  # a row short
    assert "does not match" in replaced(rows["line"], manifest_too=True)  # not rows
    assert "unreadable" in replaced(np.zeros(3, dtype=object), manifest_too=True)  # a pickle is never loaded
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_merged_output_loads_in_megatron_core(sample_tok, tmp_path):
    """The .bin/.idx are written without megatron-core: its builder and reader are the reference."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_prep.merge import merge
    from data_prep.writers import SequenceWriter, import_builder

    paths = _corpus(tmp_path)
    shards = _shards(paths, sample_tok, tmp_path / "cpt", 2)
    merge([str(tmp_path / "cpt_shard0-of-2_text_document.bin"), str(tmp_path / "cpt_shard1-of-2_stats.json")],
          str(tmp_path / "m"), quiet=True)
    ds = IndexedDataset(str(tmp_path / "m_text_document"))
    assert len(ds) == sum(s.stats["docs_written"] for s in shards)
    first = IndexedDataset(str(tmp_path / "cpt_shard0-of-2_text_document"))
    assert all(np.array_equal(ds[i], first[i]) for i in range(len(first)))
    for dtype in (np.uint16, np.int32):  # same bytes as megatron-core's IndexedDatasetBuilder, incl. merged copies
        seqs = [np.arange(k, dtype=np.int64) * 7 + 70000 % (1 << 16) for k in (3, 1, 7, 2)]
        w = SequenceWriter(str(tmp_path / "ours"), dtype)
        w.add_many(np.concatenate(seqs[:2]), [3, 1])
        w.add(seqs[2])
        w.finalize()
        w2 = SequenceWriter(str(tmp_path / "joined"), dtype)
        w2.add_file(str(tmp_path / "ours.bin"), np.array([3, 1, 7]))
        w2.add(seqs[3])
        w2.finalize()
        b = import_builder()(str(tmp_path / "ref.bin"), dtype=dtype)
        for s in seqs:
            b.add_document(s, [s.size])
        b.finalize(str(tmp_path / "ref.idx"))
        for e in (".bin", ".idx"):
            assert (tmp_path / f"joined{e}").read_bytes() == (tmp_path / f"ref{e}").read_bytes(), (dtype, e)


def test_refused_shard_sets_are_one_line_and_write_nothing(sample_tok, tmp_path, capsys):
    from data_prep.cli import main
    from data_prep.pretrain import pretrain
    from data_prep.tokenizer import train_tokenizer

    paths = _corpus(tmp_path)
    _shards(paths, sample_tok, tmp_path / "a" / "cpt", 3)
    sh = [str(tmp_path / "a" / f"cpt_shard{i}-of-3") for i in range(3)]
    out = str(tmp_path / "out" / "cpt")

    def refused(inputs, *expected):
        assert main(["merge", "--inputs", *inputs, "--output-prefix", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("data_prep merge: error: "), err
        for e in expected:
            assert e in err, err
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    refused(sh[:2], "1 of 3 shards missing (index 2; given 0, 1)")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    refused([*sh, str(tmp_path / "b" / "cpt_shard1-of-3")], "shard 1/3 given twice")
    # Other settings: --bos, another tokenizer at the same path (by content), another split, other inputs.
    pretrain(paths, sample_tok, str(tmp_path / "c" / "cpt"), shard="2/3", bos="always", quiet=True)
    refused([*sh[:2], str(tmp_path / "c" / "cpt_shard2-of-3")], "settings.bos 'always' vs 'never'")
    tok2 = tmp_path / "tok2"
    shutil.copytree(sample_tok, tok2)
    pretrain(paths, str(tok2), str(tmp_path / "d" / "cpt"), shard="0/3", quiet=True)
    train_tokenizer([json.loads(l)["text"] for l in open(paths[1])] * 20, 300, tok2)
    pretrain(paths, str(tok2), str(tmp_path / "d" / "cpt"), shard="1/3", quiet=True)
    refused([str(tmp_path / "d" / "cpt"), sh[2]], "made with other settings")
    pretrain(paths, sample_tok, str(tmp_path / "e" / "cpt"), shard="2/4", quiet=True)
    refused([*sh[:2], str(tmp_path / "e" / "cpt_shard2-of-4")], "but", "is of 3")
    pretrain(paths[:1], sample_tok, str(tmp_path / "f" / "cpt"), shard="2/3", quiet=True)
    refused([*sh[:2], str(tmp_path / "f" / "cpt_shard2-of-3")], "inputs")
    # Not a shard; an interrupted shard (its commit marker); a shard whose .bin was cut short.
    pretrain(paths, sample_tok, str(tmp_path / "g" / "cpt"), quiet=True)
    refused([str(tmp_path / "g" / "cpt")], "no data_prep shard")
    (tmp_path / "a" / "cpt_shard1-of-3_text_document.incomplete").write_text("{}")
    refused(sh, "incomplete data_prep output")
    (tmp_path / "a" / "cpt_shard1-of-3_text_document.incomplete").unlink()
    binp = tmp_path / "a" / "cpt_shard0-of-3_text_document.bin"
    binp.write_bytes(binp.read_bytes()[:-2])
    refused(sh, "cpt_shard0-of-3_text_document.bin", "bytes but")
    assert main(["merge", "--inputs", *sh[1:], str(tmp_path / "b" / "cpt_shard0-of-3"), "--output-prefix",
                 sh[1]]) == 2
    assert "would overwrite a shard" in capsys.readouterr().err
    assert main(["merge", "--inputs", *sh[1:], str(tmp_path / "b" / "cpt_shard0-of-3"), "--output-prefix", out,
                 "--quiet"]) == 0


def test_nothing_written_is_refused_as_one_run_refuses_it(sample_tok, tmp_path):
    from data_prep.merge import merge
    from data_prep.pretrain import pretrain
    from data_prep.stats import EmptyOutputError

    src = write_jsonl(tmp_path / "a.jsonl", [{"txt": f"row {i}"} for i in range(30)])
    with pytest.raises(EmptyOutputError) as one:
        pretrain(str(src), sample_tok, str(tmp_path / "one" / "cpt"), quiet=True)
    shards = _shards(str(src), sample_tok, tmp_path / "s", 3)  # empty shards are written: the merge judges
    assert [s.stats["docs_written"] for s in shards] == [0, 0, 0]
    with pytest.raises(EmptyOutputError) as merged:
        merge(str(tmp_path / "s"), str(tmp_path / "m" / "cpt"), quiet=True)
    assert str(merged.value) == str(one.value)
    pretrain(str(src), sample_tok, str(tmp_path / "one" / "cpt"), quiet=True, allow_empty=True)
    merge(str(tmp_path / "s"), str(tmp_path / "m" / "cpt"), quiet=True, allow_empty=True)
    _same_output(tmp_path / "one" / "cpt", tmp_path / "m" / "cpt")
