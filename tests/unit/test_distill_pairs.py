"""The pair builder's contract (megafin/distill/pairs.py): each case of judged samples ends in the right pairs or
the right reason for not making one; the output does not depend on the order judgments arrived in."""
from __future__ import annotations

import json

import pytest

from megafin.distill.pairs import NEXT_STEP, build_pairs
from megafin.distill.prompts import PromptRow, answer_of

STEP1, STEP2 = "Revenue rose from 10 to 12.", "Growth is 12 - 10 = 3."


def prompt(pid="p1", reference="20", context="| a | b |") -> PromptRow:
    return PromptRow(id=pid, question="What is the growth in %?", context=context, reference=reference,
                     answer=answer_of(reference), source="jsonl", line=1)


def sample(pid, k, text):
    return {"id": f"{pid}#{k}", "prompt_id": pid, "index": k, "text": text, "policy": "tiny"}


def ok(key, correct, reward=None, step=None, prefix=None, fix=None):
    return {"key": key, "kept": True, "discard_reason": None, "final_answer": "x", "correct": correct,
            "reward": reward, "first_wrong_step": step, "correct_prefix": prefix, "correction": fix}


def dropped(key, reason):
    return {"key": key, "kept": False, "discard_reason": reason, "correct": None}


def run(samples, judgments, prompts=None, **kw):
    prompts = prompts or [prompt()]
    texts = {p.id: f"PROMPT {p.id}" for p in prompts}
    return build_pairs(prompts, texts, {s["id"]: s for s in samples}, {j["key"]: j for j in judgments},
                       "judge-x", **kw)


def test_outcome_pair_with_judge_scores_and_provenance():
    s = [sample("p1", 0, f"{STEP1}\nFinal answer: 20%"), sample("p1", 1, f"{STEP1}\n{STEP2}\nFinal answer: 30%")]
    pairs, report = run(s, [ok("p1#0", True, reward=0.9), ok("p1#1", False, reward=0.2, step=STEP2, prefix=STEP1,
                                                                   fix="Growth is (12 - 10) / 10 = 20%.")])
    fap = [p for p in pairs if p["kind"] == "fap"]
    assert len(fap) == 1
    assert (fap[0]["prompt"], fap[0]["chosen"], fap[0]["rejected"]) == ("PROMPT p1", s[0]["text"], s[1]["text"])
    assert (fap[0]["chosen_reward"], fap[0]["rejected_reward"]) == (0.9, 0.2)
    assert fap[0]["provenance"] == {"prompt_id": "p1", "chosen_sample": "p1#0", "rejected_sample": "p1#1",
                                    "judge_model": "judge-x", "policy": "tiny"}
    assert report.pairs == {"fap": 1, "scp": 1}


def test_step_corrective_pair_prompt_is_problem_prefix_and_next_step():
    s = [sample("p1", 0, f"{STEP1}\n{STEP2}\nFinal answer: 30%")]
    pairs, report = run(s, [ok("p1#0", False, step=STEP2, prefix=STEP1, fix="Growth is 2 / 10 = 20%.")])
    (scp,) = pairs
    p = prompt()
    assert scp["kind"] == "scp"
    assert scp["prompt"] == f"{p.context}\n\nQuestion: {p.question}\n\n{STEP1}\n\n{NEXT_STEP}"
    assert (scp["chosen"], scp["rejected"]) == ("Growth is 2 / 10 = 20%.", STEP2)
    assert (scp["chosen_reward"], scp["rejected_reward"]) == (1.0, 0.0)  # step-level: no judge score of its own
    assert report.skipped["fap_no_correct"] == 1


def test_first_step_wrong_has_no_prefix():
    s = [sample("p1", 0, f"{STEP2}\nFinal answer: 30%")]
    (scp,), _ = run(s, [ok("p1#0", False, step=STEP2, prefix="", fix="Growth is 20%.")])
    assert scp["prompt"].endswith(f"Question: What is the growth in %?\n\n{NEXT_STEP}")


@pytest.mark.parametrize("case, judgment, reason", [
    ("no process fields", ok("p1#0", False), "scp_no_process"),
    ("correction repeats the wrong step", ok("p1#0", False, step=STEP2, prefix=STEP1, fix=f" {STEP2} "),
     "scp_same_step"),
])
def test_wrong_sample_without_a_usable_step_makes_no_scp(case, judgment, reason):
    pairs, report = run([sample("p1", 0, f"{STEP1}\n{STEP2}")], [judgment])
    assert pairs == [] and report.skipped[reason] == 1, case


def test_discarded_judgments_never_enter_pairs():
    s = [sample("p1", 0, "Final answer: 20%"), sample("p1", 1, "Final answer: 30%"), sample("p1", 2, "x")]
    pairs, report = run(s, [ok("p1#0", True), dropped("p1#1", "quote_not_found"), dropped("p1#2", "unparsable")])
    assert pairs == [] and report.kept == 1 and report.skipped["fap_no_wrong"] == 1


def test_identical_texts_are_deduplicated_and_conflicts_dropped():
    same_right, same_wrong = "Final answer: 20%", "Final answer: 30%"
    s = [sample("p1", 0, same_right), sample("p1", 1, same_right + "\n"), sample("p1", 2, same_wrong),
         sample("p1", 3, same_wrong), sample("p1", 4, "Final answer: 99%"), sample("p1", 5, "Final answer: 99%")]
    j = [ok("p1#0", True), ok("p1#1", True), ok("p1#2", False), ok("p1#3", False), ok("p1#4", True),
         ok("p1#5", False)]
    pairs, report = run(s, j, kinds=("fap",))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(same_right, same_wrong)]
    assert report.skipped["conflicting_labels"] == 1


def test_cap_per_prompt_uses_every_sample_once_before_any_twice():
    s = [sample("p1", k, f"right {k}") for k in range(3)] + [sample("p1", k, f"wrong {k}") for k in range(3, 6)]
    j = [ok(f"p1#{k}", k < 3) for k in range(6)]
    pairs, report = run(s, j, kinds=("fap",), max_per_prompt=3)
    assert sorted(p["chosen"] for p in pairs) == ["right 0", "right 1", "right 2"]
    assert sorted(p["rejected"] for p in pairs) == ["wrong 3", "wrong 4", "wrong 5"]
    assert report.skipped["fap_over_cap"] == 9 - 3


def test_rules_replace_the_judge_label_and_agreement_is_counted():
    s = [sample("p1", 0, "Final answer: 20%"), sample("p1", 1, "Final answer: 0.2"), sample("p1", 2, "It is 31%")]
    j = [ok("p1#0", True), ok("p1#1", False), ok("p1#2", False)]  # the judge missed that 0.2 == 20%
    pairs, report = run(s, j, outcome_judge="rules", kinds=("fap",))
    assert {p["chosen"] for p in pairs} == {"Final answer: 20%", "Final answer: 0.2"}
    assert {p["rejected"] for p in pairs} == {"It is 31%"}
    assert (report.rules_checked, report.rules_agree) == (3, 2)
    assert report.outcome_from == {"rules": 3}
    _, by_judge = run(s, j, kinds=("fap",))
    assert by_judge.correct == 1 and by_judge.outcome_from == {"judge": 3} and by_judge.agreement() == 2 / 3


def test_text_references_fall_back_to_the_judge_label():
    p = prompt(reference="the board of directors")
    s = [sample("p1", 0, "The board approves it."), sample("p1", 1, "The CEO.")]
    pairs, report = run(s, [ok("p1#0", True), ok("p1#1", False)], prompts=[p], outcome_judge="rules",
                        kinds=("fap",))
    assert len(pairs) == 1 and report.outcome_from == {"judge": 2} and report.agreement() is None


def test_output_does_not_depend_on_judgment_order():
    prompts = [prompt("a"), prompt("b")]
    s = [sample(pid, k, f"{pid} text {k}") for pid in "ab" for k in range(4)]
    j = [ok(f"{pid}#{k}", k % 2 == 0, step=f"{pid} text {k}", prefix="", fix="better") for pid in "ab"
         for k in range(4)]
    forward, _ = run(s, j, prompts=prompts)
    backward, _ = run(list(reversed(s)), list(reversed(j)), prompts=prompts)
    assert json.dumps(forward) == json.dumps(backward)
    assert [p["provenance"]["prompt_id"] for p in forward] == ["a"] * 6 + ["b"] * 6
