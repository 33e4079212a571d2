"""On real financial text (../shared/data/cpt: Reuters news and 10-K risk factors): data_prep -> megafin train,
and the training and validation losses fall."""
from __future__ import annotations

import json

from tests.helpers import FAST, assert_ok, train_here


def test_loss_falls_on_real_financial_text(shared_data, tmp_path):
    from data_prep.pretrain import pretrain
    from data_prep.tokenizer import iter_training_texts, train_tokenizer

    risk = shared_data / "cpt" / "sec_10k_risk_factors.jsonl"
    news = shared_data / "cpt" / "reuters21578_news.jsonl"
    texts = list(iter_training_texts(news, max_chars=1_000_000))
    tok = train_tokenizer(texts, vocab_size=2048, out_dir=tmp_path / "tok")
    pretrain([str(news)], str(tok), str(tmp_path / "news"), quiet=True)
    pretrain([str(risk)], str(tok), str(tmp_path / "risk"), quiet=True)
    run_dir = tmp_path / "run"
    proc = train_here([*FAST, f"data.tokenizer={tok}", "train.steps=40", "train.eval_interval=20",
                      "train.eval_iters=2", "optimizer.lr=1e-3", "train.threads=2",
                      f"data.blend=[{{path: {tmp_path / 'news_text_document'}, weight: 0.5}}, "
                      f"{{path: {tmp_path / 'risk_text_document'}, weight: 0.5}}]", f"run_dir={run_dir}"])
    assert_ok(proc)
    rec = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rec[:3]) / 3
    last = sum(r["loss"] for r in rec[-3:]) / 3
    val = [r["val_loss"] for r in rec if "val_loss" in r]
    print(f"train loss {first:.3f} -> {last:.3f}; val loss {val}")
    assert last < first - 1.0, (first, last)  # uniform over 2048 tokens is 7.62
    assert len(val) == 2 and val[1] < val[0]
