"""`megafin distill`'s pipeline in process: a policy with known solutions, the real JudgeClient against the scripted
judge server (tests/judge_fixture_server.py). Pairs come out right, stats.json adds up, a rerun pays nothing twice
and writes the same pairs, transient discards are asked again, shards cover the prompts, mixed settings refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megafin.distill.errors import DistillError
from megafin.distill.judge import JudgeClient
from megafin.distill.pipeline import DistillSettings, run_distill
from megafin.distill.sampling import SamplingSettings
from tests.distill_fixtures import KnownPolicy, careful_judge, write_prompts
from tests.judge_fixture_server import Reply, judge_server  # noqa: F401  (a fixture)


def settings(tmp_path: Path, server, **kw) -> DistillSettings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = dict(prompts=kw.pop("prompts", None) or write_prompts(tmp_path / "prompts.jsonl", 6), out=tmp_path / "out", policy="known-policy",
                judge_model=server.model, source="jsonl", allow_overlap=True, progress=False,
                sampling=SamplingSettings(n=4, temperature=0.7, max_new_tokens=32, seed=7, batch_size=4))
    base.update(kw)
    return DistillSettings(**base)


def run(s: DistillSettings, server, policies: list | None = None, **judge_kw) -> dict:
    def open_policy():
        policy = KnownPolicy()
        if policies is not None:
            policies.append(policy)
        return policy

    def open_judge(_prompts):
        return JudgeClient(server.base_url, server.model, cache_dir=s.out / "cache", concurrency=4, timeout_s=5,
                           retries=judge_kw.get("retries", 0), backoff_s=0.01)

    return run_distill(s, open_policy, open_judge)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_consistent(stats: dict) -> None:
    assert stats["judged"] == stats["kept"] + sum(stats["discarded"].values())
    assert stats["samples"] == stats["judged"] + stats["not_judged"]
    assert stats["kept"] == stats["outcome"]["correct"] + stats["outcome"]["wrong"]


def test_pairs_stats_and_a_rerun_that_pays_nothing(tmp_path, judge_server):
    server = judge_server(careful_judge)
    s = settings(tmp_path, server)
    stats = run(s, server)
    assert_consistent(stats)
    assert (stats["prompts"], stats["samples"], stats["judged"], stats["kept"]) == (6, 24, 24, 24)
    assert stats["pairs"] == {"fap": 24, "scp": 12}  # 2 right x 2 wrong per prompt; one SCP per wrong sample
    assert stats["rule_verifier"] == {"checked": 24, "agree": 24, "agreement": 1.0}
    assert stats["judge"]["requests"] == 24 == server.requests_total and not server.repeated()
    samples = read_jsonl(s.out / "samples.jsonl")
    assert {(x["temperature"], x["top_p"]) for x in samples} == {(0.7, 0.95)}
    assert len({x["seed"] for x in samples}) == 6  # one seed per prompt, recorded on each of its samples
    pairs = read_jsonl(s.out / "pairs.jsonl")
    scp = next(p for p in pairs if p["kind"] == "scp")
    assert scp["rejected"].startswith("Step 2: Add one by mistake") and scp["prompt"].endswith(
        "What is the next step?") and "Step 1: Read the target" in scp["prompt"]
    fap = next(p for p in pairs if p["kind"] == "fap")
    assert (fap["chosen_reward"], fap["rejected_reward"]) == (0.9, 0.1)
    assert json.loads((s.out / "stats.json").read_text())["pairs"] == stats["pairs"]

    before = (s.out / "pairs.jsonl").read_bytes()
    policies: list = []
    again = run(s, server, policies)
    assert policies == [] and again["judge"]["requests"] == 0 and server.requests_total == 24  # nothing redone
    assert (s.out / "pairs.jsonl").read_bytes() == before
    assert {k: v for k, v in again.items() if k not in ("judge", "sampling")} == \
        {k: v for k, v in stats.items() if k not in ("judge", "sampling")}


def test_unusable_judge_answers_are_counted_and_transient_ones_asked_again(tmp_path, judge_server):
    flaky = {"down": True}

    def respond(request):
        if flaky["down"] and "try 3" in request.prompt:
            return Reply(status=500)
        text = request.prompt
        if "Q1:" in text and "try 0" in text:
            return Reply(content="The solution looks fine overall.")
        if "Q2:" in text and "try 1" in text:
            return Reply(content=careful_judge(request).content.replace("Step 2: Add one", "Step 2: Added one"))
        return careful_judge(request)

    server = judge_server(respond)
    s = settings(tmp_path, server)
    stats = run(s, server)
    assert_consistent(stats)
    d = stats["discarded"]
    assert (d["server_error"], d["unparsable"], d["quote_not_found"]) == (6, 1, 1) and stats["kept"] == 16
    judged_before = len(read_jsonl(s.out / "judgments.jsonl"))
    flaky["down"] = False
    server.reset_counts()
    again = run(s, server)
    assert again["judge"]["requests"] == 6 and not server.repeated()  # only the server errors are asked again
    assert len(read_jsonl(s.out / "judgments.jsonl")) == judged_before + 6
    assert_consistent(again)
    assert again["discarded"]["server_error"] == 0 and again["kept"] == 22


def test_a_torn_last_line_is_redone(tmp_path, judge_server):
    server = judge_server(careful_judge)
    s = settings(tmp_path, server)
    run(s, server)
    pairs = (s.out / "pairs.jsonl").read_bytes()
    for name in ("samples.jsonl", "judgments.jsonl"):  # a kill in the middle of the last write
        path = s.out / name
        path.write_bytes(path.read_bytes()[:-25])
    server.reset_counts()
    policies: list = []
    run(s, server, policies)
    assert policies[0].generated == 4  # the torn sample's prompt again (its other samples are kept)
    assert (s.out / "pairs.jsonl").read_bytes() == pairs and not server.repeated()
    assert server.requests_total == 0  # the judge's cache had the torn judgment


def test_shards_cover_the_prompts_once(tmp_path, judge_server):
    server = judge_server(careful_judge)
    whole = run(settings(tmp_path / "whole", server, prompts=write_prompts(tmp_path / "p.jsonl", 5)), server)
    ids = set()
    for i in range(2):
        s = settings(tmp_path, server, prompts=tmp_path / "p.jsonl", shard=(i, 2))
        part = run(s, server)
        assert s.run_dir() == s.out / f"shard-{i}-of-2"
        ids |= {p["provenance"]["prompt_id"] for p in read_jsonl(s.run_dir() / "pairs.jsonl")}
        assert part["prompts"] == (3 if i == 0 else 2)
    assert ids == {f"q{i}" for i in range(5)} and whole["prompts"] == 5


def test_other_settings_on_the_same_out_are_refused(tmp_path, judge_server):
    server = judge_server(careful_judge)
    run(settings(tmp_path, server), server)
    with pytest.raises(DistillError, match=r"written by a run with n=4, this run has n=2"):
        run(settings(tmp_path, server, sampling=SamplingSettings(n=2, temperature=0.7, seed=7)), server)


def test_rules_alone_judge_outcomes_without_an_endpoint(tmp_path):
    """--outcome-judge rules with no judge endpoint: outcomes from the rule verifier, no request, outcome pairs only
    (no process judgment: step-corrective pairs are counted as skipped), and text references not_checkable."""
    from megafin.distill.rule_judge import MODEL_NAME, RuleJudge

    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    with prompts.open("a") as f:
        f.write(json.dumps({"id": "t", "question": "Q: compute 11 in words?", "answer": "eleven"}) + "\n")
    s = DistillSettings(prompts=prompts, out=tmp_path / "out", policy="known-policy", judge_model=MODEL_NAME,
                        judge_template=MODEL_NAME, source="jsonl", allow_overlap=True, progress=False,
                        outcome_judge="rules",
                        sampling=SamplingSettings(n=4, temperature=0.7, max_new_tokens=32, seed=7, batch_size=4))
    stats = run_distill(s, KnownPolicy, lambda rows: RuleJudge({r.id: r.answer for r in rows}))
    assert stats["judged"] == 16 == stats["kept"] + sum(stats["discarded"].values())
    assert stats["discarded"]["not_checkable"] == 4 and stats["kept"] == 12
    pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert pairs and {p["kind"] for p in pairs} == {"fap"}
    assert all((p["chosen_reward"], p["rejected_reward"]) == (1.0, 0.0) for p in pairs)
    assert all("Final answer: 1" in p["chosen"] and p["chosen"] != p["rejected"] for p in pairs)


def test_cli_needs_a_judge_unless_rules_decide(tmp_path, capsys):
    from megafin.cli import main

    args = ["distill", "--prompts", str(write_prompts(tmp_path / "p.jsonl", 2)), "--out", str(tmp_path / "o"),
            "--model", str(tmp_path / "none"), "--source", "jsonl", "--allow-overlap", "--no-progress"]
    assert main(args) == 2
    assert "--outcome-judge rules" in capsys.readouterr().err
    assert main([*args, "--judge-model", "j"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main([*args, "--outcome-judge", "rules"]) == 2  # on to the policy: a missing model is its own line
    assert "--model" in capsys.readouterr().err
