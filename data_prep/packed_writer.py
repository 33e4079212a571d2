"""Writer of the packed format (`data_prep sft | preference | mix`): examples -> tokens + loss mask ->
best-fit-decreasing packs (docs/formats.md). What each kind reads and keeps is in `data_prep.kinds`.

Three stages, each streaming or memory-mapped:
1. workers parse, render and tokenize chunks (the kind's record processors); the parent writes every document to
   a temporary indexed dataset in input order and keeps only per-document lengths in memory;
2. the kind chooses the examples to keep (`mix` downsamples the larger side by example count, seeded); units (a
   document, or a preference pair) are packed by best-fit-decreasing on their lengths;
3. packs are assembled from the memory-mapped temporary files in a seeded order and written as
   PREFIX_tokens / PREFIX_loss_mask / PREFIX_doc_lens (+ PREFIX_meta.json, PREFIX_stats.json), which appear
   as one set (`data_prep.outputs`); PREFIX_rewards too when any input pair carried judge rewards.
An input that yields nothing raises `EmptyOutputError` unless allow_empty (then the packs are a valid, empty set).
Examples longer than --seq-length are dropped and counted as `too_long` (sft/mix can `truncate` instead: the
first seq-length tokens are kept if they still contain a target). CPT documents in `mix` are split into
seq-length pieces, each its own document (FinDAP packs long CPT text the same way); a CPT document is
ids(text) + EOD, as `pretrain` writes it.
"""
from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from data_prep import outputs
from data_prep.kinds import KINDS, DataKind, PackOptions, Part
from data_prep.processors import ChunkDocuments
from data_prep.packing import best_fit_decreasing
from data_prep.parallel import cap_workers, chunked, map_chunks
from data_prep.pretrain import CHUNK_BYTES, _raw_size
from data_prep.sources import DEFAULT_MAX_DOC_BYTES, check_inputs, input_fingerprint, iter_raw
from data_prep.stats import Stats
from data_prep.writers import SequenceWriter, token_dtype

FORMAT_VERSION = 1
PACK_CHUNK_ITEMS = 512


@dataclass
class PackedResult:
    prefix: str
    meta: dict
    stats: dict


class DocumentStore:
    """Temporary per-document store (memory-mapped later) plus the unit and example tables kept in memory."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tok = SequenceWriter(prefix + ".stage_tokens", np.int32)
        self.mask = SequenceWriter(prefix + ".stage_mask", np.uint8)
        self.doc_len = array("q")
        self.unit_first = array("q")  # first document of each unit
        self.unit_ndocs = array("q")
        self.unit_len = array("q")
        self.unit_example = array("q")  # example index of each unit (a kind keeps or drops whole examples)
        self.example_tokens = array("q")
        self.example_part = array("b")  # which part of the kind each example came from
        self.doc_reward = array("d")  # the judge's reward of each document (0 where the layout carries none)
        self.rewarded = 0  # examples whose record gave its rewards: any -> the packs get a rewards file

    def add(self, results: Iterator[ChunkDocuments], stats: Stats, part: int, bar: Any) -> None:
        for chunk in results:
            self.tok.add_many(chunk.tokens, chunk.doc_lens)
            self.mask.add_many(chunk.loss_mask, chunk.doc_lens)
            d = len(self.doc_len)
            self.doc_len.extend(chunk.doc_lens.tolist())
            rewards = chunk.doc_rewards if chunk.doc_rewards is not None else np.zeros(chunk.doc_lens.size)
            self.doc_reward.extend(rewards.tolist())
            self.rewarded += chunk.rewarded
            for item in chunk.items:
                stats.read()
                if item.skip is not None:
                    stats.skip(item.where, *item.skip)
                    continue
                ex = len(self.example_tokens)
                ntok = 0
                for nd in item.units:
                    n = int(sum(self.doc_len[d : d + nd]))
                    self.unit_first.append(d)
                    self.unit_ndocs.append(nd)
                    self.unit_len.append(n)
                    self.unit_example.append(ex)
                    d += nd
                    ntok += n
                self.example_tokens.append(ntok)
                self.example_part.append(part)
            assert d == len(self.doc_len)
            bar.update(len(chunk.items))

    def finalize(self) -> None:
        self.tok.finalize()
        self.mask.finalize()

    def abort(self) -> None:
        self.tok.abort()
        self.mask.abort()

    def cleanup(self) -> None:
        for p in (self.tok.prefix, self.mask.prefix):
            for ext in (".bin", ".idx"):
                try:
                    os.remove(p + ext)
                except FileNotFoundError:
                    pass


def _write_packs(st: DocumentStore, units: np.ndarray, prefix: str, seq_length: int, dtype: type,
                 seed: int, rewards: bool = False) -> tuple[dict, list[tuple[str, str]]]:
    """The packs under temporary names: -> (counts, (temporary, final) paths for `outputs.commit`). rewards: also
    PREFIX_rewards, each document's judge reward (float64, one sequence per pack, aligned with doc_lens)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    unit_len = np.frombuffer(st.unit_len, dtype=np.int64)[units]
    bins = best_fit_decreasing(unit_len, seq_length)
    order = np.random.default_rng(seed + 1).permutation(len(bins))  # no longest-first curriculum in the file
    unit_first = np.frombuffer(st.unit_first, dtype=np.int64)
    unit_ndocs = np.frombuffer(st.unit_ndocs, dtype=np.int64)
    src_tok = IndexedDataset(st.tok.prefix, mmap=True)
    src_mask = IndexedDataset(st.mask.prefix, mmap=True)
    w_tok = SequenceWriter(prefix + "_tokens", dtype)
    w_mask = SequenceWriter(prefix + "_loss_mask", np.uint8)
    w_lens = SequenceWriter(prefix + "_doc_lens", np.int32)
    writers = [w_tok, w_mask, w_lens]
    doc_reward = np.frombuffer(st.doc_reward, dtype=np.float64)
    if rewards:
        writers.append(SequenceWriter(prefix + "_rewards", np.float64))
    n_docs = n_tok = n_tgt = 0
    try:
        for b in order.tolist():
            toks, masks, lens, docs = [], [], [], []
            for j in bins[b]:
                u = int(units[j])
                for d in range(int(unit_first[u]), int(unit_first[u] + unit_ndocs[u])):
                    t, m = src_tok[d], src_mask[d]
                    toks.append(t)
                    masks.append(m)
                    lens.append(t.size)
                    docs.append(d)
            t = np.concatenate(toks)
            m = np.concatenate(masks)
            assert t.size <= seq_length
            w_tok.add(t)
            w_mask.add(m)
            w_lens.add(np.asarray(lens, dtype=np.int32))
            if rewards:
                writers[3].add(doc_reward[docs])
            n_docs += len(lens)
            n_tok += int(t.size)
            n_tgt += int(m.sum())
        files = [f for w in writers for f in w.close()]
    except BaseException:
        for w in writers:
            w.abort()
        raise
    del src_tok, src_mask
    return {
        "num_packs": len(bins), "num_docs": n_docs, "num_tokens": n_tok, "num_target_tokens": n_tgt,
        "fill": round(n_tok / (len(bins) * seq_length), 6) if bins else 1.0,
    }, files


def write_packed(kind: DataKind, inputs: Sequence[Iterable[str]], opts: PackOptions) -> PackedResult:
    """One packed output of `kind` from its inputs (one list of paths per part of the kind)."""
    from tqdm import tqdm

    from data_prep.tokenizer import load_tokenizer, special_ids

    if opts.seq_length < 2:
        raise ValueError(f"--seq-length {opts.seq_length} (expected >= 2)")
    kind.check_options(opts)
    workers = cap_workers(opts.workers)
    inputs = [check_inputs(list(p)) for p in inputs]
    output_prefix, seq_length, seed = opts.output_prefix, opts.seq_length, opts.seed
    outputs.check_output_prefix(output_prefix)
    tok = load_tokenizer(opts.tokenizer)
    sp = special_ids(tok)
    template = None
    if opts.chat_template:
        if not os.path.isfile(opts.chat_template):
            raise FileNotFoundError(f"{opts.chat_template}: no such chat template file (expected a Jinja template)")
        template = open(opts.chat_template).read()
    parts: list[Part] = kind.parts(inputs, opts, template)
    for part in parts:
        part.processor.check(tok)
    stats = Stats(strict=opts.strict, quiet=opts.quiet)
    raws = [part.processor.prepare(tok, iter_raw(part.inputs, opts.max_doc_bytes)) for part in parts]
    st = DocumentStore(output_prefix)
    progress = opts.progress
    bar = tqdm(unit="ex", disable=(not sys.stderr.isatty()) if progress is None else not progress, file=sys.stderr)
    try:
        for i, (part, part_raws) in enumerate(zip(parts, raws)):
            chunks = chunked(part_raws, PACK_CHUNK_ITEMS, CHUNK_BYTES, _raw_size)
            before, n_before = stats.snapshot(), len(st.example_tokens)
            st.add(map_chunks(part.processor, chunks, workers), stats, i, bar)
            if len(st.example_tokens) == n_before and not opts.allow_empty:
                raise stats.empty_output(part.inputs, part.unit, since=before, hints=part.processor.empty_hints,
                                         need=kind.empty_need(opts))
        st.finalize()
    except BaseException:
        st.abort()
        bar.close()
        raise
    bar.close()
    example_part = np.frombuffer(st.example_part, dtype=np.int8)
    try:
        keep = kind.keep(example_part, opts)
        ex_tokens = np.frombuffer(st.example_tokens, dtype=np.int64)
        stats.written(int(keep.sum()), int(ex_tokens[keep].sum()))
        if (~keep).any():
            stats.skipped["downsampled"] += int((~keep).sum())
        unit_ex = np.frombuffer(st.unit_example, dtype=np.int64)
        units = np.flatnonzero(keep[unit_ex]) if keep.size else np.zeros(0, dtype=np.int64)
        packs, files = _write_packs(st, units, output_prefix, seq_length, token_dtype(sp["vocab_size"]), seed,
                                    rewards=st.rewarded > 0)
    finally:
        st.cleanup()
    base = os.path.basename(output_prefix)
    meta = {
        "format": "megafin-packed",
        "version": FORMAT_VERSION,
        "kind": kind.name,
        "seq_length": seq_length,
        "pad_id": sp["pad"],
        "eod_id": sp["eod"],
        "bos_id": sp["bos"],
        "vocab_size": sp["vocab_size"],
        "tokenizer": str(opts.tokenizer),
        **packs,
        "token_dtype": np.dtype(token_dtype(sp["vocab_size"])).name,
        "files": {"tokens": f"{base}_tokens", "loss_mask": f"{base}_loss_mask", "doc_lens": f"{base}_doc_lens"},
        "seed": seed,
        "on_overflow": opts.on_overflow if kind.truncates else "drop",
        "chat_template": "override" if template else "tokenizer",
        **kind.meta(parts, example_part, keep, packs, opts),
    }
    if st.rewarded:  # only then: data without judge rewards is written exactly as before they existed
        meta["files"]["rewards"] = f"{base}_rewards"
        meta["num_rewarded_examples"] = st.rewarded
    all_paths = [p for ps in inputs for p in ps]
    try:
        stats_d = stats.to_dict(output=output_prefix, inputs=input_fingerprint(all_paths), tokenizer=str(opts.tokenizer),
                                workers=workers, kind=kind.name, num_packs=packs["num_packs"], fill=packs["fill"])
        outputs.commit(output_prefix, files, f"{output_prefix}_meta.json", meta,
                       side_files=[(f"{output_prefix}_stats.json", stats_d)])
    except BaseException:
        outputs.discard(files)
        raise
    if not st.rewarded:  # an earlier run's rewards at this prefix belong to other pairs (its meta no longer lists them)
        outputs.discard([(f"{output_prefix}_rewards{ext}", "") for ext in (".bin", ".idx")])
    if not opts.quiet:
        print(
            f"data_prep {kind.name}: {stats.docs_written:,}/{stats.docs_read:,} examples -> {packs['num_packs']:,} "
            f"packs of <= {seq_length} ({packs['num_docs']:,} docs, {packs['num_tokens']:,} tokens, fill "
            f"{packs['fill']:.2%}) in {stats_d['seconds']:.1f}s -> {output_prefix}_{{tokens,loss_mask,doc_lens}}",
            file=sys.stderr,
        )
    return PackedResult(output_prefix, meta, stats_d)


def _paths(x: str | Iterable[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def sft(
    inputs: str | Iterable[str],
    tokenizer: str,
    output_prefix: str,
    seq_length: int,
    workers: int = 1,
    strict: bool = False,
    on_overflow: str = "drop",
    seed: int = 1234,
    chat_template: str | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    encoder: str = "auto",
    quiet: bool = False,
    allow_empty: bool = False,
) -> PackedResult:
    """Instruction data (`messages`, `prompt`/`response`, `query`/`answer`, `instruction`/`output`) -> packs
    whose loss mask is 1 on assistant tokens only."""
    opts = PackOptions(tokenizer=tokenizer, output_prefix=output_prefix, seq_length=seq_length, workers=workers,
                       strict=strict, max_doc_bytes=max_doc_bytes, seed=seed, chat_template=chat_template,
                       encoder=encoder, quiet=quiet, on_overflow=on_overflow, allow_empty=allow_empty)
    return write_packed(KINDS["sft"], [_paths(inputs)], opts)


def preference(
    inputs: str | Iterable[str],
    tokenizer: str,
    output_prefix: str,
    seq_length: int,
    workers: int = 1,
    strict: bool = False,
    seed: int = 1234,
    chat_template: str | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    encoder: str = "auto",
    quiet: bool = False,
    allow_empty: bool = False,
) -> PackedResult:
    """`prompt`/`chosen`/`rejected` -> packs of whole pairs: docs 2k (chosen) and 2k+1 (rejected), each
    prompt + response with the mask on the response only."""
    opts = PackOptions(tokenizer=tokenizer, output_prefix=output_prefix, seq_length=seq_length, workers=workers,
                       strict=strict, max_doc_bytes=max_doc_bytes, seed=seed, chat_template=chat_template,
                       encoder=encoder, quiet=quiet, allow_empty=allow_empty)
    return write_packed(KINDS["preference"], [_paths(inputs)], opts)


def mix(
    cpt_inputs: str | Iterable[str],
    it_inputs: str | Iterable[str],
    tokenizer: str,
    output_prefix: str,
    seq_length: int,
    cpt_ratio: float = 0.5,
    text_key: str = "text",
    workers: int = 1,
    strict: bool = False,
    seed: int = 1234,
    chat_template: str | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    encoder: str = "auto",
    on_overflow: str = "drop",
    quiet: bool = False,
    allow_empty: bool = False,
) -> PackedResult:
    """FinDAP's joint CPT+IT stream: CPT documents (every token a target but the first) and instruction
    examples (assistant tokens only) at `cpt_ratio` by example count, packed together."""
    opts = PackOptions(tokenizer=tokenizer, output_prefix=output_prefix, seq_length=seq_length, workers=workers,
                       strict=strict, max_doc_bytes=max_doc_bytes, seed=seed, chat_template=chat_template,
                       encoder=encoder, quiet=quiet, on_overflow=on_overflow, text_key=text_key, cpt_ratio=cpt_ratio,
                       allow_empty=allow_empty)
    return write_packed(KINDS["mix"], [_paths(cpt_inputs), _paths(it_inputs)], opts)
