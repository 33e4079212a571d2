"""The judge answer parser on its own (no server): where the JSON is found, what the schema accepts, how quotes
are checked. The client-level cases are in test_judge_contract.py."""
from __future__ import annotations

import json

import pytest

from megafin.distill.judge.parse import MAX_TEXT_CHARS, find_json_object, parse_judgment

SOLUTION = "Revenue is 10.\nCost is 4.\nProfit = 10 + 4 = 14.\nAnswer: 14"
WRONG = {"final_answer": "14", "correct": False, "first_wrong_step": "Profit = 10 + 4 = 14.",
         "correct_prefix": "Revenue is 10.\nCost is 4.", "correction": "Profit = 10 - 4 = 6."}


def reason(obj_or_text, process=True, **kw):
    text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
    return parse_judgment(text, SOLUTION, process, **kw)["discard_reason"]


def test_json_is_found_among_prose_and_fences():
    assert find_json_object('Sure! ```json\n{"final_answer": "6", "correct": true}\n``` hope it helps') == \
        {"final_answer": "6", "correct": True}
    # An object without the outcome keys (an echoed example, a stray dict) is passed over for one that has them.
    assert find_json_object('{"note": 1} then {"correct": false, "final_answer": "x"}')["correct"] is False
    assert find_json_object('{"note": {"a": 1}}') == {"note": {"a": 1}}
    assert find_json_object("no braces at all") is None
    assert find_json_object("[1, 2]") is None


def test_oversized_or_hostile_text_is_unparsable_quickly():
    assert reason("{" * 100_000 + '"correct": true}') == "unparsable"
    assert reason(" " * MAX_TEXT_CHARS + json.dumps({"final_answer": "6", "correct": True})) == "unparsable"


@pytest.mark.parametrize("obj, expected", [
    ({"final_answer": "6", "correct": True}, None),
    ({"final_answer": 6.5, "correct": True, "score": 1}, None),          # a number is a final answer
    ({"final_answer": "6", "correct": True, "extra": [1]}, None),         # extra keys are ignored
    ({"correct": True}, "schema"),
    ({"final_answer": ["6"], "correct": True}, "schema"),
    ({"final_answer": "  ", "correct": False}, "no_final_answer"),
    ({"final_answer": None}, "no_final_answer"),                        # no answer: correct is moot
    ({"final_answer": "6", "correct": 1}, "schema"),
    ({"final_answer": "6", "correct": True, "score": -0.1}, "schema"),
    ({"final_answer": "6", "correct": True, "score": True}, "schema"),
    (WRONG, None),
    ({**WRONG, "correct_prefix": ""}, None),                             # the first step itself was wrong
    ({**WRONG, "correction": ""}, "schema"),
    ({**WRONG, "correct_prefix": None}, "schema"),
    ({**WRONG, "first_wrong_step": "profit = 10 + 4 = 14."}, "quote_not_found"),   # case differs
    ({**WRONG, "first_wrong_step": "Profit =  10 + 4 = 14."}, "quote_not_found"),  # inner spacing differs
    ({**WRONG, "correct_prefix": "Revenue is 10. Cost is 4."}, "quote_not_found"),
    ({**WRONG, "correct_prefix": "Answer: 14"}, "quote_not_found"),                # not before the step
])
def test_schema_and_quotes(obj, expected):
    assert reason(obj) == expected


def test_outcome_template_needs_no_process_fields_and_keeps_none():
    fields = parse_judgment(json.dumps({**WRONG, "first_wrong_step": "not in the text"}), SOLUTION, process=False)
    assert fields["kept"] and fields["correct"] is False and fields["first_wrong_step"] is None


def test_refusals():
    assert reason("I cannot evaluate financial advice.") == "refusal"
    assert reason("Sorry, no.") == "refusal"
    assert reason("This solution is fine.") == "unparsable"
    assert reason(json.dumps(WRONG), finish_reason="content_filter") == "refusal"
    assert reason("", refusal="Declined.") == "refusal"
    # Apologetic prose around a valid answer is still an answer.
    assert reason("I'm sorry for the delay. " + json.dumps(WRONG)) is None
