"""For the `megafin distill` tests: a policy whose solutions are known (step by step, half right, half wrong) and a
judge script for tests/judge_fixture_server.py that grades them as a careful judge would (verbatim quotes)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from megafin.generate.api import GenerationRequest, GenerationResult, Sample
from megafin.generate.engines import GenerationEngine
from tests.judge_fixture_server import Reply, ScriptedRequest

_TARGET = re.compile(r"compute (\d+)")
_SOLUTION = re.compile(r"<<<SOLUTION\n(.*)\nSOLUTION>>>", re.DOTALL)


def write_prompts(path: Path, n: int, start: int = 0) -> Path:
    """n JSONL prompts "Q<i>: compute <10 + i>?" with the reference answer 10 + i."""
    rows = [{"id": f"q{i}", "question": f"Q{i}: compute {10 + i}?", "answer": str(10 + i)}
            for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def solution(target: int, k: int) -> str:
    """Even k: right; odd k: wrong at step 2. Every text differs (the sample index is in step 1)."""
    if k % 2 == 0:
        return f"Step 1: Read the target, try {k}.\nStep 2: It is {target}.\nFinal answer: {target}"
    return f"Step 1: Read the target, try {k}.\nStep 2: Add one by mistake: {target + 1}.\nFinal answer: {target + 1}"


class KnownPolicy(GenerationEngine):
    """Answers solution(target, k) for a prompt containing "compute <target>"; counts the samples it made."""
    name = "known"

    def __init__(self, model: str = "known-policy", **options) -> None:
        super().__init__(model)
        self.generated = 0

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            r.check()
            target = int(_TARGET.search(r.messages[-1]["content"]).group(1))
            texts = [solution(target, k) for k in range(r.params.n)]
            self.generated += len(texts)
            out.append(GenerationResult([Sample(t, "stop", len(t.split())) for t in texts], prompt_tokens=10))
        return out


def careful_judge(request: ScriptedRequest) -> Reply:
    """Grades solution(): right ones correct (score 0.9), wrong ones with step 2 quoted and corrected. A solution
    containing "[[junk]]" gets prose (unparsable); one with "[[misquote]]" a step that is not in it."""
    text = _SOLUTION.search(request.prompt).group(1)
    lines = text.splitlines()
    if "[[junk]]" in text:
        return Reply(content="I think it is probably fine.")
    if "by mistake" not in text:
        return Reply(content=json.dumps({"final_answer": lines[-1], "correct": True, "score": 0.9}))
    step = "Step 2: A paraphrase of the step." if "[[misquote]]" in text else lines[1]
    return Reply(content=json.dumps({"final_answer": lines[-1], "correct": False, "score": 0.1,
                                     "first_wrong_step": step, "correct_prefix": lines[0],
                                     "correction": "Step 2: Take the target as it is."}))
