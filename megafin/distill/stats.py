"""stats.json and the final table of `megafin distill`.

Counts are over everything on disk for this shard (so a resumed run reports the whole job), except `judge`, which
is this run's traffic (requests, cache hits, requests/s). They add up: judged = kept + sum(discarded), samples =
judged + not_judged."""
from __future__ import annotations

from collections import Counter
from typing import Any

from megafin.distill.judge.api import DISCARD_REASONS
from megafin.distill.pairs import PairReport
from megafin.distill.prompts import PromptRow
from megafin.distill.sampling import SamplingSummary


def collect_stats(settings: Any, prompts: list[PromptRow], overlap: dict, samples: dict[str, dict],
                  judgments: dict[str, dict], sampling: SamplingSummary, judging: dict, report: PairReport) -> dict:
    mine = [judgments[k] for k in samples if k in judgments]
    kept = sum(1 for j in mine if j.get("kept"))
    discarded = Counter({reason: 0 for reason in DISCARD_REASONS})
    discarded.update(str(j.get("discard_reason")) for j in mine if not j.get("kept"))
    judge = judging.get("judge") or {}
    elapsed = float(judge.get("elapsed_s") or 0.0)
    requests = int(judge.get("requests") or 0)
    agreement = report.agreement()
    return {
        "prompts": len(prompts),
        "overlap": overlap,
        "samples": len(samples),
        "judged": len(mine),
        "not_judged": len(samples) - len(mine),
        "kept": kept,
        "discarded": dict(discarded),
        "outcome": {"correct": report.correct, "wrong": report.wrong, "label_from": dict(report.outcome_from),
                    "outcome_judge": settings.outcome_judge},
        "rule_verifier": {"checked": report.rules_checked, "agree": report.rules_agree,
                          "agreement": None if agreement is None else round(agreement, 4)},
        "pairs": {kind: report.pairs.get(kind, 0) for kind in settings.pair_kinds},
        "pair_skips": dict(sorted(report.skipped.items())),
        "sampling": {"generated": sampling.generated, "already_done": sampling.already_done,
                     "completion_tokens": sampling.completion_tokens, "seconds": round(sampling.seconds, 3)},
        "judge": {"model": settings.judge_model, "template": settings.judge_template,
                  "this_run": judging.get("to_judge", 0), "requests": requests,
                  "cache_hits": int(judge.get("cache_hits") or 0), "retries": int(judge.get("retries") or 0),
                  "elapsed_s": round(elapsed, 3),
                  "requests_per_s": round(requests / elapsed, 3) if elapsed > 0 else None},
    }


def table(stats: dict) -> str:
    """The final table: one `name  value` line per count."""
    discarded = stats["discarded"]
    rows = [("prompts", stats["prompts"]), ("samples", stats["samples"]),
            ("judged", f"{stats['judged']} (not judged: {stats['not_judged']})"),
            ("kept", stats["kept"]),
            ("discarded", f"{sum(discarded.values())}" + (" (" + ", ".join(
                f"{k} {v}" for k, v in discarded.items() if v) + ")" if any(discarded.values()) else "")),
            ("correct / wrong", f"{stats['outcome']['correct']} / {stats['outcome']['wrong']} "
                                f"(labels: {stats['outcome']['outcome_judge']})")]
    rv = stats["rule_verifier"]
    rows.append(("rules vs judge", "n/a (no answer the rules can check)" if rv["agreement"] is None else
                 f"{rv['agreement']:.1%} agree ({rv['agree']}/{rv['checked']})"))
    rows += [(f"pairs {kind}", n) for kind, n in stats["pairs"].items()]
    if stats["pair_skips"]:
        rows.append(("pairs not made", ", ".join(f"{k} {v}" for k, v in stats["pair_skips"].items())))
    j = stats["judge"]
    rate = "n/a" if j["requests_per_s"] is None else f"{j['requests_per_s']:.2f}"
    rows += [("judge requests", f"{j['requests']} this run ({rate}/s), {j['cache_hits']} cache hits, "
                                f"{j['retries']} retries")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
