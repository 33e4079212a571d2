"""FIN NER (SEC credit agreements): rows {id, tokens, tags} with IO tags, asked (as FinBen's NER task asks) for the
entities as "name, TYPE" pairs, scored by entity-level F1."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.answers import normalize_text
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import user

TYPES = ("PER", "ORG", "LOC", "MISC")
INSTRUCTION = (
    "In the following sentence from a financial agreement in a U.S. SEC filing, list the named entities that are a "
    "person (PER), an organization (ORG), a location (LOC) or another named entity (MISC). Answer with one "
    "\"entity name, entity type\" pair per entity, the pairs separated by \"; \" (for example: \"John Smith, PER; "
    "Acme Bank, ORG; New York, LOC\"), or \"None\" if there are no entities.")
_PAIR = re.compile(rf"^\s*[\"'“]?(.+?)[\"'”]?\s*(?:[,:]\s*|\s)\(?[\"']?({'|'.join(TYPES)})[\"']?\)?\s*\.?\s*$",
                   re.IGNORECASE)
_NONE = re.compile(r"^\W*(none|n/?a)\b|\bno (named )?entit(y|ies)\b", re.IGNORECASE)


def parse_entities(text: str) -> Optional[list[tuple[str, str]]]:
    """The (name, TYPE) pairs of an answer ("A, PER; B, ORG", also one pair a line, "name: TYPE" or "name (TYPE)");
    [] for an answer saying there are none (or an empty one); None when nothing in it has that form."""
    body = text.split("Answer:")[-1].strip()
    pairs = []
    for part in re.split(r";|\n", body):
        m = _PAIR.match(part.strip().lstrip("-*• "))
        if m:
            pairs.append((m.group(1).strip(), m.group(2).upper()))
    if pairs:
        return pairs
    return [] if not body or _NONE.search(body) else None


def _key(entity: tuple[str, str]) -> tuple[str, str]:
    # Gold names are CoNLL tokens joined by spaces ("S . A . S ."): compare without case, punctuation or spaces.
    return "".join(normalize_text(entity[0]).split()), entity[1]


@dataclass(frozen=True)
class NerTask:
    """Gold: the sentence's entities, a run of tokens of one I-TYPE being one entity (IO tags have no B-). Metric:
    micro entity F1 over all sentences, an entity found when its name (case, punctuation, spaces ignored) and type
    match a gold one. Unparsable: an answer with no "name, TYPE" pair that does not say there are none (scored as
    no entities). Baseline: predicting no entities, F1 0 (no true positives; 139 of 212 test sentences have none,
    so "None" is right for most sentences yet finds nothing)."""
    name: str = "ner"
    title: str = "NER"
    metric: str = "entity_f1"
    data_file: str = "ner/test.jsonl"
    fineval_config: Optional[str] = "NER"
    max_new_tokens: int = 128
    needs_judge: bool = False

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            tokens, tags = row["tokens"], row["tags"]
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise TypeError("tokens must be a list of strings")
            gold = metrics.io_entities(tokens, tags)
            bad = [t for _, t in gold if t not in TYPES]
            if bad:
                raise KeyError(f"tag type {bad[0]!r} (expected I-{', I-'.join(TYPES)} or O)")
            sentence = " ".join(tokens)
            out.append(Example(id=str(row["id"]), messages=user(f"{INSTRUCTION}\nSentence: {sentence}\nAnswer:"),
                               gold=gold))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            pairs = parse_entities(text)
            scored.append(Scored(prediction=pairs, unparsable=pairs is None))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"entity_f1": metrics.entity_f1([ex.gold for ex in examples], [s.prediction for s in scored],
                                               key=_key)}

    def baseline(self, examples: Sequence[Example]) -> float:
        return metrics.entity_f1([ex.gold for ex in examples], [[] for _ in examples], key=_key)


TASK = NerTask()
