"""answers.py: the parsing that eval metrics and the distill rule verifier share, on hand-made model text."""
import pytest

from megafin.eval.answers import extract_choice, extract_final_number, normalize_text, numbers_match, parse_number


@pytest.mark.parametrize("text, expected", [
    ("The bond's duration falls... Selection: [[B]]", "B"),
    ("[[c]]", "C"),
    ("First A looks right, but the answer is (C).", "C"),
    ("Answer: A", "A"),
    ("B. Because rates rose.", "B"),
    ("Selection: [[D]]", None),  # not one of the options
    ("I am not sure.", None),
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, "ABC") == expected


@pytest.mark.parametrize("text, expected", [
    ("$1,234.5 million", (1234.5, False)),
    ("a loss of (12) thousand", (-12.0, False)),
    ("-3.5% decline", (-3.5, True)),
    ("rate of .25", (0.25, False)),
    ("no digits here", None),
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Step 1: 5 + 5 = 10.\nStep 2: 10 * 2 = 20.\nFinal answer: 20%", (20.0, True)),
    ("Revenue grew from 100 to 110, so the change is 10.", (10.0, False)),
    ("We get \\boxed{0.125} in the end, not 7.", (0.125, False)),
    ("Answer: 3.2\nCheck: 1 + 2.2 = 3.2 and 4 apples", (3.2, False)),
    ("I cannot compute this.", None),
])
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numbers_match_tolerance_and_percent_forms():
    assert numbers_match(20.1, 20.0)                  # within 1%
    assert not numbers_match(21.0, 20.0)
    assert numbers_match(0.125, 12.5)                 # a rate as a fraction vs as a percentage
    assert not numbers_match(0.125, 12.5, percent_equivalent=False)
    assert numbers_match(-0.0, 0.0)


def test_normalize_text_ignores_case_punctuation_and_spacing():
    assert normalize_text("  Positive. ") == normalize_text("positive") == "positive"
    assert normalize_text("Net-income, (loss)") == "netincome loss"
