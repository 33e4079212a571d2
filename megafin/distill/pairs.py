"""Step 3 of `megafin distill`: preference pairs from the judged samples, JSONL that `data_prep preference` reads
as is (prompt / chosen / rejected as strings: a user turn and two assistant turns).

- FAP (outcome pairs): for one prompt, a correct sample is chosen and a wrong one rejected. Identical texts are
  kept once (a text labelled both correct and wrong is dropped: `conflicting_labels`); at most
  `max_per_prompt` pairs, taken diagonal by diagonal so that every sample is used once before any twice.
- SCP (step-corrective pairs): for a wrong sample whose judgment quotes the first wrong step: prompt = the problem +
  the correct reasoning before that step + "What is the next step?", chosen = the judge's one-step correction,
  rejected = the original wrong step.

Rewards: `chosen_reward` / `rejected_reward` are the judge's scores of the two samples where it gives them, else
1.0 / 0.0; an SCP pair's steps have no score of their own, so 1.0 / 0.0. Only samples whose judgment was kept
enter pairs; their correct/wrong label is the judge's, or with outcome_judge="rules" the rule verifier's where it
decides (the judge's where it cannot: text answers). The output depends only on the files, never on the order
judgments finished in: a resumed run writes the same pairs as an uninterrupted one."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from megafin.distill.prompts import PromptRow
from megafin.distill.rule_verifier import verify

NEXT_STEP = "What is the next step?"
PAIR_KINDS = ("fap", "scp")


@dataclass
class Labelled:
    """A sample with a kept judgment and its final label."""
    sample: dict
    judgment: dict
    correct: bool


@dataclass
class PairReport:
    kept: int = 0                                           # samples with a kept judgment
    correct: int = 0
    wrong: int = 0
    outcome_from: Counter = field(default_factory=Counter)  # rules | judge: where each final label came from
    rules_checked: int = 0                                  # kept samples the rule verifier could decide
    rules_agree: int = 0                                    # ... and agreed with the judge's label
    pairs: Counter = field(default_factory=Counter)         # by kind
    skipped: Counter = field(default_factory=Counter)       # why a possible pair was not made

    def agreement(self) -> Optional[float]:
        return self.rules_agree / self.rules_checked if self.rules_checked else None


def label_samples(prompt: PromptRow, samples: list[dict], judgments: dict[str, dict], outcome_judge: str,
                  rel_tol: float, report: PairReport) -> list[Labelled]:
    out = []
    for sample in samples:
        judgment = judgments.get(sample["id"])
        if judgment is None or not judgment.get("kept") or judgment.get("correct") is None:
            continue
        report.kept += 1
        rule = verify(sample["text"], prompt.answer, rel_tol)
        if rule is not None:
            report.rules_checked += 1
            report.rules_agree += rule == bool(judgment["correct"])
        if outcome_judge == "rules" and rule is not None:
            correct, report.outcome_from["rules"] = rule, report.outcome_from["rules"] + 1
        else:
            correct, report.outcome_from["judge"] = bool(judgment["correct"]), report.outcome_from["judge"] + 1
        report.correct += correct
        report.wrong += not correct
        out.append(Labelled(sample, judgment, correct))
    return out


def _reward(judgment: dict, default: float) -> float:
    reward = judgment.get("reward")
    return float(reward) if isinstance(reward, (int, float)) and not isinstance(reward, bool) else default


def _dedup(items: list[Labelled]) -> list[Labelled]:
    seen: set[str] = set()
    out = []
    for item in items:
        text = item.sample["text"].strip()
        if text not in seen:
            seen.add(text)
            out.append(item)
    return out


def _pair_id(kind: str, *parts: str) -> str:
    return f"{kind}-" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def outcome_pairs(prompt: PromptRow, labelled: list[Labelled], prompt_text: str, max_per_prompt: int,
                  judge_model: str, report: PairReport) -> list[dict]:
    correct = _dedup([x for x in labelled if x.correct])
    wrong = _dedup([x for x in labelled if not x.correct])
    both = {x.sample["text"].strip() for x in correct} & {x.sample["text"].strip() for x in wrong}
    if both:
        report.skipped["conflicting_labels"] += len(both)
        correct = [x for x in correct if x.sample["text"].strip() not in both]
        wrong = [x for x in wrong if x.sample["text"].strip() not in both]
    if not correct or not wrong:
        if labelled:
            report.skipped["fap_no_correct" if not correct else "fap_no_wrong"] += 1
        return []
    order = sorted(((i, j) for i in range(len(correct)) for j in range(len(wrong))),
                   key=lambda ij: ((ij[1] - ij[0]) % len(wrong), ij[0]))
    if len(order) > max_per_prompt:
        report.skipped["fap_over_cap"] += len(order) - max_per_prompt
    pairs = []
    for i, j in order[:max_per_prompt]:
        c, w = correct[i], wrong[j]
        pairs.append({"id": _pair_id("fap", c.sample["id"], w.sample["id"]), "kind": "fap", "prompt": prompt_text,
                      "chosen": c.sample["text"], "rejected": w.sample["text"],
                      "chosen_reward": _reward(c.judgment, 1.0), "rejected_reward": _reward(w.judgment, 0.0),
                      "provenance": {"prompt_id": prompt.id, "chosen_sample": c.sample["id"],
                                     "rejected_sample": w.sample["id"], "judge_model": judge_model,
                                     "policy": c.sample.get("policy")}})
    return pairs


def step_pairs(prompt: PromptRow, labelled: list[Labelled], max_per_prompt: int, judge_model: str,
               report: PairReport) -> list[dict]:
    pairs: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    for item in labelled:
        if item.correct:
            continue
        j = item.judgment
        step, prefix, fix = (j.get("first_wrong_step"), j.get("correct_prefix"), j.get("correction"))
        if not (isinstance(step, str) and step.strip() and isinstance(fix, str) and fix.strip()):
            report.skipped["scp_no_process"] += 1
            continue
        if fix.strip() == step.strip():
            report.skipped["scp_same_step"] += 1
            continue
        prefix = prefix.strip() if isinstance(prefix, str) else ""
        text = "\n\n".join(p for p in (prompt.problem(), prefix, NEXT_STEP) if p)
        key = (text, fix.strip(), step.strip())
        if key in seen:
            report.skipped["scp_duplicate"] += 1
            continue
        if len(pairs) >= max_per_prompt:
            report.skipped["scp_over_cap"] += 1
            continue
        seen.add(key)
        pairs.append({"id": _pair_id("scp", item.sample["id"]), "kind": "scp", "prompt": text,
                      "chosen": fix.strip(), "rejected": step.strip(), "chosen_reward": 1.0, "rejected_reward": 0.0,
                      "provenance": {"prompt_id": prompt.id, "rejected_sample": item.sample["id"],
                                     "judge_model": judge_model, "policy": item.sample.get("policy")}})
    return pairs


def build_pairs(prompts: list[PromptRow], prompt_texts: dict[str, str], samples: dict[str, dict],
                judgments: dict[str, dict], judge_model: str, outcome_judge: str = "llm", max_per_prompt: int = 4,
                kinds: tuple[str, ...] = PAIR_KINDS, rel_tol: float = 1e-2) -> tuple[list[dict], PairReport]:
    """Every pair of `prompts`, in prompt order (FAP then SCP within a prompt). `prompt_texts` is each prompt as
    the policy saw it (the FAP pairs' prompt)."""
    report = PairReport()
    by_prompt: dict[str, list[dict]] = {}
    for sample in samples.values():
        by_prompt.setdefault(sample["prompt_id"], []).append(sample)
    pairs: list[dict] = []
    for prompt in prompts:
        mine = sorted(by_prompt.get(prompt.id, []), key=lambda s: s["index"])
        labelled = label_samples(prompt, mine, judgments, outcome_judge, rel_tol, report)
        if "fap" in kinds:
            pairs += outcome_pairs(prompt, labelled, prompt_texts[prompt.id], max_per_prompt, judge_model, report)
        if "scp" in kinds:
            pairs += step_pairs(prompt, labelled, max_per_prompt, judge_model, report)
    report.pairs.update(p["kind"] for p in pairs)
    return pairs, report
