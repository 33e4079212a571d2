"""`data_prep sft | preference | mix`: examples -> tokens + loss mask -> best-fit-decreasing packs (docs/formats.md).

Three stages, each streaming or memory-mapped:
1. workers parse, render and tokenize chunks; the parent writes every document to a temporary indexed dataset
   in input order and keeps only per-document lengths in memory;
2. `mix` downsamples the larger side by example count (seeded); units (a document, or a preference pair) are
   packed by best-fit-decreasing on their lengths;
3. packs are assembled from the memory-mapped temporary files in a seeded order and written as
   PREFIX_tokens / PREFIX_loss_mask / PREFIX_doc_lens (+ PREFIX_meta.json, PREFIX_stats.json), which appear
   as one set (`data_prep.outputs`).
An input that yields nothing raises `EmptyOutputError` unless allow_empty (then the packs are a valid, empty set).
Examples longer than --seq-length are dropped and counted as `too_long` (sft/mix can `truncate` instead: the
first seq-length tokens are kept if they still contain a target). CPT documents in `mix` are split into
seq-length pieces, each its own document (FinDAP packs long CPT text the same way); a CPT document is
ids(text) + EOD, as `pretrain` writes it.
"""
from __future__ import annotations

import itertools
import os
import sys
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from data_prep import outputs
from data_prep.chat import ChatRenderer, ExampleError, preference_messages, sft_messages
from data_prep.packing import best_fit_decreasing
from data_prep.parallel import cap_workers, chunked, ordered_map
from data_prep.pretrain import CHUNK_BYTES, TEXT_KEY_HINTS, VERIFY_DOCS, _raw_size, choose_encoder, extract_text
from data_prep.readers import DEFAULT_MAX_DOC_BYTES, Raw, check_inputs, input_fingerprint, iter_raw, parse_raw
from data_prep.stats import Stats
from data_prep.writers import SequenceWriter, import_builder, token_dtype

FORMAT_VERSION = 1
PACK_CHUNK_ITEMS = 512
# What each stage-1 source yields, for messages: (unit, the words for a source that gave none).
UNITS = {"sft": "examples", "pref": "pairs", "cpt": "CPT documents"}

# ---- worker side ------------------------------------------------------------------------------------------
_W: dict[str, Any] = {}


def _init_worker(cfg: dict) -> None:
    from data_prep.encoder import build_encoder
    from data_prep.tokenizer import load_tokenizer, special_ids

    tok = load_tokenizer(cfg["tokenizer"])
    sp = special_ids(tok)
    cpt_prefix: list[int] = []  # CPT documents as `pretrain` writes them: ids(text) + EOD
    cpt_suffix = [sp["eod"]]
    _W.clear()
    _W.update(
        cfg,
        renderer=ChatRenderer(tok, cfg["chat_template"]) if cfg["need_chat"] else None,
        enc=build_encoder(tok, prefer=cfg["encoder"]) if cfg["encoder"] else None,
        cpt_prefix=cpt_prefix,
        cpt_suffix=cpt_suffix,
    )


def _fail(where: str, e: ExampleError) -> tuple:
    return (where, e.args[0], e.args[1], ())


def _stage1(task: tuple[str, list[Raw]]) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk -> (per item (where, reason, msg, unit_sizes)), flat ids, flat mask, per-document lengths."""
    kind, chunk = task
    L, max_bytes = _W["seq_length"], _W["max_bytes"]
    statuses: list = []
    docs: list[tuple[np.ndarray, np.ndarray]] = []
    if kind == "cpt":
        texts, slots = [], []
        for raw in chunk:
            rec = parse_raw(raw, max_bytes)
            got = extract_text(rec, _W["text_key"], max_bytes)
            if isinstance(got, tuple):
                statuses.append((rec.where, got[0], got[1], ()))
            else:
                slots.append(len(statuses))
                statuses.append(rec.where)
                texts.append(got)
        pre, suf = _W["cpt_prefix"], _W["cpt_suffix"]
        for slot, ids in zip(slots, _W["enc"].encode_batch(texts)):
            full = np.asarray(pre + ids + suf, dtype=np.int64)
            pieces = [full[i : i + L] for i in range(0, len(full), L)]
            for p in pieces:
                m = np.ones(len(p), dtype=np.uint8)
                m[0] = 0  # the first token of a document predicts nothing from inside it
                docs.append((p, m))
            statuses[slot] = (statuses[slot], None, None, (1,) * len(pieces))
    else:
        rnd = _W["renderer"]
        texts, spans, plan = [], [], []  # plan: (status slot, number of rendered texts)
        for raw in chunk:
            rec = parse_raw(raw, max_bytes)
            if rec.error is not None:
                statuses.append((rec.where, rec.error[0], rec.error[1], ()))
                continue
            try:
                if kind == "pref":
                    prompt, chosen, rejected = preference_messages(rec.value)
                    if chosen == rejected:
                        raise ExampleError("identical_pair", "'chosen' equals 'rejected' (expected two different responses)")
                    rendered = [rnd.spans(prompt + chosen, len(prompt)), rnd.spans(prompt + rejected, len(prompt))]
                else:
                    rendered = [rnd.spans(sft_messages(rec.value))]
            except ExampleError as e:
                statuses.append(_fail(rec.where, e))
                continue
            plan.append((len(statuses), len(rendered)))
            statuses.append(rec.where)
            for t, s in rendered:
                texts.append(t)
                spans.append(s)
        encoded = rnd.encode(texts, spans)
        k = 0
        for slot, n in plan:
            where = statuses[slot]
            got = encoded[k : k + n]
            k += n
            total = sum(len(ids) for ids, _ in got)
            if total > L:
                if kind == "pref" or _W["on_overflow"] == "drop":
                    what = "pair" if kind == "pref" else "example"
                    statuses[slot] = (where, "too_long", f"{what} of {total} tokens exceeds --seq-length {L} (dropped)", ())
                    continue
                ids, mask = got[0]
                got = [(ids[:L], mask[:L])]
                if not got[0][1].any():
                    statuses[slot] = (where, "too_long", f"example of {total} tokens has no target in its first {L} (truncated to nothing)", ())
                    continue
            if any(not m.any() for _, m in got):
                statuses[slot] = (where, "no_target_tokens", "no assistant token to learn (expected a non-empty response)", ())
                continue
            docs.extend(got)
            statuses[slot] = (where, None, None, (n,))
    lens = np.fromiter((len(d[0]) for d in docs), dtype=np.int64, count=len(docs))
    if docs:
        flat = np.concatenate([d[0] for d in docs]).astype(np.int32)
        mflat = np.concatenate([d[1] for d in docs])
    else:
        flat, mflat = np.zeros(0, np.int32), np.zeros(0, np.uint8)
    return statuses, flat, mflat, lens


# ---- parent side ------------------------------------------------------------------------------------------
@dataclass
class PackedResult:
    prefix: str
    meta: dict
    stats: dict


class _Stage1:
    """Temporary per-document store (memory-mapped later) plus the unit table kept in memory."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tok = SequenceWriter(prefix + ".stage_tokens", np.int32)
        self.mask = SequenceWriter(prefix + ".stage_mask", np.uint8)
        self.doc_len = array("q")
        self.unit_first = array("q")  # first document of each unit
        self.unit_ndocs = array("q")
        self.unit_len = array("q")
        self.unit_example = array("q")  # example index of each unit (mix downsamples whole examples)
        self.example_tokens = array("q")
        self.example_is_cpt = array("b")

    def add(self, results: Iterator, stats: Stats, is_cpt: bool, bar: Any) -> None:
        for statuses, flat, mflat, lens in results:
            self.tok.add_many(flat, lens)
            self.mask.add_many(mflat, lens)
            d = len(self.doc_len)
            self.doc_len.extend(lens.tolist())
            for where, reason, msg, units in statuses:
                stats.read()
                if reason is not None:
                    stats.skip(where, reason, msg)
                    continue
                ex = len(self.example_tokens)
                ntok = 0
                for nd in units:
                    n = int(sum(self.doc_len[d : d + nd]))
                    self.unit_first.append(d)
                    self.unit_ndocs.append(nd)
                    self.unit_len.append(n)
                    self.unit_example.append(ex)
                    d += nd
                    ntok += n
                self.example_tokens.append(ntok)
                self.example_is_cpt.append(1 if is_cpt else 0)
            assert d == len(self.doc_len)
            bar.update(len(statuses))

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


def _downsample(st: _Stage1, cpt_ratio: float, seed: int) -> np.ndarray:
    """Boolean keep-mask over examples: the larger side is cut to reach cpt_ratio by example count."""
    is_cpt = np.frombuffer(st.example_is_cpt, dtype=np.int8).astype(bool)
    keep = np.ones(is_cpt.size, dtype=bool)
    n_cpt, n_it = int(is_cpt.sum()), int((~is_cpt).sum())  # cpt_ratio in (0, 1): checked by _run
    want_cpt = int(round(cpt_ratio / (1 - cpt_ratio) * n_it))
    rng = np.random.default_rng(seed)
    if n_cpt > want_cpt:
        side, want = np.flatnonzero(is_cpt), want_cpt
    else:
        side, want = np.flatnonzero(~is_cpt), int(round((1 - cpt_ratio) / cpt_ratio * n_cpt))
    if want < side.size:
        drop = np.setdiff1d(side, np.sort(rng.choice(side, size=want, replace=False)))
        keep[drop] = False
    return keep


def _write_packs(st: _Stage1, units: np.ndarray, prefix: str, seq_length: int, dtype: type,
                 seed: int) -> tuple[dict, list[tuple[str, str]]]:
    """The packs under temporary names: -> (counts, (temporary, final) paths for `outputs.commit`)."""
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
    n_docs = n_tok = n_tgt = 0
    try:
        for b in order.tolist():
            toks, masks, lens = [], [], []
            for j in bins[b]:
                u = int(units[j])
                for d in range(int(unit_first[u]), int(unit_first[u] + unit_ndocs[u])):
                    t, m = src_tok[d], src_mask[d]
                    toks.append(t)
                    masks.append(m)
                    lens.append(t.size)
            t = np.concatenate(toks)
            m = np.concatenate(masks)
            assert t.size <= seq_length
            w_tok.add(t)
            w_mask.add(m)
            w_lens.add(np.asarray(lens, dtype=np.int32))
            n_docs += len(lens)
            n_tok += int(t.size)
            n_tgt += int(m.sum())
        files = [f for w in (w_tok, w_mask, w_lens) for f in w.close()]
    except BaseException:
        for w in (w_tok, w_mask, w_lens):
            w.abort()
        raise
    del src_tok, src_mask
    return {
        "num_packs": len(bins), "num_docs": n_docs, "num_tokens": n_tok, "num_target_tokens": n_tgt,
        "fill": round(n_tok / (len(bins) * seq_length), 6) if bins else 1.0,
    }, files


def _run(
    kind: str,
    sources: list[tuple[str, list[str]]],  # (stage-1 kind, inputs) in output order
    tokenizer: str,
    output_prefix: str,
    seq_length: int,
    workers: int,
    strict: bool,
    max_doc_bytes: int,
    seed: int,
    chat_template: str | None,
    encoder: str,
    quiet: bool,
    on_overflow: str = "drop",
    text_key: str = "text",
    cpt_ratio: float | None = None,
    progress: bool | None = None,
    allow_empty: bool = False,
) -> PackedResult:
    from tqdm import tqdm

    from data_prep.tokenizer import load_tokenizer, special_ids

    if seq_length < 2:
        raise ValueError(f"--seq-length {seq_length} (expected >= 2)")
    if cpt_ratio is not None and not (0.0 < cpt_ratio < 1.0):
        raise ValueError(f"--cpt-ratio {cpt_ratio} (expected a share strictly between 0 and 1)")
    workers = cap_workers(workers)
    sources = [(k, check_inputs(list(p))) for k, p in sources]
    outputs.check_output_prefix(output_prefix)
    tok = load_tokenizer(tokenizer)
    sp = special_ids(tok)
    template = None
    if chat_template:
        if not os.path.isfile(chat_template):
            raise FileNotFoundError(f"{chat_template}: no such chat template file (expected a Jinja template)")
        template = open(chat_template).read()
    ChatRenderer(tok, template)  # fails now, once, with a clear message if there is no chat template
    import_builder()
    stats = Stats(strict=strict, quiet=quiet)
    enc_name = None
    cpt_iters = {}
    for k, paths in sources:
        if k == "cpt":
            raws = iter_raw(paths, max_doc_bytes)
            head = list(itertools.islice(raws, VERIFY_DOCS))
            enc_name = choose_encoder(tok, head, text_key, max_doc_bytes, encoder)
            cpt_iters[id(paths)] = itertools.chain(head, raws)
    cfg = dict(tokenizer=str(tokenizer), chat_template=template, need_chat=True, encoder=enc_name,
               text_key=text_key, max_bytes=max_doc_bytes, seq_length=seq_length, on_overflow=on_overflow)
    st = _Stage1(output_prefix)
    bar = tqdm(unit="ex", disable=(not sys.stderr.isatty()) if progress is None else not progress, file=sys.stderr)
    try:
        for k, paths in sources:
            raws = cpt_iters.get(id(paths)) or iter_raw(paths, max_doc_bytes)
            tasks = ((k, c) for c in chunked(raws, PACK_CHUNK_ITEMS, CHUNK_BYTES, _raw_size))
            before, n_before = stats.snapshot(), len(st.example_tokens)
            st.add(ordered_map(_stage1, tasks, workers, _init_worker, (cfg,)), stats, k == "cpt", bar)
            # Nothing from one source is an error even in `mix`: downsampling to --cpt-ratio would then keep
            # nothing of the other side either.
            if len(st.example_tokens) == n_before and not allow_empty:
                need = "pass --allow-empty to write an empty dataset" if len(sources) == 1 else \
                    f"mix needs both sides for --cpt-ratio {cpt_ratio}; pass --allow-empty to write no packs"
                unit = "instruction examples" if k == "sft" and len(sources) > 1 else UNITS[k]
                hints = TEXT_KEY_HINTS if k == "cpt" else {"too_long": "check --seq-length"}
                raise stats.empty_output(paths, unit, since=before, hints=hints, need=need)
        st.finalize()
    except BaseException:
        st.abort()
        bar.close()
        raise
    bar.close()
    try:
        n_ex = len(st.example_tokens)
        keep = np.ones(n_ex, dtype=bool) if cpt_ratio is None else _downsample(st, cpt_ratio, seed)
        ex_tokens = np.frombuffer(st.example_tokens, dtype=np.int64)
        stats.written(int(keep.sum()), int(ex_tokens[keep].sum()))
        if (~keep).any():
            stats.skipped["downsampled"] += int((~keep).sum())
        unit_ex = np.frombuffer(st.unit_example, dtype=np.int64)
        units = np.flatnonzero(keep[unit_ex]) if n_ex else np.zeros(0, dtype=np.int64)
        packs, files = _write_packs(st, units, output_prefix, seq_length, token_dtype(sp["vocab_size"]), seed)
    finally:
        st.cleanup()
    is_cpt = np.frombuffer(st.example_is_cpt, dtype=np.int8).astype(bool)
    meta = {
        "format": "megafin-packed",
        "version": FORMAT_VERSION,
        "kind": kind,
        "seq_length": seq_length,
        "pad_id": sp["pad"],
        "eod_id": sp["eod"],
        "bos_id": sp["bos"],
        "vocab_size": sp["vocab_size"],
        "tokenizer": str(tokenizer),
        **packs,
        "token_dtype": np.dtype(token_dtype(sp["vocab_size"])).name,
        "files": {"tokens": f"{os.path.basename(output_prefix)}_tokens",
                  "loss_mask": f"{os.path.basename(output_prefix)}_loss_mask",
                  "doc_lens": f"{os.path.basename(output_prefix)}_doc_lens"},
        "seed": seed,
        "on_overflow": "drop" if kind == "preference" else on_overflow,
        "chat_template": "override" if template else "tokenizer",
    }
    if kind == "preference":
        meta["num_pairs"] = packs["num_docs"] // 2
    if kind == "mix":
        meta.update(cpt_ratio=cpt_ratio, num_cpt_examples=int((keep & is_cpt).sum()),
                    num_it_examples=int((keep & ~is_cpt).sum()), cpt_encoder=enc_name)
    all_paths = [p for _, ps in sources for p in ps]
    try:
        stats_d = stats.to_dict(output=output_prefix, inputs=input_fingerprint(all_paths), tokenizer=str(tokenizer),
                                workers=workers, kind=kind, num_packs=packs["num_packs"], fill=packs["fill"])
        outputs.commit(output_prefix, files, f"{output_prefix}_meta.json", meta,
                       side_files=[(f"{output_prefix}_stats.json", stats_d)])
    except BaseException:
        outputs.discard(files)
        raise
    if not quiet:
        print(
            f"data_prep {kind}: {stats.docs_written:,}/{stats.docs_read:,} examples -> {packs['num_packs']:,} packs "
            f"of <= {seq_length} ({packs['num_docs']:,} docs, {packs['num_tokens']:,} tokens, fill "
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
    return _run("sft", [("sft", _paths(inputs))], tokenizer, output_prefix, seq_length, workers, strict,
                max_doc_bytes, seed, chat_template, encoder, quiet, on_overflow=on_overflow, allow_empty=allow_empty)


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
    return _run("preference", [("pref", _paths(inputs))], tokenizer, output_prefix, seq_length, workers, strict,
                max_doc_bytes, seed, chat_template, encoder, quiet, allow_empty=allow_empty)


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
    return _run("mix", [("cpt", _paths(cpt_inputs)), ("sft", _paths(it_inputs))], tokenizer, output_prefix,
                seq_length, workers, strict, max_doc_bytes, seed, chat_template, encoder, quiet,
                on_overflow=on_overflow, text_key=text_key, cpt_ratio=cpt_ratio, allow_empty=allow_empty)
