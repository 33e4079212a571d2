"""The `megafin eval run | compare | contamination | lm-eval-path` subcommands (added to the `eval` block of
megafin/cli.py). Bad input is one line naming the file/line at fault, exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_BAD_INPUT = 2


def add_commands(tasks: Any) -> None:
    from megafin.generate.engines import engine_names

    run = tasks.add_parser("run", help="the evaluation suite on one model: OUT/results.json, report.md, report.png")
    run.add_argument("--model", required=True, help="a megafin checkpoint, an HF model directory, or "
                                                    "openai:MODEL@BASE_URL (a model behind an OpenAI-compatible API)")
    run.add_argument("--tasks", default="all", help="'all' or a comma list (fpb,fiqa_sa,...,financebench)")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="task files in the layout of ../shared/data; without it: the Salesforce/FinEval hub "
                          "dataset (query/answer rows, FinEval's exact match)")
    run.add_argument("--fineval", default=None, help="where the FinEval dataset is without --data-dir: a hub name "
                                                     "(default Salesforce/FinEval) or a local datasets directory")
    run.add_argument("--out", type=Path, required=True, help="the report directory")
    run.add_argument("--engine", default="auto", choices=engine_names(),
                     help="generation engine (auto: megafin for a checkpoint, vLLM on a GPU for an HF dir, else hf)")
    run.add_argument("--batch-size", type=int, default=None, help="prompts decoded together (megafin, hf) or "
                                                                  "concurrent requests (openai)")
    run.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    run.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint of the judge (FinanceBench)")
    run.add_argument("--judge-model", default=None, help="the judge's model name at that endpoint")
    run.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the 95%% interval")
    run.set_defaults(func=guarded(_run))

    compare = tasks.add_parser("compare", help="several eval run reports side by side (table + chart)")
    compare.add_argument("outs", nargs="+", type=Path, help="OUT directories of megafin eval run")
    compare.add_argument("--labels", default=None, help="comma list, one per OUT (default: the directory names)")
    compare.add_argument("--out", type=Path, default=None, help="write compare.md and compare.png here "
                                                                "(default: the first OUT's parent / compare)")
    compare.set_defaults(func=guarded(_compare))

    cont = tasks.add_parser("contamination", help="share of evaluation examples with an n-gram in the training data")
    cont.add_argument("--train", nargs="+", required=True, help="JSONL files/directories or data_prep outputs")
    cont.add_argument("--data-dir", type=Path, required=True, help="the evaluation task files")
    cont.add_argument("--tasks", default="all")
    cont.add_argument("--n", type=int, default=10, help="n-gram length in words (FinDAP: 10)")
    cont.add_argument("--tokenizer", default=None, help="to decode data_prep outputs that do not name theirs")
    cont.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    cont.set_defaults(func=guarded(_contamination))

    path = tasks.add_parser("lm-eval-path", help="print the --include_path of megafin's lm-eval task YAMLs")
    path.set_defaults(func=_lm_eval_path)


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """EvalError and the generation/checkpoint errors a model brings: one line on stderr, exit 2."""
    def run(args: argparse.Namespace) -> int:
        from megafin.checkpoint.errors import CheckpointError
        from megafin.convert.errors import ConvertError
        from megafin.eval.errors import EvalError
        from megafin.generate.api import GenerationError

        try:
            return command(args)
        except (EvalError, GenerationError, ConvertError, CheckpointError) as err:
            print(f"megafin eval: error: {err}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT

    return run


def _run(args: argparse.Namespace) -> int:
    from megafin.eval.report import markdown_table
    from megafin.eval.run import run

    results = run(args.model, args.tasks, args.out, data_dir=args.data_dir, engine=args.engine, limit=args.limit,
                  judge_base_url=args.judge_base_url, judge_model=args.judge_model, fineval_source=args.fineval,
                  batch_size=args.batch_size, resamples=args.bootstrap)
    print(markdown_table(results))
    print(f"megafin eval: report in {args.out} (results.json, report.md, report.png)", flush=True)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from megafin.eval.compare import write_compare

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    out = args.out or args.outs[0].resolve().parent / "compare"
    print(write_compare(args.outs, out, labels))
    print(f"megafin eval: compare.md and compare.png in {out}", flush=True)
    return 0


def _contamination(args: argparse.Namespace) -> int:
    from megafin.checkpoint.atomic import write_text_atomic
    from megafin.eval.contamination import contamination, table

    result = contamination(args.train, args.data_dir, args.n, args.tasks, args.tokenizer)
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return 0


def _lm_eval_path(args: argparse.Namespace) -> int:
    from megafin.eval.lm_eval_tasks import include_path

    print(include_path())
    return 0
