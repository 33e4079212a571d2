"""The judge client's contract, driven through its real code path (AsyncOpenAI over HTTP) against the scripted
judge server of tests/judge_fixture_server.py: every case ends in the right Judgment or discard reason, the
stats add up, the cache makes a rerun free, a torn cache line is survived."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from megafin.distill.judge import DISCARD_REASONS, JudgeClient, JudgeError, JudgeItem, TemplateError
from megafin.distill.judge.cache import FILE_NAME, JudgmentCache
from tests.judge_fixture_server import Reply, by_marker, judge_server  # noqa: F401 - judge_server: a fixture

QUESTION = "What was the company's 2019 profit in millions?"
REFERENCE = "6"
STEPS = ["Step 1: Revenue in 2019 was 10 million.", "Step 2: Costs in 2019 were 4 million.",
         "Step 3: Profit = 10 + 4 = 14 million.", "The answer is 14."]
SOLUTION = "\n".join(STEPS)
# The timeout is generous (loaded CI machines answer a local request in well under a second); the timeout case's
# reply comes far later than it.
RETRIES, TIMEOUT_S = 2, 1.5


def answer(**fields) -> str:
    return json.dumps(fields)


WRONG = dict(final_answer="14", correct=False, score=0.1, first_wrong_step=STEPS[2],
             correct_prefix="\n".join(STEPS[:2]), correction="Step 3: Profit = 10 - 4 = 6 million.")
GOOD = answer(final_answer="6", correct=True, score=0.9)
# case -> (what the judge answers, the expected discard reason or None for kept)
CASES = {
    "outcome": (f"Here is my verdict.\n```json\n{GOOD}\n```\nDone.", None),
    "process": (answer(**WRONG), None),
    "process-padded-quotes": (answer(**{**WRONG, "first_wrong_step": f"  {STEPS[2]}\n"}), None),
    "malformed": ('{"final_answer": "6", "correct": tru', "unparsable"),
    "prose-only": ("The solution looks right to me.", "unparsable"),
    "schema-type": (answer(final_answer="6", correct="yes"), "schema"),
    "schema-score": (answer(final_answer="6", correct=True, score=7), "schema"),
    "schema-no-process": (answer(final_answer="14", correct=False), "schema"),
    "misquoted": (answer(**{**WRONG, "first_wrong_step": "Step 3: Profit = 10 + 4 = 14 millions."}),
                  "quote_not_found"),
    "prefix-after-step": (answer(**{**WRONG, "correct_prefix": STEPS[3]}), "quote_not_found"),
    "no-final-answer": (answer(final_answer=None, correct=False), "no_final_answer"),
    "refusal-text": ("I'm sorry, but I can't help with grading this.", "refusal"),
    "refusal-filter": (Reply(content=None, finish_reason="content_filter"), "refusal"),
    "refusal-field": (Reply(content=None, refusal="I will not grade this."), "refusal"),
    "timeout": (Reply(content=GOOD, delay_s=30.0), "timeout"),
    "500-then-ok": (lambda r: Reply(status=500) if r.attempt == 0 else GOOD, None),
    "500-always": (Reply(status=500), "server_error"),
    "400": (Reply(status=400, content="prompt too long"), "server_error"),
    "bad-body": (Reply(raw_body=b"<html>gateway</html>"), "server_error"),
}
# requests each case costs: transient failures are retried, a 400 is not
REQUESTS = {"timeout": RETRIES + 1, "500-then-ok": 2, "500-always": RETRIES + 1, "bad-body": RETRIES + 1}


def item(case: str, solution: str = SOLUTION) -> JudgeItem:
    return JudgeItem(key=case, question=QUESTION, reference=REFERENCE, solution=f"[[case:{case}]]\n{solution}")


def client(server, **kwargs) -> JudgeClient:
    kwargs = {"timeout_s": TIMEOUT_S, "retries": RETRIES, "backoff_s": 0.01, **kwargs}
    return JudgeClient(server.base_url, server.model, **kwargs)


def adds_up(stats: dict, n: int) -> None:
    assert set(stats["discarded"]) == set(DISCARD_REASONS)
    assert stats["judged"] == n == stats["kept"] + sum(stats["discarded"].values())


def test_every_case_ends_in_its_judgment_or_discard_reason(judge_server, tmp_path):
    server = judge_server(by_marker({c: reply for c, (reply, _) in CASES.items()}))
    items = [item(c) for c in CASES]
    finished = []
    with client(server, cache_dir=tmp_path / "cache") as judge:
        judgments = judge.judge(items, on_done=finished.append)
        stats = judge.stats
    assert [j.key for j in judgments] == list(CASES)  # item order, whatever order they finished in
    assert sorted(finished, key=lambda j: list(CASES).index(j.key)) == judgments  # on_done: each one, once
    for j in judgments:
        expected = CASES[j.key][1]
        assert (j.kept, j.discard_reason) == (expected is None, expected), j
        assert not j.cached
        if not j.kept:
            assert (j.final_answer, j.correct, j.first_wrong_step) == (None, None, None), j
    got = {j.key: j for j in judgments}
    assert (got["outcome"].final_answer, got["outcome"].correct, got["outcome"].reward) == ("6", True, 0.9)
    assert got["outcome"].first_wrong_step is None
    process = got["process"]
    assert (process.correct, process.reward, process.first_wrong_step, process.correct_prefix) == \
        (False, 0.1, STEPS[2], "\n".join(STEPS[:2]))
    assert process.correction == WRONG["correction"]
    for j in (process, got["process-padded-quotes"]):  # quotes are verbatim substrings (ends stripped only)
        assert j.first_wrong_step in items[0].solution and j.correct_prefix in items[0].solution

    adds_up(stats, len(CASES))
    assert stats["kept"] == sum(1 for _, reason in CASES.values() if reason is None)
    for reason in DISCARD_REASONS:
        assert stats["discarded"][reason] == sum(1 for _, r in CASES.values() if r == reason), reason
    per_case = {c: n for h, n in server.requests_by_prompt.items() for c in CASES
                if f"[[case:{c}]]" in server.prompts[h]}
    assert per_case == {c: REQUESTS.get(c, 1) for c in CASES}
    assert stats["requests"] == server.requests_total == sum(per_case.values())
    assert stats["retries"] == server.requests_total - len(CASES)


def test_rerun_with_the_cache_makes_no_request_but_retries_transient_discards(judge_server, tmp_path):
    cases = {c: CASES[c] for c in ("outcome", "process", "malformed", "misquoted", "no-final-answer",
                                   "refusal-text", "400")}
    server = judge_server(by_marker({c: reply for c, (reply, _) in cases.items()}))
    items = [item(c) for c in cases]
    with client(server, cache_dir=tmp_path) as judge:
        first = judge.judge(items)
    asked = server.requests_total
    assert asked == len(cases)
    with client(server, cache_dir=tmp_path) as judge:
        again = judge.judge(items)
        stats = judge.stats
    # Only the transient discard (the 400 -> server_error) is asked again; content discards were paid for.
    assert server.requests_total - asked == 1 == stats["requests"]
    assert [j.cached for j in again] == [c != "400" for c in cases]
    assert [j.__class__(**{**j.__dict__, "cached": False}) for j in again] == first
    assert stats["cache_hits"] == len(cases) - 1
    adds_up(stats, len(cases))


def test_torn_cache_line_is_skipped_counted_and_never_swallows_the_next(judge_server, tmp_path):
    server = judge_server(by_marker({"a": GOOD, "b": GOOD, "c": answer(**WRONG)}))
    items = [item(c) for c in "abc"]
    with client(server, cache_dir=tmp_path, concurrency=1) as judge:
        judge.judge(items)
    path = tmp_path / FILE_NAME
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    path.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # a crash mid-write of the last line
    server.reset_counts()
    with client(server, cache_dir=tmp_path) as judge:
        assert judge.stats["cache_bad_lines"] == 1
        again = judge.judge(items)
    assert server.requests_total == 1  # only the torn one is asked again
    assert [j.cached for j in again] == [True, True, False] and all(j.kept for j in again)
    with client(server, cache_dir=tmp_path) as judge:  # the new line went onto a line of its own
        assert judge.stats["cache_bad_lines"] == 1
        assert all(j.cached for j in judge.judge(items))
    assert server.requests_total == 1


def test_concurrency_is_capped_and_duplicates_are_asked_once(judge_server):
    server = judge_server(lambda r: GOOD, latency_s=0.3)
    items = [JudgeItem(f"k{i}", QUESTION, REFERENCE, f"solution {i % 12}") for i in range(24)]
    with client(server, concurrency=4) as judge:
        judgments = judge.judge(items)
        stats = judge.stats
    assert server.requests_total == 12 and not server.repeated()
    assert 2 <= server.max_in_flight <= 4  # capped at 4, and overlapping (4 unless the machine is very loaded)
    assert [j.key for j in judgments] == [i.key for i in items]
    assert sum(j.cached for j in judgments) == 12 == stats["cache_hits"]
    adds_up(stats, 24)


def test_a_wrong_model_fails_at_once_with_one_line(judge_server):
    server = judge_server(lambda r: GOOD)
    with JudgeClient(server.base_url, "no-such-model", timeout_s=TIMEOUT_S) as judge:
        with pytest.raises(JudgeError, match=r"HTTP 404.*no-such-model"):
            judge.judge([item("x")])
    assert server.requests_total == 1  # a 404 is not retried


def test_on_done_failure_stops_the_run_and_propagates(judge_server):
    server = judge_server(lambda r: GOOD, latency_s=0.02)
    items = [JudgeItem(f"k{i}", QUESTION, REFERENCE, f"solution {i}") for i in range(40)]

    def full_disk(judgment) -> None:
        raise OSError("No space left on device")

    with client(server, concurrency=2) as judge:
        with pytest.raises(OSError, match="No space left"):
            judge.judge(items, on_done=full_disk)
    assert server.requests_total < len(items)


def test_judge_called_from_inside_a_running_event_loop(judge_server):
    server = judge_server(lambda r: GOOD)

    async def caller():
        with client(server) as judge:
            return judge.judge([item("x")])

    assert asyncio.run(caller())[0].kept


def test_user_template_braces_are_safe(judge_server, tmp_path):
    seen = []
    server = judge_server(lambda r: seen.append(r.prompt) or GOOD)
    template = tmp_path / "mine.txt"
    template.write_text('Q: {question}\nRef: {reference}\nS: {solution}\nReply {"final_answer": "...", '
                        '"correct": true}\n')
    tricky = "Costs {0} and {reference} and {{x}} and \\frac{1}{2}"
    with client(server, template=template) as judge:
        assert not judge.template.process  # names no process field: outcome schema
        assert judge.judge([JudgeItem("t", "Q?", "6", tricky)])[0].kept
    assert seen == [f'Q: Q?\nRef: 6\nS: {tricky}\nReply {{"final_answer": "...", "correct": true}}\n']
    bad = tmp_path / "bad.txt"
    bad.write_text("Grade {solution}\n")
    with pytest.raises(TemplateError, match=r"bad.txt: no slot \{reference\}"):
        JudgeClient(server.base_url, server.model, template=bad)
    with pytest.raises(TemplateError, match="neither a built-in"):
        JudgeClient(server.base_url, server.model, template="outcome_proces")


def test_builtin_templates_name_their_fields():
    from megafin.distill.judge.template import JudgeTemplate, builtin_names

    assert builtin_names() == ["outcome", "outcome_process"]
    process, outcome = JudgeTemplate.load("outcome_process"), JudgeTemplate.load("outcome")
    assert process.process and not outcome.process
    for field in ("final_answer", "correct", "score", "first_wrong_step", "correct_prefix", "correction"):
        assert f'"{field}"' in process.text
    assert '"final_answer"' in outcome.text and '"correct"' in outcome.text


def test_each_answer_is_on_disk_before_the_next_request_goes_out(judge_server, tmp_path, monkeypatch):
    """What makes a killed run resumable without repeats: at concurrency 1, when a request arrives, every answer
    the server sent before it is already a durable cache line (so a kill at any moment loses no answered one)."""
    seen = []  # (cache lines, answers sent so far) at each request's arrival

    def respond(request):
        path = tmp_path / FILE_NAME
        seen.append((len(path.read_bytes().splitlines()) if path.exists() else 0,
                     sum(server.answered_by_prompt.values())))
        return GOOD if request.attempt else Reply(status=500)  # retries in between change nothing

    slow_put = JudgmentCache.put

    def put(self, key, fields):  # a slow disk: a request sent before the write finished would see it missing
        time.sleep(0.05)
        slow_put(self, key, fields)

    monkeypatch.setattr(JudgmentCache, "put", put)
    server = judge_server(respond)
    items = [JudgeItem(f"k{i}", QUESTION, REFERENCE, f"solution {i}") for i in range(5)]
    with client(server, cache_dir=tmp_path, concurrency=1) as judge:
        judge.judge(items)
    # >=: the server counts an answer just after writing it, so its count may lag the client by one
    assert len(seen) == 10 and all(lines >= answered for lines, answered in seen), seen
    assert seen[-1][0] == 4 and server.max_in_flight == 1
    assert len(server.answered_by_prompt) == 5 and set(server.answered_by_prompt.values()) == {1}
