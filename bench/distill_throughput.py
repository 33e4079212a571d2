"""Judge throughput: requests/s of megafin's JudgeClient against the scripted OpenAI-compatible judge
(tests/judge_fixture_server.py) answering every request after a fixed latency (default 200 ms), at concurrency 1
vs the default 32 (cache off), plus the default concurrency with the on-disk cache on (one fsync per judgment).

Judging is latency-bound (a real judge spends seconds per answer), so overlapping requests is the lever; the
target (issue 14) is >= 20x at 32 concurrent requests. Every answer is a full process judgment, so the parser and
the verbatim-quote check run on each. The serial run is shorter by default (--serial-items): its rate does not
depend on the count, only its duration does. The last line is the speed-up.

    python bench/distill_throughput.py [--items 128] [--serial-items 32] [--latency-ms 200] [--concurrency 32]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = ["Step 1: Revenue was {r} million.", "Step 2: Costs were {c} million.",
         "Step 3: Profit = {r} + {c} = {w} million.", "The answer is {w}."]


def items(n: int) -> list:
    from megafin.distill.judge import JudgeItem

    out = []
    for i in range(n):  # all distinct: nothing is deduplicated away
        r, c = 100 + i, 40 + i % 7
        out.append(JudgeItem(key=f"s{i}", question=f"What was segment {i}'s profit in millions?",
                             reference=str(r - c), solution="\n".join(s.format(r=r, c=c, w=r + c) for s in STEPS)))
    return out


def respond(request) -> str:
    """A wrong-solution process judgment quoting the solution's own lines (found in the prompt)."""
    lines = request.prompt.split("<<<SOLUTION\n", 1)[1].split("\nSOLUTION>>>", 1)[0].splitlines()
    return json.dumps({"final_answer": lines[3].split()[-1].rstrip("."), "correct": False, "score": 0.0,
                       "first_wrong_step": lines[2], "correct_prefix": "\n".join(lines[:2]),
                       "correction": "Step 3: Profit = revenue - costs."})


def run(server, todo: list, concurrency: int, cache_dir) -> tuple[float, dict]:
    from megafin.distill.judge import JudgeClient

    server.reset_counts()
    with JudgeClient(server.base_url, server.model, concurrency=concurrency, timeout_s=30.0,
                     cache_dir=cache_dir) as judge:
        start = time.perf_counter()
        judgments = judge.judge(todo)
        seconds = time.perf_counter() - start
        stats = judge.stats
    kept = sum(j.kept for j in judgments)
    if kept != len(todo) or server.requests_total != len(todo):
        raise SystemExit(f"bench invalid: {kept}/{len(todo)} kept, {server.requests_total} requests: {stats}")
    return seconds, {"max_in_flight": server.max_in_flight}


def main() -> int:
    from tests.judge_fixture_server import JudgeFixtureServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=128, help="items judged at the default concurrency")
    ap.add_argument("--serial-items", type=int, default=32, help="items judged at concurrency 1")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="the scripted judge's latency per request")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()

    rows = []
    with JudgeFixtureServer(respond, latency_s=args.latency_ms / 1000) as server, \
            tempfile.TemporaryDirectory() as tmp:
        for label, concurrency, n, cache in (("1", 1, args.serial_items, None),
                                             (str(args.concurrency), args.concurrency, args.items, None),
                                             (f"{args.concurrency} +cache", args.concurrency, args.items, tmp)):
            seconds, extra = run(server, items(n), concurrency, cache)
            rows.append((label, n, seconds, n / seconds, extra["max_in_flight"]))

    print(f"judge: scripted OpenAI-compatible server on 127.0.0.1, {args.latency_ms:g} ms per request; "
          f"JudgeClient (AsyncOpenAI), process judgments parsed and quote-checked")
    print(f"{'concurrency':<14} {'items':>6} {'seconds':>8} {'requests/s':>11} {'max in flight':>14}")
    for label, n, seconds, rate, in_flight in rows:
        print(f"{label:<14} {n:>6} {seconds:>8.2f} {rate:>11.1f} {in_flight:>14}")
    ideal = min(args.concurrency, args.items)
    print(f"speed-up at concurrency {args.concurrency} vs 1: {rows[1][3] / rows[0][3]:.1f}x "
          f"(target >= 20x; ideal {ideal}x; with the cache on: {rows[2][3] / rows[0][3]:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
