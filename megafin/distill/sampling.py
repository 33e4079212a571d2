"""Step 1 of `megafin distill`: n solutions per prompt from the policy, through any generation engine
(megafin/generate: megafin | hf | vllm | openai), with a zero-shot chain-of-thought prompt from a template file.

samples.jsonl holds one row per solution, id `<prompt id>#<sample index>`, with the sampling settings that made it
(temperature, top_p, the prompt's seed: with a seed, a sample depends only on its prompt, seed and index, so a
resumed run regenerates exactly what a kill lost). Rows are appended batch by batch; a rerun generates only the
samples missing."""
from __future__ import annotations

import string
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megafin.distill.errors import DistillError
from megafin.distill.prompts import PromptRow
from megafin.distill.records import Appender, read_records

DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "cot.txt"
SLOTS = ("question", "context")


class PromptTemplate:
    """A user-replaceable text file with the slots {question} and {context} (the reference answer is never shown
    to the policy). Braces in the inserted text are safe: only the template is parsed."""

    def __init__(self, path: Path = DEFAULT_TEMPLATE) -> None:
        try:
            self.text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise DistillError(f"--prompt-template {path}: cannot read ({err.strerror})") from None
        try:
            slots = {name for _, name, _, _ in string.Formatter().parse(self.text) if name is not None}
        except ValueError as err:
            raise DistillError(f"--prompt-template {path}: {err} (write a literal brace as {{{{ or }}}})") from None
        unknown = sorted(slots - set(SLOTS))
        if unknown or "question" not in slots:
            raise DistillError(f"--prompt-template {path}: expected the slots {{question}} (required) and "
                               f"{{context}}, got {', '.join('{' + s + '}' for s in sorted(slots)) or 'none'}")
        self.path = path

    def render(self, row: PromptRow) -> str:
        return self.text.format(question=row.question, context=row.context).strip()


def sample_id(prompt_id: str, index: int) -> str:
    return f"{prompt_id}#{index}"


def prompt_seed(seed: Optional[int], prompt_id: str) -> Optional[int]:
    """Each prompt's own seed, from the run's seed and the prompt id (not its position: shards and reruns agree)."""
    if seed is None:
        return None
    return (seed * 1_000_003 + zlib.crc32(prompt_id.encode())) % (2 ** 31)


@dataclass
class SamplingSummary:
    generated: int = 0       # samples written by this run
    already_done: int = 0    # samples found in samples.jsonl
    torn_line_dropped: bool = False
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class SamplingSettings:
    n: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 1024
    seed: Optional[int] = 1234
    batch_size: int = 16
    stop: tuple[str, ...] = field(default_factory=tuple)


def existing_samples(path: Path, summary: SamplingSummary) -> dict[str, dict]:
    records, torn = read_records(path, "samples")
    summary.torn_line_dropped = torn
    return {r["id"]: r for r in records if isinstance(r.get("id"), str)}


def run_sampling(engine, prompts: list[PromptRow], template: PromptTemplate, settings: SamplingSettings,
                 path: Path, progress: bool = True) -> SamplingSummary:
    """Generate the samples of `prompts` missing from `path`, appending them one engine batch at a time."""
    import time

    from tqdm import tqdm

    from megafin.generate.api import GenerationError, GenerationRequest, SamplingParams

    summary = SamplingSummary()
    have = existing_samples(path, summary)
    todo: list[tuple[PromptRow, list[int]]] = []
    for row in prompts:
        missing = [k for k in range(settings.n) if sample_id(row.id, k) not in have]
        summary.already_done += settings.n - len(missing)
        if missing:
            todo.append((row, missing))
    model = getattr(engine, "model_name", str(getattr(engine, "model", "")))
    start = time.perf_counter()
    with Appender(path) as out, tqdm(total=sum(len(m) for _, m in todo), unit="sample", desc="sampling",
                                     file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        for at in range(0, len(todo), settings.batch_size):
            batch = todo[at:at + settings.batch_size]
            requests = []
            for row, _ in batch:
                params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                        top_p=settings.top_p, top_k=settings.top_k, n=settings.n,
                                        seed=prompt_seed(settings.seed, row.id), stop=settings.stop)
                requests.append(GenerationRequest(messages=[{"role": "user", "content": template.render(row)}],
                                                  params=params))
            try:
                results = engine.generate(requests)
            except GenerationError as err:
                raise DistillError(f"sampling prompts {batch[0][0].id}..{batch[-1][0].id}: {err}") from None
            rows = []
            for (row, missing), request, result in zip(batch, requests, results):
                if len(result.samples) != settings.n:
                    raise DistillError(f"sampling prompt {row.id}: the engine returned {len(result.samples)} "
                                       f"samples, expected n={settings.n} (does the endpoint support n?)")
                for k in missing:  # the samples a kill lost; the others are on disk already
                    s = result.samples[k]
                    rows.append({"id": sample_id(row.id, k), "prompt_id": row.id, "index": k, "text": s.text,
                                 "finish_reason": s.finish_reason, "completion_tokens": s.completion_tokens,
                                 "temperature": request.params.temperature, "top_p": request.params.top_p,
                                 "top_k": request.params.top_k, "seed": request.params.seed, "policy": model})
                    summary.completion_tokens += s.completion_tokens
            out.write(rows)
            summary.generated += len(rows)
            bar.update(len(rows))
    summary.seconds = time.perf_counter() - start
    return summary
