"""The judge of `megafin distill --outcome-judge rules` without an LLM judge endpoint: every sample's outcome from
the rule verifier (rule_verifier.py), no request made. It has the judge client's `judge(items, on_done)` shape, so
the judging step, its append-only file and resume work unchanged.

It gives outcomes only: no process judgment, so no step-corrective pairs (counted in the pairs report), and no
score (rewards 1/0). A sample whose reference is text the rules cannot decide is discarded as `not_checkable`."""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

from megafin.distill.judge.api import DISCARD_REASONS, JudgeItem, Judgment
from megafin.distill.rule_verifier import verify

MODEL_NAME = "rules"  # what judgments and pairs record as their judge


class RuleJudge:
    def __init__(self, answers: dict[str, dict], rel_tol: float = 1e-2) -> None:
        """answers: prompt id -> the prompt's checkable answer ({kind, value, scale}: PromptRow.answer)."""
        self.answers = answers
        self.rel_tol = rel_tol
        self.stats: dict = {"requests": 0, "cache_hits": 0, "kept": 0, "judged": 0, "elapsed_s": 0.0,
                            "discarded": {r: 0 for r in DISCARD_REASONS}}

    def judgment(self, item: JudgeItem) -> Judgment:
        prompt_id = item.key.rsplit("#", 1)[0]  # sample ids are "<prompt id>#<index>" (sampling.py)
        correct = verify(item.solution, self.answers[prompt_id], self.rel_tol)
        if correct is None:
            return Judgment(key=item.key, kept=False, discard_reason="not_checkable")
        return Judgment(key=item.key, kept=True, correct=correct)

    def judge(self, items: Sequence[JudgeItem],
              on_done: Optional[Callable[[Judgment], None]] = None) -> list[Judgment]:
        t0 = time.perf_counter()
        out = []
        for item in items:
            j = self.judgment(item)
            self.stats["judged"] += 1
            if j.kept:
                self.stats["kept"] += 1
            else:
                self.stats["discarded"][j.discard_reason] += 1
            if on_done is not None:
                on_done(j)
            out.append(j)
        self.stats["elapsed_s"] = round(self.stats["elapsed_s"] + time.perf_counter() - t0, 3)
        return out

    def close(self) -> None:
        pass
