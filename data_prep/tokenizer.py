"""Train megafin's own tokenizer and load any Hugging Face tokenizer directory.

Why byte-level BPE (the `tokenizers` library) rather than sentencepiece BPE: it is what Llama-3 uses, every
string round-trips exactly (no unknown tokens, no whitespace normalisation), it trains in well under a
second for small vocabularies, and its vocabulary can be mirrored by a `tiktoken.Encoding` that yields the
same ids several times faster (see `data_prep.encoder`). The layout copies Llama-3's `tokenizer.json`:
Llama-3 pre-tokenizer regex + byte-level alphabet, `ignore_merges`, special tokens after the merges,
a post-processor that prepends `<|begin_of_text|>`, and Llama-3's chat template.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

# Llama-3's pre-tokenizer pattern (also tiktoken's cl100k pattern): letters, 1-3 digit groups, punctuation runs,
# newlines, other whitespace. It covers every character, so no text is dropped by either BPE engine.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, START_HEADER, END_HEADER, EOT]

# Meta-Llama-3-8B-Instruct's template, verbatim: BOS once, a header per message, content trimmed, <|eot_id|>.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def iter_training_texts(path: str | os.PathLike, text_key: str = "text", max_chars: int | None = None,
                        skipped: Any = None) -> Iterator[str]:
    """Texts from a JSONL(.gz)/parquet/datasets input (bad lines are ignored: training only needs statistics).

    skipped: a Counter that receives `rows` and, per reason, the rows that gave no text (for the error message
    when none did).
    """
    from data_prep.sources import iter_records

    seen = 0
    for rec in iter_records([str(path)]):
        if skipped is not None:
            skipped["rows"] += 1
        if rec.error is not None or not isinstance(rec.value, dict):
            if skipped is not None:
                skipped[rec.error[0] if rec.error else "malformed_json"] += 1
            continue
        text = rec.value.get(text_key)
        if not isinstance(text, str) or not text:
            if skipped is not None:
                skipped["missing_key" if text_key not in rec.value else "wrong_type" if not isinstance(text, str)
                        else "empty_text"] += 1
            continue
        yield text
        seen += len(text)
        if max_chars is not None and seen >= max_chars:
            return


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike,
    min_frequency: int = 2,
    model_max_length: int = 131072,
) -> Path:
    """Train a Llama-3-layout byte-level BPE on `texts`; save an HF tokenizer directory; return its path.

    `vocab_size` is the final size including the special tokens (which take the last ids, as in Llama-3).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    n_special = len(SPECIAL_TOKENS)
    if vocab_size < 256 + n_special + 1:
        raise ValueError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs >= {256 + n_special + 1}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_special,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # ignore_merges: a pre-token that is itself in the vocabulary becomes that one token (Llama-3 / tiktoken rule).
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_hf_dir(tok, out, model_max_length)
    return out


def save_hf_dir(tok: Any, out: Path, model_max_length: int) -> None:
    """Write the HF directory by hand (no transformers import: keeps `tokenizer train` fast).

    `tokenizer_config.json` carries the chat template inline and names `PreTrainedTokenizerFast`, the class every
    transformers version (4.x and 5.x), vLLM and lm-eval load; `special_tokens_map.json` is written for older readers.
    """
    tok.save(str(out / "tokenizer.json"))
    added = {}
    for content in SPECIAL_TOKENS:
        added[str(tok.token_to_id(content))] = {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
    config = {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": LLAMA3_CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2) + "\n"
    )


def train_tokenizer_from_file(
    input_path: str | os.PathLike,
    vocab_size: int,
    out_dir: str | os.PathLike,
    text_key: str = "text",
    max_chars: int | None = 200_000_000,
    min_frequency: int = 2,
) -> Path:
    """`train_tokenizer` over the `text_key` strings of one input file (JSONL, JSONL.gz, parquet, datasets dir).

    An input without any such string is an error (`EmptyOutputError`): the result would hold bytes only.
    """
    import itertools
    from collections import Counter

    from data_prep.outputs import check_writable_dir
    from data_prep.sources import check_inputs
    from data_prep.stats import EmptyOutputError, input_names

    check_inputs([str(input_path)])
    check_writable_dir(out_dir, f"--out {out_dir}")  # before training, not after
    skipped: Counter = Counter()
    texts = iter_training_texts(input_path, text_key, max_chars, skipped)
    first = next(texts, None)
    if first is None:
        rows = skipped.pop("rows", 0)
        why = "no rows: the input is empty or only blank lines" if not rows else \
            f"{rows} rows read, none with text: " + "; ".join(f"{r} {n}" for r, n in skipped.most_common())
        hint = "; check --text-key" if "missing_key" in skipped or "wrong_type" in skipped else ""
        raise EmptyOutputError(f"{input_names([str(input_path)])}: no text under '{text_key}' to train on ({why}){hint}")
    return train_tokenizer(itertools.chain([first], texts), vocab_size, out_dir, min_frequency=min_frequency)


_CACHE: dict[str, Any] = {}


def load_tokenizer(path: str | os.PathLike) -> Any:
    """Any local HF tokenizer directory (megafin's, Llama-3's, ...). Never touches the hub.

    Cached per process (and inherited by forked workers): loading costs ~0.3 s each time.
    """
    key = os.path.abspath(str(path))
    if key not in _CACHE:
        _CACHE[key] = _load_tokenizer(path)
    return _CACHE[key]


def _load_tokenizer(path: str | os.PathLike) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(
            f"{p}: no such tokenizer directory (expected an HF tokenizer dir with tokenizer.json, "
            "e.g. from `python -m data_prep tokenizer train`)"
        )
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{p}: data_prep needs a fast (tokenizer.json) tokenizer, got {type(tok).__name__}")
    return tok


class LiteTokenizer:
    """The few things plain-text encoding needs, read from tokenizer.json + tokenizer_config.json without
    importing transformers (~1 s of start-up that `pretrain` on short corpora would otherwise pay).
    Same ids as `AutoTokenizer` (the same Rust tokenizer); chat rendering still uses the full loader."""

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        p = Path(path)
        self.name_or_path = str(p)
        self.backend_tokenizer = Tokenizer.from_file(str(p / "tokenizer.json"))
        cfg = json.loads((p / "tokenizer_config.json").read_text()) if (p / "tokenizer_config.json").exists() else {}
        smap = json.loads((p / "special_tokens_map.json").read_text()) if (p / "special_tokens_map.json").exists() else {}

        def tid(name: str) -> int | None:
            v = cfg.get(name, smap.get(name))
            v = v.get("content") if isinstance(v, dict) else v
            return self.backend_tokenizer.token_to_id(v) if isinstance(v, str) else None

        self.bos_token_id, self.eos_token_id, self.pad_token_id = tid("bos_token"), tid("eos_token"), tid("pad_token")

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids


def load_text_tokenizer(path: str | os.PathLike) -> Any:
    """For plain-text encoding only: `LiteTokenizer` when the dir has tokenizer.json, else `load_tokenizer`."""
    key = "lite:" + os.path.abspath(str(path))
    if key not in _CACHE:
        p = Path(path)
        if not p.is_dir():
            return load_tokenizer(path)  # raises the clear error
        _CACHE[key] = LiteTokenizer(p) if (p / "tokenizer.json").is_file() else load_tokenizer(p)
    return _CACHE[key]


# The files of a tokenizer directory that decide its ids (a model directory's weights are not among them).
_TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt"
                              r"|.*\.model|.*\.tiktoken)$")


def tokenizer_digest(path: str | os.PathLike) -> str:
    """sha256 over the names and bytes of the files that decide a tokenizer's ids: outputs made with the same
    path but a retrained tokenizer differ here (`data_prep merge` refuses to mix them)."""
    import hashlib

    h = hashlib.sha256()
    p = Path(path)
    for f in sorted(p.iterdir()) if p.is_dir() else []:
        if f.is_file() and _TOKENIZER_FILES.match(f.name):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def special_ids(tok: Any) -> dict[str, int | None]:
    """bos/eos(=EOD)/pad ids and what the tokenizer itself adds around plain text (`add_special_tokens=True`).

    pad falls back to EOD for tokenizers without one (Llama-3's); it is never stored inside packs anyway.
    """
    plain = tok.encode("a", add_special_tokens=False)
    full = tok.encode("a", add_special_tokens=True)
    k = len(full) - len(plain)
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0) if k else 0
    eos = tok.eos_token_id
    if eos is None:
        raise ValueError(f"{tok.name_or_path}: tokenizer has no eos_token; data_prep needs one as the EOD token")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return {
        "bos": tok.bos_token_id,
        "eod": eos,
        "pad": pad,
        "prefix": full[:start],  # ids the tokenizer prepends (Llama-3: [BOS])
        "suffix": full[start + len(plain) :],  # ids it appends (usually none)
        "vocab_size": len(tok),
    }
