"""tokenizer train: an HF directory with Llama-3 special tokens and chat template; the fast encoder's ids."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.tokenizer import BOS, EOS, EOT, LLAMA3_CHAT_TEMPLATE, PAD, SPECIAL_TOKENS

from dp_helpers import REPO, SAMPLES


def test_trained_dir_loads_with_autotokenizer(sample_tok):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sample_tok, local_files_only=True)
    assert len(tok) == 700
    # Llama-3 layout: the special tokens take the last ids.
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(700 - len(SPECIAL_TOKENS), 700))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    cfg = json.loads((Path(sample_tok) / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == LLAMA3_CHAT_TEMPLATE
    ids = tok("Net income rose 7%.")["input_ids"]
    assert ids[0] == tok.bos_token_id  # plain text gets BOS, as with Llama-3
    assert tok.decode(ids, skip_special_tokens=True) == "Net income rose 7%."
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], tokenize=False
    )
    assert chat == (
        f"{BOS}<|start_header_id|>user<|end_header_id|>\n\nHi{EOT}"
        f"<|start_header_id|>assistant<|end_header_id|>\n\nHello{EOT}"
    )
    # The template's control tokens are single special tokens in the ids.
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(EOT)) == 2 and ids[0] == tok.bos_token_id


def test_byte_level_round_trip_any_text(sample_tok):
    from data_prep.tokenizer import load_tokenizer

    tok = load_tokenizer(sample_tok)
    for text in ["  leading spaces", "tabs\tand\nnewlines\r\n", "Ünïcödé 日本語 📈", "a" * 3000, "\u00a0nbsp"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_cli_train_is_fast(tmp_path):
    out = tmp_path / "tok"
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "data_prep", "tokenizer", "train", "--input", str(SAMPLES / "sft_sample.jsonl"),
         "--text-key", "response", "--vocab-size", "300", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t < 10  # incl. interpreter start; the training itself is ~0.1 s
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


def test_every_subcommand_has_help():
    for cmd in (["tokenizer", "train"], ["pretrain"], ["sft"], ["preference"], ["mix"]):
        r = subprocess.run([sys.executable, "-m", "data_prep", *cmd, "--help"], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0 and "usage" in r.stdout, (cmd, r.stderr)


def test_vocab_too_small_is_an_error(tmp_path):
    from data_prep.tokenizer import train_tokenizer

    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], 100, tmp_path)


def test_tiktoken_fast_path_identical_on_real_text(shared_data, real_tok):
    """The fast path is used only when verified; here its ids equal the HF tokenizer's on real documents."""
    from data_prep.encoder import HFEncoder, build_encoder
    from data_prep.tokenizer import load_tokenizer

    tok = load_tokenizer(real_tok)
    enc = build_encoder(tok)
    assert enc.name == "tiktoken"
    texts = []
    for name, n in (("cpt/earnings_calls.jsonl", 20), ("cpt/sec_10k_risk_factors.jsonl", 10), ("fpb/train.jsonl", 2000),
                    ("fiqa_sa/train.jsonl", 547), ("tfns/test.jsonl", 1000)):
        with open(shared_data / name) as f:
            texts += [json.loads(l)["text"] for _, l in zip(range(n), f)]
    texts.append("user text with a control token <|eot_id|> inside")  # must follow HF (special token) exactly
    assert enc.encode_batch(texts) == HFEncoder(tok.backend_tokenizer).encode_batch(texts)


def test_flat_ids_equal_for_both_encoders(sample_tok):
    """pretrain writes encode_flat's arrays: the tiktoken mirror's (from tiktoken's buffers, a text with an added
    token through HF) equal HF's list path, prefix and suffix included, and an empty batch is empty."""
    import numpy as np

    from data_prep.encoder import HFEncoder, build_encoder
    from data_prep.tokenizer import load_tokenizer

    tok = load_tokenizer(sample_tok)
    fast, hf = build_encoder(tok), HFEncoder(tok.backend_tokenizer)
    assert fast.name == "tiktoken"
    texts = ["Revenue rose 12.5% to $1.2bn.", "a control token <|eot_id|> inside", "Ünïcödé 📈", " "]
    for prefix, suffix in (([], [3]), ([1], [2, 3])):
        (f_flat, f_len), (h_flat, h_len) = fast.encode_flat(texts, prefix, suffix), hf.encode_flat(texts, prefix, suffix)
        assert f_flat.dtype == h_flat.dtype == np.int32 and f_len.dtype == h_len.dtype == np.int64
        assert f_flat.tolist() == h_flat.tolist() and f_len.tolist() == h_len.tolist()
        assert f_flat[: len(prefix)].tolist() == prefix and f_flat[f_len[0] - len(suffix) : f_len[0]].tolist() == suffix
    assert [a.size for a in fast.encode_flat([], [1], [2])] == [0, 0]


def test_tiktoken_mirror_without_added_tokens(sample_tok):
    """With no added tokens the mirror declares one sentinel special (tiktoken's scan needs a pattern); a text that
    contains the sentinel's string is still plain text, as HF reads it."""
    from tokenizers import Tokenizer

    from data_prep.encoder import HFEncoder, TiktokenEncoder

    spec = json.loads((Path(sample_tok) / "tokenizer.json").read_text())
    spec["added_tokens"] = []
    hf = HFEncoder(Tokenizer.from_str(json.dumps(spec)))
    texts = ["Revenue <|megafin-no-special|> rose", "<|eot_id|> plain here", "plain"]
    mirror = TiktokenEncoder(spec, hf)
    assert mirror.encode_batch(texts) == hf.encode_batch(texts)
    assert [a.tolist() for a in mirror.encode_flat(texts, [1], [2])] == [a.tolist() for a in hf.encode_flat(texts, [1], [2])]


def test_fast_path_refused_when_not_tiktoken_shaped(sample_tok, tmp_path):
    """Without ignore_merges the BPE semantics differ from tiktoken's: auto must fall back to HF."""
    import shutil

    from data_prep.encoder import build_encoder
    from data_prep.tokenizer import _load_tokenizer

    d = tmp_path / "tok"
    shutil.copytree(sample_tok, d)
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["model"]["ignore_merges"] = False
    (d / "tokenizer.json").write_text(json.dumps(spec))
    tok = _load_tokenizer(d)
    assert build_encoder(tok).name == "hf"
    with pytest.raises(ValueError, match="ignore_merges"):
        build_encoder(tok, prefer="tiktoken")
