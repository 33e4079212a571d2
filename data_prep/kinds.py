"""The kinds of packed data (docs/formats.md): which processors read which inputs, and what one output holds.

A `DataKind` (the `kind` in PREFIX_meta.json) says which record processors (processors.py) read which inputs, which
examples are kept and which fields it adds to the meta. `KINDS` is the registry: `sft`, `preference`, `mix`
(CPT + IT). A new kind = one `DataKind` subclass here and its `KINDS` entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Sequence

import numpy as np

from data_prep.processors import ChatProcessor, CptDocuments, PreferencePairs, RecordProcessor, SftExamples
from data_prep.sources import DEFAULT_MAX_DOC_BYTES


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
