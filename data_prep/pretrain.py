"""`data_prep pretrain`: text corpus -> PREFIX_text_document.bin/.idx (+ PREFIX_stats.json), Megatron-LM layout.

Each document becomes `ids(text) + [EOD]`, byte-identical to what Megatron-LM's `tools/preprocess_data.py
--append-eod` (core_v0.16.1) writes for the same HF tokenizer (`--bos auto|always` prepends BOS instead). Workers parse and encode chunks of lines;
the parent de-duplicates, counts and writes in input order, so the output is byte-identical for any --workers.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from data_prep import outputs
from data_prep.parallel import cap_workers, chunked, ordered_map
from data_prep import shard_dedup
from data_prep.sources import DEFAULT_MAX_DOC_BYTES, Raw, Record, check_inputs, input_fingerprint, iter_raw, parse_raw
from data_prep.stats import Stats
from data_prep.writers import SequenceWriter, token_dtype

if TYPE_CHECKING:
    from data_prep.shards import Shard

CHUNK_ITEMS = 2048
CHUNK_BYTES = 1 << 20
VERIFY_DOCS = 64  # first documents on which the fast encoder must match HF before it is used
VERIFY_CHARS = 2_000_000


def extract_text(rec: Record, text_key: str, max_bytes: int) -> str | tuple[str, str]:
    """The document text of a parsed record, or (reason, message) saying what was expected."""
    if rec.error is not None:
        return rec.error
    v = rec.value
    if text_key not in v:
        keys = ", ".join(list(v)[:8])
        return "missing_key", f"missing key '{text_key}' (expected a string under --text-key {text_key}; keys: {keys})"
    text = v[text_key]
    if not isinstance(text, str):
        return "wrong_type", f"'{text_key}' is a {type(text).__name__} (expected a string under --text-key {text_key})"
    if not text.strip():
        return "empty_text", f"'{text_key}' is empty (expected non-blank text)"
    if len(text) > max_bytes:  # rows from parquet/datasets (JSONL lines were already capped by bytes)
        return "doc_too_large", f"document of {len(text):,} characters exceeds --max-doc-bytes {max_bytes:,}"
    return text


# ---- worker side ------------------------------------------------------------------------------------------
_W: dict[str, Any] = {}


def _init_worker(tokenizer_dir: str, encoder: str, text_key: str, max_bytes: int, bos: str, dedup: bool) -> None:
    from data_prep.encoder import build_encoder
    from data_prep.tokenizer import load_text_tokenizer, special_ids

    tok = load_text_tokenizer(tokenizer_dir)
    sp = special_ids(tok)
    prefix = sp["prefix"] if bos == "auto" else ([sp["bos"]] if bos == "always" and sp["bos"] is not None else [])
    suffix = [] if bos == "never" else list(sp["suffix"])
    if not suffix or suffix[-1] != sp["eod"]:
        suffix = suffix + [sp["eod"]]
    enc = build_encoder(tok, prefer=encoder)
    _W.update(
        enc=enc, hf=enc.hf if enc.name == "tiktoken" else None, text_key=text_key, max_bytes=max_bytes,
        prefix=prefix, suffix=suffix, dedup=dedup, dtype=token_dtype(len(tok)),
    )


def _encode_chunk(work: tuple[list[Raw], int]) -> tuple[int, list, list | None, np.ndarray, np.ndarray, bool]:
    """(chunk, check) -> (items, bad items as (index, where, reason, message), digests of the good items or None,
    their flat ids, their lengths, whether the fast encoder's ids differed from HF's on the chunk's first `check`
    items). Only bad items carry a location: a clean chunk costs the parent no per-document work."""
    chunk, check = work
    bad: list = []
    texts: list[str] = []
    good: list[int] = []
    key, max_bytes = _W["text_key"], _W["max_bytes"]
    for i, raw in enumerate(chunk):
        d = raw.data
        if type(d) is bytes:  # the common case, decided as `parse_raw` + `extract_text` would, without their objects
            try:
                v = json.loads(d.decode("utf-8"))
            except ValueError:
                v = None
            t = v.get(key) if type(v) is dict else None
            if type(t) is str and len(t) <= max_bytes and t.strip():
                texts.append(t)
                good.append(i)
                continue
        rec = parse_raw(raw, max_bytes)
        got = extract_text(rec, key, max_bytes)
        if isinstance(got, tuple):
            bad.append((i, rec.where, got[0], got[1]))
        else:
            texts.append(got)
            good.append(i)
    digests = None
    if _W["dedup"]:  # (item index, where, digest) per good item: a repeat is reported where it is
        digests = [(i, f"{chunk[i].source}:{chunk[i].line}",
                    hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest())
                   for i, t in zip(good, texts)]
    differs = False
    if check:  # the corpus's first documents: the fast encoder's own arrays, written only if they equal HF's
        arrays = _W["enc"].encode_arrays(texts)
        checked = [j for j, i in enumerate(good) if i < check]
        differs = [arrays[j].tolist() for j in checked] != _W["hf"].encode_batch([texts[j] for j in checked])
        flat, lengths = _W["enc"].flat(arrays, _W["prefix"], _W["suffix"])
    else:
        flat, lengths = _W["enc"].encode_flat(texts, _W["prefix"], _W["suffix"])
    # In the .bin's dtype here, not in the parent: uint16 halves what comes back through the pipe, and the parent,
    # which every chunk passes through, converts nothing.
    return len(chunk), bad, digests, flat.astype(_W["dtype"], copy=False), lengths, differs


# Reasons for which a run that wrote nothing most likely named the wrong key.
TEXT_KEY_HINTS = {r: "check --text-key" for r in ("missing_key", "wrong_type", "empty_text")}


# ---- parent side ------------------------------------------------------------------------------------------
def _raw_size(r: Raw) -> int:
    return len(r.data) if isinstance(r.data, (bytes, bytearray)) else 256


def _verification_head(raws: list[Raw], text_key: str, max_bytes: int) -> tuple[list[str], int]:
    """The texts the fast encoder must encode as HF does before it is used (the first documents, up to VERIFY_DOCS
    or VERIFY_CHARS), and how many of `raws` they come from."""
    texts, n = [], 0
    for i, raw in enumerate(raws[:VERIFY_DOCS]):
        got = extract_text(parse_raw(raw, max_bytes), text_key, max_bytes)
        if isinstance(got, str):
            texts.append(got)
            n += len(got)
            if n > VERIFY_CHARS:
                return texts, i + 1
    return texts, min(len(raws), VERIFY_DOCS)


def choose_encoder(tok: Any, raws: list[Raw], text_key: str, max_bytes: int, prefer: str) -> str:
    """Pick 'tiktoken' or 'hf' once, in the parent, from the first documents: same choice for any --workers."""
    from data_prep.encoder import build_encoder

    return build_encoder(tok, prefer=prefer, verify_texts=_verification_head(raws, text_key, max_bytes)[0]).name


class _FastEncoderDiffers(Exception):
    """A worker found the fast encoder's ids different from HF's on the corpus's first documents."""


def _with_checks(chunks: Iterable[list[Raw]], check: int) -> Iterator[tuple[list[Raw], int]]:
    """Each chunk with how many of its first items are among the first `check` items of all."""
    for chunk in chunks:
        k = min(check, len(chunk))
        check -= k
        yield chunk, k


def run_settings(tokenizer: str, text_key: str, bos: str, max_doc_bytes: int, dedup: bool) -> dict:
    """What decides the bytes written (beyond the inputs): shards merge only when theirs are equal."""
    from data_prep.tokenizer import tokenizer_digest

    return {"tokenizer_sha256": tokenizer_digest(tokenizer), "text_key": text_key, "bos": bos,
            "max_doc_bytes": max_doc_bytes, "dedup": dedup}


def _write_checked(writer: SequenceWriter, stats: Stats, seen: set, bad: list, digests: list | None,
                   flat: np.ndarray, lengths: np.ndarray, record: shard_dedup.DigestRecord | None = None) -> None:
    """A chunk with skipped items or under --dedup: count the skips in item order (under --strict the first one
    stops the run), drop repeats, write the rest. `record`: a --dedup shard's record for `data_prep merge`."""
    keep = np.ones(len(lengths), dtype=bool)
    events = list(bad)
    for k, (i, where, digest) in enumerate(digests or ()):
        if digest in seen:
            keep[k] = False
            events.append((i, where, shard_dedup.DUPLICATE, shard_dedup.MESSAGE))
        else:
            seen.add(digest)
        if record is not None:
            record.add(where, digest, bool(keep[k]))
    for _, where, reason, msg in sorted(events, key=lambda e: e[0]):
        stats.skip(where, reason, msg)
    if not keep.all():
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate([flat[offsets[k]: offsets[k + 1]] for k in np.flatnonzero(keep)] or [flat[:0]])
        lengths = lengths[keep]
    if len(lengths):
        writer.add_many(flat, lengths)
        stats.written(len(lengths), int(lengths.sum()))


@dataclass
class PretrainResult:
    prefix: str  # PREFIX_text_document (what a recipe names)
    stats: dict


def pretrain(
    inputs: str | Iterable[str],
    tokenizer: str,
    output_prefix: str,
    text_key: str = "text",
    workers: int = 1,
    dedup: bool = False,
    strict: bool = False,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    encoder: str = "auto",
    bos: str = "never",
    progress: bool | None = None,
    quiet: bool = False,
    allow_empty: bool = False,
    shard: "str | Shard | None" = None,
) -> PretrainResult:
    """Tokenize text documents into `{output_prefix}_text_document.bin/.idx` and `{output_prefix}_stats.json`.

    inputs: JSONL / JSONL.gz / parquet paths, `datasets` save_to_disk dirs, or `hub:NAME`.
    bos: 'never' (default) = ids(text) + EOD, byte-identical to Megatron-LM's preprocess_data.py; 'auto' = add
         what the tokenizer adds to plain text (BOS for Llama-3 and megafin's tokenizers); 'always'.
    encoder: 'auto' (verified tiktoken fast path, else HF), 'hf', 'tiktoken' (fail if not identical).
    allow_empty: write a (loadable) dataset of no documents instead of raising `EmptyOutputError`.
    shard: 'i/N' = tokenize only shard i's part of the inputs (`data_prep.shards`) into `{output_prefix}_shardI-of-N`
           (an empty shard is written, not refused: `data_prep merge` judges the whole); the merge of all N
           shards is byte-identical to the run without --shard. With dedup a shard drops its own repeats and
           records its documents' digests; the merge drops the repeats across shards (`data_prep.shard_dedup`).
    Raises `BadInputError` under strict on the first bad item or for an unreadable input, `FileNotFoundError`
    for a missing input, `OutputError` for an output location that cannot be written. The outputs appear as
    one set (`data_prep.outputs`); a run that raises leaves the previous output as it was.
    """
    from data_prep.tokenizer import load_text_tokenizer

    workers = cap_workers(workers)
    paths = check_inputs([inputs] if isinstance(inputs, str) else list(inputs))
    shard_info = None
    if shard is not None:
        from data_prep.shards import iter_pieces, parse_shard, plan

        shard = parse_shard(shard)
        pieces = plan(paths, shard)
        output_prefix = shard.prefix(output_prefix)
        allow_empty = True
        shard_info = {"index": shard.index, "count": shard.count, "pieces": [p.to_dict() for p in pieces]}
    record = shard_dedup.DigestRecord() if shard_info is not None and dedup else None
    outputs.check_output_prefix(output_prefix)
    tok = load_text_tokenizer(tokenizer)
    raw_iter = iter_raw(paths, max_doc_bytes)
    # The encoder is chosen on the corpus's first documents, whichever shard this is: the same choice as one run.
    head = list(itertools.islice(raw_iter, VERIFY_DOCS))
    if shard_info is None and encoder != "hf":
        # The workers check the fast encoder against HF on those documents as they encode them: checked in the
        # parent first, ~2 MB of text took ~1 s before any worker started. Here only the calibration text.
        from data_prep.encoder import build_encoder

        enc_name = build_encoder(tok, prefer=encoder).name
        check = _verification_head(head, text_key, max_doc_bytes)[1] if enc_name == "tiktoken" else 0
    else:
        enc_name, check = choose_encoder(tok, head, text_key, max_doc_bytes, encoder), 0
        if shard_info is not None:
            raw_iter, head = iter_pieces(pieces, max_doc_bytes), []
    run = dict(paths=paths, tokenizer=tokenizer, output_prefix=output_prefix, text_key=text_key, workers=workers,
               dedup=dedup, strict=strict, max_doc_bytes=max_doc_bytes, bos=bos, progress=progress, quiet=quiet,
               allow_empty=allow_empty, shard_info=shard_info, record=record, vocab=len(tok))
    try:
        return _tokenize(itertools.chain(head, raw_iter), enc_name, check, **run)
    except _FastEncoderDiffers:
        if encoder == "tiktoken":
            raise ValueError(f"tiktoken fast path unavailable for {tokenizer}: tiktoken ids differ from the HF "
                             f"tokenizer's on the verification texts") from None
        return _tokenize(iter_raw(paths, max_doc_bytes), "hf", 0, **run)


def _tokenize(raws: Iterator[Raw], enc_name: str, check: int, *, paths: list, tokenizer: str, output_prefix: str,
              text_key: str, workers: int, dedup: bool, strict: bool, max_doc_bytes: int, bos: str,
              progress: bool | None, quiet: bool, allow_empty: bool, shard_info: dict | None,
              record: "shard_dedup.DigestRecord | None", vocab: int) -> PretrainResult:
    """pretrain's pass over the documents with one encoder; raises _FastEncoderDiffers, having written nothing, if a
    worker's check of the fast encoder fails."""
    from tqdm import tqdm

    stats = Stats(strict=strict, quiet=quiet)
    chunks = _with_checks(chunked(raws, CHUNK_ITEMS, CHUNK_BYTES, _raw_size), check)

    out_prefix = f"{output_prefix}_text_document"
    writer = SequenceWriter(out_prefix, token_dtype(vocab))
    seen: set[bytes] = set()
    bar = tqdm(unit="doc", disable=(not sys.stderr.isatty()) if progress is None else not progress, file=sys.stderr)
    try:
        results: Iterator = ordered_map(
            _encode_chunk, chunks, workers, _init_worker,
            (str(tokenizer), enc_name, text_key, max_doc_bytes, bos, dedup),
        )
        for n_items, bad, digests, flat, lengths, differs in results:
            if differs:
                raise _FastEncoderDiffers
            stats.read(n_items)
            if not bad and digests is None:  # a clean chunk: written as it came
                writer.add_many(flat, lengths)
                stats.written(len(lengths), int(lengths.sum()))
            else:
                _write_checked(writer, stats, seen, bad, digests, flat, lengths, record)
            bar.update(n_items)
            secs = max(stats.elapsed(), 1e-9)
            bar.set_postfix_str(f"{stats.docs_read / secs:,.0f} docs/s, {stats.tokens / secs:,.0f} tok/s", refresh=False)
        if stats.docs_written == 0 and not allow_empty:
            raise stats.empty_output(paths, "documents", hints=TEXT_KEY_HINTS)
        files = writer.close()
        result = stats.to_dict(
            output=out_prefix, inputs=input_fingerprint(paths), tokenizer=str(tokenizer), encoder=enc_name,
            workers=workers, dedup=dedup, token_dtype=np.dtype(token_dtype(vocab)).name, vocab_size=vocab,
            settings=run_settings(tokenizer, text_key, bos, max_doc_bytes, dedup),
        )
        if shard_info is not None:
            result["shard"] = shard_info
        if record is not None:
            files.append((out_prefix + ".tmp" + shard_dedup.SUFFIX, out_prefix + shard_dedup.SUFFIX))
            record.save(files[-1][0])
            shard_info.update(dedup_sources=record.sources, strict=strict)
        outputs.commit(out_prefix, files, f"{output_prefix}_stats.json", result)
    except BaseException:
        writer.abort()
        if record is not None:
            outputs.discard([(out_prefix + ".tmp" + shard_dedup.SUFFIX, "")])
        raise
    finally:
        bar.close()
    if not quiet:
        print(
            f"data_prep pretrain: {stats.docs_written:,}/{stats.docs_read:,} docs, {stats.tokens:,} tokens in "
            f"{result['seconds']:.1f}s ({result['docs_per_s']:,.0f} docs/s, {result['tokens_per_s']:,.0f} tok/s, "
            f"encoder {enc_name}) -> {out_prefix}.bin/.idx",
            file=sys.stderr,
        )
    return PretrainResult(out_prefix, result)
