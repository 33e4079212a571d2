"""The kinds of packed data (docs/formats.md): how input records become documents, and what one output holds.

Two small pieces, both typed:
- a `RecordProcessor` turns a chunk of raw input items into documents (tokens + loss mask). It is built in the
  parent from plain settings, runs `setup()` once in each worker process (loads the tokenizer), then one call per
  chunk. `CptDocuments`, `SftExamples` and `PreferencePairs` are the three today.
- a `DataKind` (the `kind` in PREFIX_meta.json) says which processors read which inputs, which examples are kept
  and which fields it adds to the meta. `KINDS` is the registry: `sft`, `preference`, `mix` (CPT + IT).
A new kind = one `DataKind` subclass here (plus a `RecordProcessor` if its records are new) and its `KINDS` entry.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple, Sequence

import numpy as np

from data_prep.chat import ChatRenderer, ExampleError, preference_messages, sft_messages
from data_prep.pretrain import TEXT_KEY_HINTS, VERIFY_DOCS, choose_encoder, extract_text
from data_prep.sources import DEFAULT_MAX_DOC_BYTES, Raw, parse_raw


# ---- what a processor returns -----------------------------------------------------------------------------
class ItemResult(NamedTuple):
    """What became of one input item: skipped for (reason, message), or kept as len(units) packing units of
    units[i] documents each (a unit stays in one pack: a document, a CPT piece, a preference pair)."""

    where: str  # source:line
    skip: tuple[str, str] | None = None
    units: tuple[int, ...] = ()


@dataclass
class ChunkDocuments:
    """One chunk's outcome: a result per input item, and the kept documents laid end to end."""

    items: list[ItemResult]
    tokens: np.ndarray  # int32, every document concatenated
    loss_mask: np.ndarray  # uint8, same length
    doc_lens: np.ndarray  # int64, one per document

    @classmethod
    def of(cls, items: list[ItemResult], docs: list[tuple[np.ndarray, np.ndarray]]) -> "ChunkDocuments":
        lens = np.fromiter((len(d[0]) for d in docs), dtype=np.int64, count=len(docs))
        if docs:
            flat = np.concatenate([d[0] for d in docs]).astype(np.int32)
            mflat = np.concatenate([d[1] for d in docs])
        else:
            flat, mflat = np.zeros(0, np.int32), np.zeros(0, np.uint8)
        return cls(items, flat, mflat, lens)


# ---- record processors ------------------------------------------------------------------------------------
@dataclass
class RecordProcessor:
    """Raw input items -> documents. Holds plain settings only until `setup()`, so it travels to workers as is."""

    tokenizer: str  # tokenizer directory
    seq_length: int
    max_bytes: int
    # Stats hints when a source yields nothing: {skip reason: what to check}.
    empty_hints: ClassVar[dict[str, str]] = {"too_long": "check --seq-length"}

    def check(self, tok: Any) -> None:
        """Parent side, before any input is read: fail once, clearly, on what no item could fix."""

    def prepare(self, tok: Any, raws: Iterator[Raw]) -> Iterator[Raw]:
        """Parent side, after `check`: settle what depends on the first items; returns the items, none lost."""
        return raws

    def setup(self) -> None:
        """Worker side, once per process."""

    def __call__(self, chunk: list[Raw]) -> ChunkDocuments:
        raise NotImplementedError


@dataclass
class CptDocuments(RecordProcessor):
    """A text document -> ids(text) + EOD, as `pretrain` writes it, cut into seq-length pieces; each piece is its own
    document (FinDAP packs long CPT text the same way) whose every token is a target but the first."""

    text_key: str = "text"
    encoder: str = "auto"  # the preference (--encoder)
    chosen_encoder: str | None = None  # what `prepare` verified on the first documents: same for any --workers
    empty_hints: ClassVar[dict[str, str]] = TEXT_KEY_HINTS

    def prepare(self, tok: Any, raws: Iterator[Raw]) -> Iterator[Raw]:
        head = list(itertools.islice(raws, VERIFY_DOCS))
        self.chosen_encoder = choose_encoder(tok, head, self.text_key, self.max_bytes, self.encoder)
        return itertools.chain(head, raws)

    def setup(self) -> None:
        from data_prep.encoder import build_encoder
        from data_prep.tokenizer import load_tokenizer, special_ids

        tok = load_tokenizer(self.tokenizer)
        self._enc = build_encoder(tok, prefer=self.chosen_encoder)
        self._suffix = [special_ids(tok)["eod"]]

    def __call__(self, chunk: list[Raw]) -> ChunkDocuments:
        L = self.seq_length
        items: list[ItemResult] = []
        texts, slots = [], []
        for raw in chunk:
            rec = parse_raw(raw, self.max_bytes)
            got = extract_text(rec, self.text_key, self.max_bytes)
            if isinstance(got, tuple):
                items.append(ItemResult(rec.where, got))
            else:
                slots.append(len(items))
                items.append(ItemResult(rec.where))
                texts.append(got)
        docs: list[tuple[np.ndarray, np.ndarray]] = []
        for slot, ids in zip(slots, self._enc.encode_batch(texts)):
            full = np.asarray(ids + self._suffix, dtype=np.int64)
            pieces = [full[i : i + L] for i in range(0, len(full), L)]
            for p in pieces:
                m = np.ones(len(p), dtype=np.uint8)
                m[0] = 0  # the first token of a document predicts nothing from inside it
                docs.append((p, m))
            items[slot] = items[slot]._replace(units=(1,) * len(pieces))
        return ChunkDocuments.of(items, docs)


@dataclass
class ChatProcessor(RecordProcessor):
    """A record -> one or more chat documents rendered with the chat template, the loss mask on assistant tokens;
    one packing unit per record. Subclasses say how a record renders."""

    chat_template: str | None = None  # template text (--chat-template), else the tokenizer's
    on_overflow: str = "drop"  # longer than seq_length: drop, or truncate (single-document records only)
    what: ClassVar[str] = "example"  # the record in messages
    can_truncate: ClassVar[bool] = True

    def check(self, tok: Any) -> None:
        ChatRenderer(tok, self.chat_template)  # no chat template: fails now, once, with a clear message

    def setup(self) -> None:
        from data_prep.tokenizer import load_tokenizer

        self._renderer = ChatRenderer(load_tokenizer(self.tokenizer), self.chat_template)

    def render(self, value: dict) -> list[tuple[str, list[tuple[int, int]]]]:
        """(text, assistant character spans) of each document of one record; ExampleError when unusable."""
        raise NotImplementedError

    def __call__(self, chunk: list[Raw]) -> ChunkDocuments:
        L = self.seq_length
        items: list[ItemResult] = []
        texts, spans, plan = [], [], []  # plan: (item slot, number of rendered texts)
        for raw in chunk:
            rec = parse_raw(raw, self.max_bytes)
            if rec.error is not None:
                items.append(ItemResult(rec.where, rec.error))
                continue
            try:
                rendered = self.render(rec.value)
            except ExampleError as e:
                items.append(ItemResult(rec.where, (e.args[0], e.args[1])))
                continue
            plan.append((len(items), len(rendered)))
            items.append(ItemResult(rec.where))
            for t, s in rendered:
                texts.append(t)
                spans.append(s)
        encoded = self._renderer.encode(texts, spans)
        docs: list[tuple[np.ndarray, np.ndarray]] = []
        k = 0
        for slot, n in plan:
            where = items[slot].where
            got = encoded[k : k + n]
            k += n
            total = sum(len(ids) for ids, _ in got)
            if total > L:
                if not self.can_truncate or self.on_overflow == "drop":
                    items[slot] = ItemResult(where, ("too_long", f"{self.what} of {total} tokens exceeds "
                                                                 f"--seq-length {L} (dropped)"))
                    continue
                ids, mask = got[0]
                got = [(ids[:L], mask[:L])]
                if not got[0][1].any():
                    items[slot] = ItemResult(where, ("too_long", f"{self.what} of {total} tokens has no target in "
                                                                 f"its first {L} (truncated to nothing)"))
                    continue
            if any(not m.any() for _, m in got):
                items[slot] = ItemResult(where, ("no_target_tokens",
                                                 "no assistant token to learn (expected a non-empty response)"))
                continue
            docs.extend(got)
            items[slot] = ItemResult(where, None, (n,))
        return ChunkDocuments.of(items, docs)


@dataclass
class SftExamples(ChatProcessor):
    """Instruction data (`messages`, `prompt`/`response`, `query`/`answer`, `instruction`/`output`) -> one document."""

    def render(self, value: dict) -> list[tuple[str, list[tuple[int, int]]]]:
        return [self._renderer.spans(sft_messages(value))]


@dataclass
class PreferencePairs(ChatProcessor):
    """`prompt`/`chosen`/`rejected` -> two documents, prompt + response each, the mask on the response only."""

    what: ClassVar[str] = "pair"
    can_truncate: ClassVar[bool] = False  # half a pair is no pair

    def render(self, value: dict) -> list[tuple[str, list[tuple[int, int]]]]:
        prompt, chosen, rejected = preference_messages(value)
        if chosen == rejected:
            raise ExampleError("identical_pair", "'chosen' equals 'rejected' (expected two different responses)")
        rnd = self._renderer
        return [rnd.spans(prompt + chosen, len(prompt)), rnd.spans(prompt + rejected, len(prompt))]


# ---- data kinds -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackOptions:
    """The settings of one packed-output run (the `python -m data_prep sft | preference | mix` flags)."""

    tokenizer: str
    output_prefix: str
    seq_length: int
    workers: int = 1
    strict: bool = False
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES
    seed: int = 1234
    chat_template: str | None = None  # a template file
    encoder: str = "auto"
    quiet: bool = False
    on_overflow: str = "drop"
    text_key: str = "text"
    cpt_ratio: float | None = None
    progress: bool | None = None
    allow_empty: bool = False


class Part(NamedTuple):
    """One input side of a kind: its processor, its inputs, and what its items are called in messages."""

    processor: RecordProcessor
    inputs: list[str]
    unit: str


class DataKind:
    """One packed-output kind. Its parts are read in order; every kept example of every part is packed together."""

    name: ClassVar[str]
    truncates: ClassVar[bool] = True  # --on-overflow applies (else the meta records "drop")

    def check_options(self, opts: PackOptions) -> None:
        """Raise ValueError for a setting this kind cannot use."""

    def parts(self, inputs: Sequence[list[str]], opts: PackOptions, template: str | None) -> list[Part]:
        raise NotImplementedError

    def keep(self, example_part: np.ndarray, opts: PackOptions) -> np.ndarray:
        """Boolean mask over examples (in input order; example_part[i] = the part example i came from)."""
        return np.ones(example_part.size, dtype=bool)

    def empty_need(self, opts: PackOptions) -> str:
        """The end of the message when one part yields nothing."""
        return "pass --allow-empty to write an empty dataset"

    def meta(self, parts: list[Part], example_part: np.ndarray, keep: np.ndarray, packs: dict,
             opts: PackOptions) -> dict:
        """Fields of PREFIX_meta.json only this kind has (appended after the common ones)."""
        return {}


def _chat(cls: type, opts: PackOptions, template: str | None, on_overflow: str = "drop") -> ChatProcessor:
    return cls(str(opts.tokenizer), opts.seq_length, opts.max_doc_bytes, chat_template=template,
               on_overflow=on_overflow)


class Sft(DataKind):
    name = "sft"

    def parts(self, inputs: Sequence[list[str]], opts: PackOptions, template: str | None) -> list[Part]:
        (paths,) = inputs
        return [Part(_chat(SftExamples, opts, template, opts.on_overflow), paths, "examples")]


class Preference(DataKind):
    name = "preference"
    truncates = False

    def parts(self, inputs: Sequence[list[str]], opts: PackOptions, template: str | None) -> list[Part]:
        (paths,) = inputs
        return [Part(_chat(PreferencePairs, opts, template), paths, "pairs")]

    def meta(self, parts: list[Part], example_part: np.ndarray, keep: np.ndarray, packs: dict,
             opts: PackOptions) -> dict:
        return {"num_pairs": packs["num_docs"] // 2}


class Mix(DataKind):
    """FinDAP's joint CPT+IT stream: part 0 CPT documents, part 1 instruction examples, at cpt_ratio by example
    count (the larger side is downsampled, seeded)."""

    name = "mix"

    def check_options(self, opts: PackOptions) -> None:
        if opts.cpt_ratio is not None and not (0.0 < opts.cpt_ratio < 1.0):
            raise ValueError(f"--cpt-ratio {opts.cpt_ratio} (expected a share strictly between 0 and 1)")

    def parts(self, inputs: Sequence[list[str]], opts: PackOptions, template: str | None) -> list[Part]:
        cpt_paths, it_paths = inputs
        cpt = CptDocuments(str(opts.tokenizer), opts.seq_length, opts.max_doc_bytes, text_key=opts.text_key,
                           encoder=opts.encoder)
        return [Part(cpt, cpt_paths, "CPT documents"),
                Part(_chat(SftExamples, opts, template, opts.on_overflow), it_paths, "instruction examples")]

    def keep(self, example_part: np.ndarray, opts: PackOptions) -> np.ndarray:
        """The larger side is cut to reach cpt_ratio by example count."""
        is_cpt = example_part == 0
        cpt_ratio = opts.cpt_ratio
        keep = np.ones(is_cpt.size, dtype=bool)
        if cpt_ratio is None:  # no ratio asked: keep everything
            return keep
        n_cpt, n_it = int(is_cpt.sum()), int((~is_cpt).sum())
        want_cpt = int(round(cpt_ratio / (1 - cpt_ratio) * n_it))
        rng = np.random.default_rng(opts.seed)
        if n_cpt > want_cpt:
            side, want = np.flatnonzero(is_cpt), want_cpt
        else:
            side, want = np.flatnonzero(~is_cpt), int(round((1 - cpt_ratio) / cpt_ratio * n_cpt))
        if want < side.size:
            drop = np.setdiff1d(side, np.sort(rng.choice(side, size=want, replace=False)))
            keep[drop] = False
        return keep

    def empty_need(self, opts: PackOptions) -> str:
        # Nothing from one side is an error: downsampling to --cpt-ratio would then keep nothing of the other.
        return f"mix needs both sides for --cpt-ratio {opts.cpt_ratio}; pass --allow-empty to write no packs"

    def meta(self, parts: list[Part], example_part: np.ndarray, keep: np.ndarray, packs: dict,
             opts: PackOptions) -> dict:
        is_cpt = example_part == 0
        return {"cpt_ratio": opts.cpt_ratio, "num_cpt_examples": int((keep & is_cpt).sum()),
                "num_it_examples": int((keep & ~is_cpt).sum()), "cpt_encoder": parts[0].processor.chosen_encoder}


KINDS: dict[str, DataKind] = {k.name: k for k in (Sft(), Preference(), Mix())}
