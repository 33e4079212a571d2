"""Record processors: how a chunk of raw input items becomes documents (tokens + loss mask), typed.

A `RecordProcessor` is built in the parent from plain settings, runs `setup()` once in each worker process (loads
the tokenizer), then one call per chunk, returning `ChunkDocuments`. `CptDocuments`, `SftExamples` and
`PreferencePairs` are the three today; a new record layout is one more subclass here, used by a kind in kinds.py.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple

import numpy as np

from data_prep.chat import ChatRenderer, ExampleError, preference_messages, sft_messages
from data_prep.pretrain import TEXT_KEY_HINTS, VERIFY_DOCS, choose_encoder, extract_text
from data_prep.sources import Raw, parse_raw


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
    doc_rewards: np.ndarray | None = None  # float64, one per document: the judge's reward (None: the layout has none)
    rewarded: int = 0  # kept items whose record gave its rewards (the others carry their layout's defaults)

    @classmethod
    def of(cls, items: list[ItemResult], docs: list[tuple[np.ndarray, np.ndarray]],
           rewards: list[float] | None = None, rewarded: int = 0) -> "ChunkDocuments":
        lens = np.fromiter((len(d[0]) for d in docs), dtype=np.int64, count=len(docs))
        if docs:
            flat = np.concatenate([d[0] for d in docs]).astype(np.int32)
            mflat = np.concatenate([d[1] for d in docs])
        else:
            flat, mflat = np.zeros(0, np.int32), np.zeros(0, np.uint8)
        doc_rewards = None if rewards is None else np.asarray(rewards, dtype=np.float64).reshape(-1)
        assert doc_rewards is None or doc_rewards.size == lens.size
        return cls(items, flat, mflat, lens, doc_rewards, rewarded)


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

    def judged(self, value: dict) -> tuple[tuple[float, ...], bool] | None:
        """The judge's reward of each document of one record, and whether the record gave them (else the layout's
        defaults); None: this layout carries no rewards. ExampleError when unusable."""
        return None

    def __call__(self, chunk: list[Raw]) -> ChunkDocuments:
        L = self.seq_length
        items: list[ItemResult] = []
        texts, spans, plan = [], [], []  # plan: (item slot, number of rendered texts, judged)
        for raw in chunk:
            rec = parse_raw(raw, self.max_bytes)
            if rec.error is not None:
                items.append(ItemResult(rec.where, rec.error))
                continue
            try:
                rendered = self.render(rec.value)
                judged = self.judged(rec.value)
            except ExampleError as e:
                items.append(ItemResult(rec.where, (e.args[0], e.args[1])))
                continue
            plan.append((len(items), len(rendered), judged))
            items.append(ItemResult(rec.where))
            for t, s in rendered:
                texts.append(t)
                spans.append(s)
        encoded = self._renderer.encode(texts, spans)
        docs: list[tuple[np.ndarray, np.ndarray]] = []
        rewards: list[float] | None = [] if any(j is not None for _, _, j in plan) else None
        rewarded = 0
        k = 0
        for slot, n, judged in plan:
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
            if rewards is not None:
                rewards.extend(judged[0])
                rewarded += judged[1]
            items[slot] = ItemResult(where, None, (n,))
        return ChunkDocuments.of(items, docs, rewards, rewarded)


@dataclass
class SftExamples(ChatProcessor):
    """Instruction data (`messages`, `prompt`/`response`, `query`/`answer`, `instruction`/`output`) -> one document."""

    def render(self, value: dict) -> list[tuple[str, list[tuple[int, int]]]]:
        return [self._renderer.spans(sft_messages(value))]


REWARD_KEYS = ("chosen_reward", "rejected_reward")
DEFAULT_REWARDS = (1.0, 0.0)  # a pair without judge rewards: chosen is right, rejected is wrong


def pair_rewards(value: dict) -> tuple[tuple[float, float], bool]:
    """The optional `chosen_reward` / `rejected_reward` of a pair (both or neither, finite numbers), and whether the
    record gave them; ExampleError("bad_reward", ...) otherwise."""
    given = [k for k in REWARD_KEYS if k in value]
    if not given:
        return DEFAULT_REWARDS, False
    if len(given) == 1:
        other = REWARD_KEYS[1 - REWARD_KEYS.index(given[0])]
        raise ExampleError("bad_reward", f"'{given[0]}' without '{other}' (expected both judge rewards or neither)")
    out = []
    for k in REWARD_KEYS:
        v = value[k]
        got = math.nan
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # true/false is a label, not a reward
            try:
                got = float(v)
            except OverflowError:  # an integer beyond float range
                pass
        if not math.isfinite(got):
            raise ExampleError("bad_reward", f"'{k}' is {json.dumps(v)[:40]} (expected a finite number)")
        out.append(got)
    return (out[0], out[1]), True


@dataclass
class PreferencePairs(ChatProcessor):
    """`prompt`/`chosen`/`rejected` -> two documents, prompt + response each, the mask on the response only; the
    optional `chosen_reward` / `rejected_reward` (a judge's scores, 1 / 0 when absent) go with the documents."""

    what: ClassVar[str] = "pair"
    can_truncate: ClassVar[bool] = False  # half a pair is no pair

    def judged(self, value: dict) -> tuple[tuple[float, ...], bool]:
        return pair_rewards(value)

    def render(self, value: dict) -> list[tuple[str, list[tuple[int, int]]]]:
        prompt, chosen, rejected = preference_messages(value)
        if chosen == rejected:
            raise ExampleError("identical_pair", "'chosen' equals 'rejected' (expected two different responses)")
        rnd = self._renderer
        return [rnd.spans(prompt + chosen, len(prompt)), rnd.spans(prompt + rejected, len(prompt))]
