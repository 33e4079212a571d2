"""Judge rewards of preference pairs (`chosen_reward` / `rejected_reward`): data_prep preference -> PREFIX_rewards ->
PackedSequences -> collate, each pair's values unchanged; a bad value is one line naming file, line and key."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dp_helpers import SAMPLES, write_jsonl


def _rows() -> list[dict]:
    rows = [json.loads(line) for line in open(SAMPLES / "preference_sample.jsonl")]
    # Rewards unique per pair, so a pair swapped with another, or chosen with rejected, is seen; the last two
    # rows carry none (1 / 0).
    for i, row in enumerate(rows[:-2]):
        row["chosen_reward"], row["rejected_reward"] = 0.1 + i / 7, -3.3 * i - 0.2
    rows[0]["chosen_reward"] = 5  # an integer is a number too
    return rows


def test_rewards_survive_prep_packing_and_collate(sample_tok, tmp_path):
    from data_prep.packed_writer import preference
    from data_prep.tokenizer import load_tokenizer
    from megafin.data.packed_collate import collate_packed
    from megafin.data.packed_dataset import PackedSequences, PackedSplit

    rows = _rows()
    r = preference(str(write_jsonl(tmp_path / "p.jsonl", rows)), sample_tok, str(tmp_path / "p"), seq_length=200,
                   quiet=True)
    assert r.meta["files"]["rewards"] == "p_rewards" and r.meta["num_rewarded_examples"] == len(rows) - 2
    ds = PackedSequences(str(tmp_path / "p"))
    assert len(ds) > 1 and ds.rewards.index.dtype == np.float64
    want = {row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][-1]["content"]:
            (float(row.get("chosen_reward", 1.0)), float(row.get("rejected_reward", 0.0))) for row in rows}
    assert len(want) == len(rows)
    tok = load_tokenizer(sample_tok)
    split = PackedSplit(ds, np.arange(len(ds)), seed=3)
    seen = {}
    for k in range(0, len(ds), 2):  # two packs per micro-batch: rewards line up across pack boundaries
        samples = [split[j] for j in range(k, min(k + 2, len(ds)))]
        batch = collate_packed(samples, seq_length=200, pad_id=0)
        docs = [d for s in samples for d in ds.documents(s["pack_id"])]
        got = batch["doc_rewards"]
        assert got.dtype == torch.float64 and got.numel() == batch["num_docs"] == len(docs)
        for (ct, cm), pair in zip(docs[0::2], got.reshape(-1, 2).tolist()):
            seen[tok.decode(ct[cm == 1]).removesuffix("<|eot_id|>")] = tuple(pair)
    assert seen == want  # exactly equal: float64 all the way


def test_no_rewards_in_no_rewards_out(sample_tok, tmp_path):
    """Pairs without rewards write no rewards file (an earlier run's is removed), and batches carry none (the distill
    loss then uses 1 / 0)."""
    from data_prep.packed_writer import preference
    from megafin.data.packed_collate import collate_packed
    from megafin.data.packed_dataset import PackedSequences, PackedSplit

    preference(str(write_jsonl(tmp_path / "judged.jsonl", _rows())), sample_tok, str(tmp_path / "p"), seq_length=200,
               quiet=True)
    assert (tmp_path / "p_rewards.bin").is_file()  # an earlier run at the same prefix had rewards
    rows = [{k: v for k, v in row.items() if not k.endswith("_reward")} for row in _rows()]
    r = preference(str(write_jsonl(tmp_path / "p.jsonl", rows)), sample_tok, str(tmp_path / "p"), seq_length=200,
                   quiet=True)
    assert "rewards" not in r.meta["files"] and "num_rewarded_examples" not in r.meta
    assert not list(tmp_path.glob("p_rewards*"))
    ds = PackedSequences(str(tmp_path / "p"))
    assert ds.rewards is None and ds.doc_rewards(0) is None
    assert "doc_rewards" not in collate_packed([PackedSplit(ds, np.arange(len(ds)), 1)[0]], 200, 0)


BAD = [({"chosen_reward": 1}, "'chosen_reward' without 'rejected_reward' (expected both judge rewards or neither)"),
       ({"rejected_reward": 0}, "'rejected_reward' without 'chosen_reward' (expected both judge rewards or neither)"),
       ({"chosen_reward": "0.9", "rejected_reward": 0}, "'chosen_reward' is \"0.9\" (expected a finite number)"),
       ({"chosen_reward": 1, "rejected_reward": None}, "'rejected_reward' is null (expected a finite number)"),
       ({"chosen_reward": True, "rejected_reward": 0}, "'chosen_reward' is true (expected a finite number)"),
       ('NaN', "'chosen_reward' is NaN (expected a finite number)"),
       ('Infinity', "'chosen_reward' is Infinity (expected a finite number)")]


@pytest.mark.parametrize("extra,message", BAD, ids=[m.split(" (")[0] for _, m in BAD])
def test_a_bad_reward_is_one_line_naming_file_line_and_key(sample_tok, tmp_path, capsys, extra, message):
    """--strict: exit 2 with that line, nothing written; by default the pair is skipped and counted as bad_reward."""
    from data_prep.cli import main

    good = {"prompt": "What is EPS?", "chosen": "Net income per share.", "rejected": "Revenue.",
            "chosen_reward": 0.5, "rejected_reward": 0.0}
    if isinstance(extra, str):  # JSON's non-finite literals, which Python's json reads as floats
        bad = json.dumps(dict(good, chosen_reward=0)).replace('"chosen_reward": 0', f'"chosen_reward": {extra}')
    else:
        bad = dict({k: v for k, v in good.items() if not k.endswith("_reward")}, **extra)
    src = write_jsonl(tmp_path / "pairs.jsonl", [good, bad])
    args = ["preference", "--input", str(src), "--tokenizer", sample_tok, "--seq-length", "200"]
    assert main([*args, "--output-prefix", str(tmp_path / "strict" / "o"), "--strict", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"data_prep preference: error: pairs.jsonl:2: {message}"]
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())
    assert main([*args, "--output-prefix", str(tmp_path / "o"), "--quiet"]) == 0
    stats = json.loads((tmp_path / "o_stats.json").read_text())
    assert stats["skipped"] == {"bad_reward": 1} and stats["docs_written"] == 1
    assert stats["first_error_by_reason"]["bad_reward"] == f"pairs.jsonl:2: {message}"
