"""Training/evaluation overlap by word n-grams, as FinDAP reports it (10-grams: 0.003%).

    megafin eval contamination --train data/sft.jsonl RUN/data/sft --data-dir ../shared/data [--n 10]

An evaluation example's text is what the model is asked (its user turns), lower-cased, punctuation removed
(answers.normalize_text), split into words. The prompt template (instructions every example of a task shares) is
not evidence of contamination, so an n-gram found in more than TEMPLATE_SHARE of a task's examples (and more than
two) is left out of that task's index. Training text: every string of a JSONL row (text, prompt, response, chat
contents, ...), or the documents of a data_prep output decoded with its tokenizer.

`overlapping(questions, data_dir)` is the same check for `megafin distill`: which evaluation examples each prompt
shares an n-gram with (it refuses those prompts)."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from megafin.eval.answers import normalize_text
from megafin.eval.errors import EvalError

TEMPLATE_SHARE = 0.1


def ngrams(text: str, n: int) -> set[str]:
    words = normalize_text(text).split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def example_text(example: Any) -> str:
    return "\n".join(m["content"] for m in example.messages if m.get("role") == "user")


@dataclass
class EvalIndex:
    """n-gram -> the evaluation examples ("task:id") holding it, and each task's example keys in order."""
    n: int
    grams: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    keys: dict[str, list[str]] = field(default_factory=dict)

    def add_task(self, name: str, examples: Sequence[Any]) -> None:
        per_example = [ngrams(example_text(e), self.n) for e in examples]
        counts: dict[str, int] = defaultdict(int)
        for grams in per_example:
            for g in grams:
                counts[g] += 1
        limit = max(2, TEMPLATE_SHARE * len(examples))
        keys = []
        for k, (e, grams) in enumerate(zip(examples, per_example)):
            key = f"{name}:{e.id}:{k}"  # ids may repeat within a task (several questions per row)
            keys.append(key)
            for g in grams:
                if counts[g] <= limit:
                    self.grams[g].add(key)
        self.keys[name] = keys

    def hits(self, text: str) -> set[str]:
        found: set[str] = set()
        for g in ngrams(text, self.n):
            found |= self.grams.get(g, set())
        return found


def build_index(data_dir: Path, tasks: str = "all", n: int = 10) -> EvalIndex:
    from megafin.eval.run import prepare, resolve_tasks

    if n < 1:
        raise EvalError(f"--n: expected a positive integer, got {n}")
    index = EvalIndex(n)
    for p in prepare(resolve_tasks(tasks), Path(data_dir)):
        index.add_task(p.task.name, p.examples)
    return index


_INDEXES: dict[tuple[str, str, int], EvalIndex] = {}


def overlapping(questions: Sequence[str], data_dir: Path, n: int = 10, tasks: str = "all") -> list[list[str]]:
    """For each question, the evaluation examples ("task:id:position") it shares a word n-gram with (empty: none).
    The index of DIR is built once per process."""
    key = (str(Path(data_dir).resolve()), tasks, n)
    if key not in _INDEXES:
        _INDEXES[key] = build_index(Path(data_dir), tasks, n)
    index = _INDEXES[key]
    return [sorted(index.hits(q)) for q in questions]


# ------------------------------------------------------------------------------------------------ training text
def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def jsonl_texts(path: Path) -> Iterator[list[str]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise EvalError(f"{path}:{lineno}: not a JSON object ({err})") from None
            yield list(strings(row))


def _tokenizer(path: Optional[str], where: str) -> Any:
    from transformers import AutoTokenizer

    if not path or not Path(path).is_dir():
        raise EvalError(f"{where}: its documents are token ids; pass --tokenizer DIR (the tokenizer it was "
                        f"prepared with){'' if not path else f'; {path} is not a directory'}")
    return AutoTokenizer.from_pretrained(path)


def prepared_texts(prefix: str, tokenizer: Optional[str]) -> Iterator[list[str]]:
    """The documents of a data_prep output, decoded: packed sets (PREFIX_meta.json names the tokenizer) and
    pretraining corpora (PREFIX.bin/.idx: --tokenizer)."""
    import numpy as np

    if Path(f"{prefix}_meta.json").is_file():
        from megafin.data.packed_dataset import PackedSequences

        packs = PackedSequences(prefix)
        tok = _tokenizer(tokenizer or packs.meta.get("tokenizer"), prefix)
        for i in range(len(packs)):
            for tokens, _ in packs.documents(i):
                yield [tok.decode(tokens.tolist(), skip_special_tokens=True)]
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    tok = _tokenizer(tokenizer, prefix)
    docs = IndexedDataset(prefix, mmap=True)
    for i in range(len(docs)):
        yield [tok.decode(np.asarray(docs[i]).tolist(), skip_special_tokens=True)]


def training_texts(path: str, tokenizer: Optional[str] = None) -> Iterator[list[str]]:
    """The strings of each training document (a JSONL row's strings, or one decoded document), document by
    document."""
    p = Path(path)
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        yield from jsonl_texts(p)
    elif Path(f"{path}_meta.json").is_file() or Path(f"{path}.idx").is_file():
        yield from prepared_texts(path, tokenizer)
    elif p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise EvalError(f"{path}: a directory without *.jsonl files")
        for f in files:
            yield from jsonl_texts(f)
    else:
        raise EvalError(f"--train {path}: expected a JSONL file, a directory of them, or a data_prep output "
                        f"(PREFIX with PREFIX_meta.json, or PREFIX_text_document with its .idx)")


def contamination(train: Sequence[str], data_dir: Path, n: int = 10, tasks: str = "all",
                  tokenizer: Optional[str] = None) -> dict:
    """Per task: examples, how many share an n-gram with the training text, the share; and the total."""
    index = build_index(Path(data_dir), tasks, n)
    hit: set[str] = set()
    documents = 0
    for path in train:
        for texts in training_texts(path, tokenizer):
            documents += 1
            for text in texts:
                hit |= index.hits(text)
    rows = []
    for name, keys in index.keys.items():
        bad = [k for k in keys if k in hit]
        rows.append({"task": name, "examples": len(keys), "overlapping": len(bad),
                     "share": len(bad) / len(keys) if keys else 0.0, "first": bad[:5]})
    total = sum(r["examples"] for r in rows)
    overlapping_total = sum(r["overlapping"] for r in rows)
    return {"n": n, "train": list(train), "data_dir": str(data_dir), "training_documents": documents,
            "tasks": rows, "total": {"examples": total, "overlapping": overlapping_total,
                                     "share": overlapping_total / total if total else 0.0}}


def table(result: dict) -> str:
    lines = [f"| task | examples | overlapping {result['n']}-grams | share |", "| --- | ---: | ---: | ---: |"]
    for r in [*result["tasks"], {"task": "all", **result["total"]}]:
        lines.append(f"| {r['task']} | {r['examples']} | {r['overlapping']} | {100 * r['share']:.3f}% |")
    return "\n".join(lines)
