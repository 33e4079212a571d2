"""`megafin distill` killed mid-judging (SIGKILL, a real process) and rerun: the same pairs file as an uninterrupted
run, and no judge request repeated except those in flight at the kill (counted at the scripted judge server)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.distill_fixtures import careful_judge, solution, write_prompts
from tests.generate.serve_fixtures import REPO, megafin_env
from tests.judge_fixture_server import judge_server  # noqa: F401  (a fixture)

PROMPTS, N, CONCURRENCY = 10, 4, 2


def write_samples(out: Path) -> None:
    """The policy's samples, as a finished sampling step leaves them: the run goes straight to judging."""
    out.mkdir(parents=True)
    rows = [{"id": f"q{i}#{k}", "prompt_id": f"q{i}", "index": k, "text": solution(10 + i, k),
             "finish_reason": "stop", "completion_tokens": 20, "temperature": 1.0, "top_p": 0.95, "top_k": 0,
             "seed": 1, "policy": "known-policy"} for i in range(PROMPTS) for k in range(N)]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def distill_args(prompts: Path, out: Path, server) -> list[str]:
    return ["distill", "--prompts", str(prompts), "--source", "jsonl", "--out", str(out), "--model", "known-policy",
            "--n", str(N), "--temperature", "1.0", "--seed", "1", "--allow-overlap", "--no-progress",
            "--judge-base-url", server.base_url, "--judge-model", server.model, "--concurrency", str(CONCURRENCY),
            "--judge-timeout", "30"]


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_bytes().decode().split("\n")[:-1] if x.strip()]


def test_kill_mid_judging_then_rerun(tmp_path, judge_server, capsys):
    from megafin.cli import main

    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    judged_texts: dict[str, str] = {}  # prompt hash -> the solution it judged

    def respond(request):
        judged_texts[request.prompt_hash] = request.prompt
        return careful_judge(request)

    reference = judge_server(careful_judge)
    write_samples(tmp_path / "reference")
    assert main(distill_args(prompts, tmp_path / "reference", reference)) == 0
    assert reference.requests_total == PROMPTS * N

    server = judge_server(respond, latency_s=0.1)
    out = tmp_path / "killed"
    write_samples(out)
    proc = subprocess.Popen([sys.executable, "-m", "megafin", *distill_args(prompts, out, server)], cwd=REPO,
                            env=megafin_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(lines(out / "judgments.jsonl")) < 8:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no judgments written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    recorded = {j["key"] for j in lines(out / "judgments.jsonl")}
    assert 8 <= len(recorded) < PROMPTS * N, "killed after judging finished: nothing to resume"
    before = server.requests_total

    assert main(distill_args(prompts, out, server)) == 0
    capsys.readouterr()
    assert (out / "pairs.jsonl").read_bytes() == (tmp_path / "reference" / "pairs.jsonl").read_bytes()
    # Every sample judged once, but for the requests in flight when the process died (at most --concurrency).
    repeated = server.repeated()
    assert len(repeated) <= CONCURRENCY and server.requests_total == PROMPTS * N + sum(n - 1 for n in
                                                                                         repeated.values())
    samples = {s["text"]: s["id"] for s in lines(out / "samples.jsonl")}
    for digest in repeated:  # ... and none of those had a judgment on disk
        assert not any(text in judged_texts[digest] and key in recorded for text, key in samples.items())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["judged"] == stats["kept"] == PROMPTS * N and stats["judge"]["requests"] == \
        server.requests_total - before
    assert stats["pairs"] == {"fap": PROMPTS * 4, "scp": PROMPTS * 2}
