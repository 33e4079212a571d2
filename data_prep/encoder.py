"""Plain-text encoders with ids identical to the HF tokenizer's `encode(text, add_special_tokens=False)`.

`HFEncoder`: the `tokenizers` Rust backend, `encode_batch_fast` (no offsets). Works for every tokenizer.
`TiktokenEncoder`: a `tiktoken.Encoding` built from the same byte-level BPE (ranks = HF ids mapped back to
bytes, same pre-tokenizer regex). It is only built when the tokenizer.json has exactly the shape tiktoken
implements (byte-level BPE, no normalizer, one Split regex, ignore_merges, merges in id order, all 256 bytes),
and only used after its ids matched the HF tokenizer's on a calibration text and on the run's first documents.
Texts containing an added-token string (e.g. "<|eot_id|>") always go to HF, which treats them as special.
"""
from __future__ import annotations

import itertools
import json
from typing import Any, Sequence

import numpy as np

# (ids of every text, each wrapped in prefix + ids + suffix, concatenated as int32; each wrapped length as int64)
FlatIds = tuple[np.ndarray, np.ndarray]

CALIBRATION_TEXT = (
    "Revenue rose 12.5% to $1,234,567.89 in Q3'24; EBITDA margin: 31%.\n\n  Don't panic!!  It's FY2025's "
    "guidance\t(ex-FX) -> €3.2bn / ¥450億. Ünïcödé, 日本語テキスト, emojis 📈📉, tabs\t\tand   spaces.\r\n"
    "  \n\nThe company's CEO said: \"We'll see\". 1234567890 0.001 -0.5e-3 A/B/C... ???!!! ''' \u00a0nbsp\n"
)


class HFEncoder:
    name = "hf"

    def __init__(self, backend: Any):
        self._tok = backend  # tokenizers.Tokenizer
        self._fast = hasattr(backend, "encode_batch_fast")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        fn = self._tok.encode_batch_fast if self._fast else self._tok.encode_batch
        return [e.ids for e in fn(list(texts), add_special_tokens=False)]

    def encode_flat(self, texts: Sequence[str], prefix: Sequence[int], suffix: Sequence[int]) -> FlatIds:
        ids = self.encode_batch(texts)
        lengths = np.fromiter((len(prefix) + len(x) + len(suffix) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(prefix, x, suffix) for x in ids),
                           dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths


def _bytes_decoder() -> dict[str, int]:
    # GPT-2's byte <-> printable-unicode table used by every byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiktoken_spec(tokenizer_json: dict) -> tuple[str, dict[bytes, int]] | str:
    """(regex, mergeable_ranks) if this tokenizer.json is exactly tiktoken-shaped, else the reason it is not."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        return "model is not BPE"
    if tokenizer_json.get("normalizer") is not None:
        return "has a normalizer"
    if not model.get("ignore_merges", False):
        return "BPE without ignore_merges"
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "BPE with dropout/prefix/suffix"
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    pattern = None
    if len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel":
        split, bl = parts
        if split.get("behavior") != "Isolated" or split.get("invert") or bl.get("use_regex") or bl.get("add_prefix_space"):
            return "unsupported Split/ByteLevel options"
        pattern = split.get("pattern", {}).get("Regex")
    elif len(parts) == 1 and parts[0].get("type") == "ByteLevel":
        if parts[0].get("add_prefix_space") or not parts[0].get("use_regex", True):
            return "unsupported ByteLevel options"
        pattern = _GPT2_PATTERN
    if not pattern:
        return "pre-tokenizer is not Split(regex)+ByteLevel"
    dec = _bytes_decoder()
    vocab: dict[str, int] = model.get("vocab") or {}
    ranks: dict[bytes, int] = {}
    for tok, i in vocab.items():
        try:
            ranks[bytes(dec[c] for c in tok)] = i
        except KeyError:
            return f"vocab entry {tok!r} is not byte-level"
    if len(ranks) != len(vocab) or any(bytes([b]) not in ranks for b in range(256)):
        return "vocab lacks some single bytes or has duplicate byte strings"
    # tiktoken merges by the rank of the merged token: equivalent only if merge order == id order.
    last = -1
    for m in model.get("merges") or []:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        i = vocab.get(a + b)
        if i is None or i <= last:
            return "merge order differs from id order"
        last = i
    return pattern, ranks


class TiktokenEncoder:
    name = "tiktoken"

    def __init__(self, tokenizer_json: dict, hf: HFEncoder):
        import tiktoken

        spec = tiktoken_spec(tokenizer_json)
        if isinstance(spec, str):
            raise ValueError(spec)
        pattern, ranks = spec
        added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
        # The added tokens are declared special only so that tiktoken's scan for specials looks for these strings:
        # with none declared its pattern is empty and matches at every character (~70% slower). None is ever
        # allowed, and a text containing one goes to HF (below), so they never change an id.
        specials = added or {"<|megafin-no-special|>": max(ranks.values()) + 1}
        self._enc = tiktoken.Encoding("megafin-mirror", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        self._core = self._enc._core_bpe  # direct calls: tiktoken's batch API pays a thread-pool hop per text
        self._added = tuple(added)
        self._angle = all(a.startswith("<|") for a in added)  # cheap pre-check for Llama-style names
        self.hf = hf  # the encoder whose ids these must equal; texts with added tokens go to it

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """uint32 ids per text, straight from tiktoken's buffer: no Python int per token (~20% of the work)."""
        buffer = self._core.encode_to_tiktoken_buffer
        none: set[str] = set()
        out: list[np.ndarray | None] = []
        slow: list[int] = []
        for i, t in enumerate(texts):
            if (not self._angle or "<|" in t) and any(a in t for a in self._added):
                out.append(None)
                slow.append(i)
            else:
                out.append(np.frombuffer(buffer(t, none), dtype=np.uint32))
        if slow:
            for i, ids in zip(slow, self.hf.encode_batch([texts[i] for i in slow])):
                out[i] = np.asarray(ids, dtype=np.uint32)
        return out  # type: ignore[return-value]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The same arrays as encode_flat: build_encoder's check of this method covers the ids pretrain writes.
        return [a.tolist() for a in self.encode_arrays(texts)]

    def encode_flat(self, texts: Sequence[str], prefix: Sequence[int], suffix: Sequence[int]) -> FlatIds:
        return self.flat(self.encode_arrays(texts), prefix, suffix)

    @staticmethod
    def flat(arrays: Sequence[np.ndarray], prefix: Sequence[int], suffix: Sequence[int]) -> FlatIds:
        """encode_arrays' ids as one flat array, each document between prefix and suffix, and the lengths."""
        pre, suf = np.asarray(prefix, dtype=np.uint32), np.asarray(suffix, dtype=np.uint32)
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays)) + (pre.size + suf.size)
        parts = [p for a in arrays for p in (pre, a, suf) if p.size]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
        return flat.view(np.int32), lengths  # ids < 2**31: the same bits


def build_encoder(tok: Any, prefer: str = "auto", verify_texts: Sequence[str] = ()) -> HFEncoder | TiktokenEncoder:
    """The fastest encoder whose ids equal the HF tokenizer's; `prefer` in {auto, hf, tiktoken}.

    auto: tiktoken when the tokenizer is tiktoken-shaped AND ids match on CALIBRATION_TEXT + `verify_texts`.
    tiktoken: the same, but failing loudly instead of falling back.
    """
    backend = tok.backend_tokenizer
    hf = HFEncoder(backend)
    if prefer == "hf":
        return hf
    try:
        tk = TiktokenEncoder(json.loads(backend.to_str()), hf)
        sample = [CALIBRATION_TEXT, *verify_texts]
        if tk.encode_batch(sample) != hf.encode_batch(sample):
            raise ValueError("tiktoken ids differ from the HF tokenizer's on the verification texts")
        return tk
    except Exception as e:  # noqa: BLE001 - any reason means: not safe, use HF
        if prefer == "tiktoken":
            raise ValueError(f"tiktoken fast path unavailable for {tok.name_or_path}: {e}") from e
        return hf
