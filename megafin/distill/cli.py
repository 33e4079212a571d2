"""`megafin distill`: argument parsing, the policy engine and judge client it opens, exit codes (0 done; 2 bad input
or setting, one line on stderr). The work itself is pipeline.py."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from megafin.runtime.exit_codes import EXIT_CONFIG_ERROR


def add_command(sub: Any) -> None:
    from megafin.distill.pairs import PAIR_KINDS
    from megafin.distill.prompts import source_names
    from megafin.distill.sampling import DEFAULT_TEMPLATE

    p = sub.add_parser("distill", help="preference pairs from a policy's samples judged by an LLM judge (FinDAP "
                                       "stage 2): prompts -> samples -> judgments -> FAP/SCP pairs (resumable)")
    io = p.add_argument_group("prompts and outputs")
    io.add_argument("--prompts", required=True, help="JSONL of questions with reference answers (TAT-QA dev, "
                                                     "FinanceMath validation, or any JSONL with --*-field)")
    io.add_argument("--source", default="auto", choices=source_names(),
                    help="the prompts' converter (default: recognised from the first row)")
    io.add_argument("--question-field", default="question", help="--source jsonl: the question's field")
    io.add_argument("--reference-field", default="answer", help="--source jsonl: the reference answer's field")
    io.add_argument("--context-field", default=None, help="--source jsonl: a field with the question's material")
    io.add_argument("--id-field", default="id", help="--source jsonl: the row id's field (else the line number)")
    io.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    io.add_argument("--out", required=True, help="output directory (a rerun with the same settings resumes)")
    io.add_argument("--shard", default=None, help="i/N: only the prompts whose index %% N == i, written to "
                                                  "OUT/shard-i-of-N (Slurm arrays)")
    io.add_argument("--eval-data-dir", default=None, help="the evaluation sets the prompts must not overlap "
                                                          "(default: ../shared/data beside the checkout)")
    io.add_argument("--allow-overlap", action="store_true", help="go on although prompts are evaluation questions")
    io.add_argument("--drop-overlap", action="store_true", help="leave out the prompts that are evaluation "
                                                               "questions (counted in stats.json) instead of refusing")
    io.add_argument("--eval-tasks", default="all", help="the evaluation tasks (megafin eval run names) the prompts "
                                                        "are checked against, of those whose files are in "
                                                        "--eval-data-dir (default: all)")
    io.add_argument("--overlap-n", type=int, default=10, help="word n-grams of the overlap check (default 10, as "
                                                              "FinDAP reports it)")
    io.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")

    pol = p.add_argument_group("policy sampling")
    pol.add_argument("--model", required=True, help="the policy: a megafin checkpoint, an HF directory, or a model "
                                                    "name at --base-url")
    pol.add_argument("--engine", default="auto", help="auto | megafin | hf | vllm | openai")
    pol.add_argument("--base-url", default=None, help="the policy's OpenAI-compatible endpoint (engine openai)")
    pol.add_argument("--api-key-env", default=None, help="environment variable with the policy endpoint's key")
    pol.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    pol.add_argument("--policy-concurrency", type=int, default=8, help="engine openai: requests in flight")
    pol.add_argument("--policy-timeout", type=float, default=300.0, help="engine openai: seconds per request")
    pol.add_argument("--prompt-template", default=str(DEFAULT_TEMPLATE),
                     help="zero-shot chain-of-thought template with {question} and {context} (default: %(default)s)")
    pol.add_argument("--n", type=int, default=4, help="samples per prompt")
    pol.add_argument("--temperature", type=float, default=0.8)
    pol.add_argument("--top-p", type=float, default=0.95)
    pol.add_argument("--top-k", type=int, default=0)
    pol.add_argument("--max-new-tokens", type=int, default=1024)
    pol.add_argument("--seed", type=int, default=1234, help="each prompt's seed derives from it and the prompt id")
    pol.add_argument("--batch-size", type=int, default=16, help="prompts per engine call and per flushed write")

    jud = p.add_argument_group("judge")
    jud.add_argument("--judge-base-url", default=None, help="the judge's OpenAI-compatible endpoint, e.g. "
                                                            "http://127.0.0.1:8001/v1 (vllm serve, megafin serve); "
                                                            "none: --outcome-judge rules judges by rules alone "
                                                            "(outcome pairs only)")
    jud.add_argument("--judge-model", default=None, help="the judge's model name at that endpoint")
    jud.add_argument("--judge-template", default="outcome_process", help="a built-in template name or a file")
    jud.add_argument("--judge-api-key-env", default=None, help="environment variable with the judge's API key "
                                                               "(none for a local server)")
    jud.add_argument("--judge-cache", default=None, help="judgment cache directory (default: OUT/judge_cache)")
    jud.add_argument("--concurrency", type=int, default=32, help="judge requests in flight at once")
    jud.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge request")
    jud.add_argument("--judge-retries", type=int, default=3)
    jud.add_argument("--judge-max-tokens", type=int, default=1024)

    pairs = p.add_argument_group("pairs")
    pairs.add_argument("--outcome-judge", default="llm", choices=("llm", "rules"),
                       help="who labels a sample correct/wrong: the judge, or the rule verifier where it can "
                            "decide (numbers, option letters); its agreement with the judge is always reported")
    pairs.add_argument("--rule-rel-tol", type=float, default=1e-2, help="the rule verifier's relative tolerance")
    pairs.add_argument("--pair-kinds", default=",".join(PAIR_KINDS), help="comma-separated: fap, scp")
    pairs.add_argument("--max-pairs-per-prompt", type=int, default=4, help="cap per prompt and kind")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace):
    from megafin.distill.errors import DistillError
    from megafin.distill.pairs import PAIR_KINDS
    from megafin.distill.pipeline import DistillSettings
    from megafin.distill.rule_judge import MODEL_NAME as RULES_JUDGE
    from megafin.distill.sampling import SamplingSettings
    from megafin.generate.api import GenerationError, SamplingParams
    from megafin.generate.jobs import parse_shard

    try:
        SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       top_k=args.top_k, n=args.n, seed=args.seed).check()
        shard = parse_shard(args.shard)
    except GenerationError as err:
        raise DistillError(str(err)) from None
    for flag, value in (("--batch-size", args.batch_size), ("--max-pairs-per-prompt", args.max_pairs_per_prompt),
                        ("--concurrency", args.concurrency), ("--policy-concurrency", args.policy_concurrency)):
        if value < 1:
            raise DistillError(f"{flag}: expected a positive integer, got {value}")
    if args.limit is not None and args.limit < 1:
        raise DistillError(f"--limit: expected a positive integer, got {args.limit}")
    if args.judge_timeout <= 0 or args.judge_retries < 0 or args.rule_rel_tol < 0:
        raise DistillError("--judge-timeout: expected > 0; --judge-retries and --rule-rel-tol: expected >= 0")
    if (args.judge_base_url is None) != (args.judge_model is None):
        raise DistillError("--judge-base-url and --judge-model go together (a judge needs both)")
    if args.judge_base_url is None and args.outcome_judge != "rules":
        raise DistillError("--judge-base-url: expected the LLM judge's endpoint, or --outcome-judge rules to judge "
                           "outcomes by rules alone (no step-corrective pairs then)")
    if args.overlap_n < 1:
        raise DistillError(f"--overlap-n: expected a positive integer, got {args.overlap_n}")
    kinds = tuple(k.strip() for k in args.pair_kinds.split(",") if k.strip())
    if not kinds or any(k not in PAIR_KINDS for k in kinds):
        raise DistillError(f"--pair-kinds: expected a comma-separated subset of {', '.join(PAIR_KINDS)}, "
                           f"got {args.pair_kinds!r}")
    fields = {"question": args.question_field, "reference": args.reference_field, "id": args.id_field}
    if args.context_field:
        fields["context"] = args.context_field
    return DistillSettings(
        prompts=Path(args.prompts), out=Path(args.out), policy=args.model,
        judge_model=args.judge_model or RULES_JUDGE,
        judge_template=args.judge_template if args.judge_model else RULES_JUDGE, source=args.source,
        fields=fields if args.source == "jsonl" else {}, limit=args.limit,
        eval_data_dir=Path(args.eval_data_dir) if args.eval_data_dir else None, allow_overlap=args.allow_overlap,
        drop_overlap=args.drop_overlap,
        eval_tasks=args.eval_tasks, overlap_n=args.overlap_n,
        prompt_template=Path(args.prompt_template),
        sampling=SamplingSettings(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                  max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size),
        outcome_judge=args.outcome_judge, rule_rel_tol=args.rule_rel_tol, pair_kinds=kinds,
        max_pairs_per_prompt=args.max_pairs_per_prompt, shard=shard, progress=not args.no_progress)


def open_policy(args: argparse.Namespace):
    """The policy engine, opened with the options `megafin generate` would give it."""
    from megafin.generate.cli import open_engine_for

    return open_engine_for(SimpleNamespace(
        model=args.model, engine=args.engine, tokenizer=args.tokenizer, base_url=args.base_url,
        api_key_env=args.api_key_env, concurrency=args.policy_concurrency, timeout=args.policy_timeout,
        batch_size=args.batch_size))


def open_judge(args: argparse.Namespace, run_dir: Path, prompts: list):
    """The LLM judge at --judge-base-url, or without one the rules-only judge (rule_judge.py)."""
    from megafin.distill.judge import JudgeClient

    if args.judge_base_url is None:
        from megafin.distill.rule_judge import RuleJudge

        return RuleJudge({row.id: row.answer for row in prompts}, args.rule_rel_tol)
    key = os.environ.get(args.judge_api_key_env, "") if args.judge_api_key_env else ""
    return JudgeClient(args.judge_base_url, args.judge_model, template=args.judge_template,
                       cache_dir=Path(args.judge_cache) if args.judge_cache else run_dir / "judge_cache",
                       concurrency=args.concurrency, timeout_s=args.judge_timeout, retries=args.judge_retries,
                       api_key=key or "EMPTY", max_tokens=args.judge_max_tokens)


def run(args: argparse.Namespace) -> int:
    from megafin.distill.errors import DistillError
    from megafin.distill.judge import JudgeError, TemplateError
    from megafin.distill.pipeline import run_distill
    from megafin.distill.stats import table
    from megafin.generate.api import GenerationError

    try:
        settings = _settings(args)
        if args.engine != "auto":
            from megafin.generate.engines import engine_class

            engine_class(args.engine)  # an unknown name fails before any work
        stats = run_distill(settings, lambda: open_policy(args), lambda prompts: open_judge(args, settings.run_dir(), prompts))
    except (DistillError, GenerationError, JudgeError, TemplateError) as err:
        print(f"megafin distill: error: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    print(table(stats), flush=True)
    print(f"megafin distill: {sum(stats['pairs'].values())} pairs in {settings.run_dir() / 'pairs.jsonl'}; "
          f"stats in {settings.run_dir() / 'stats.json'}", file=sys.stderr, flush=True)
    return 0
