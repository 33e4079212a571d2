"""`megafin train | ...`: parse, validate (before any process group), dispatch."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

from megafin.config import ConfigError, load_config, validate
from megafin.config.validate import world_size_from_env
from megafin.runtime.exit_codes import EXIT_CONFIG_ERROR
from megafin.runtime.stop_request import STOP_REQUEST


def quiet_third_party() -> None:
    # Expected on CPU and on GPU nodes without Apex/TE; megafin logs its own backend choice.
    for pattern in (".*Apex is not installed.*", ".*Transformer Engine and Apex are not installed.*",
                    ".*full scope is deprecated.*", ".*Please use DTensor instead.*",
                    ".*`load_state_dict` is deprecated.*"):
        warnings.filterwarnings("ignore", message=pattern)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _launch_rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def _train(args: argparse.Namespace) -> int:
    STOP_REQUEST.install()  # before the heavy imports: a SIGTERM/SIGUSR1 during start-up stops at the first step
    try:
        cfg = load_config(args.recipe, args.overrides)
        validate(cfg, world_size_from_env())
    except ConfigError as err:
        if _launch_rank() == 0:  # every rank fails the same way; one line per problem in the log is enough
            for line in err.lines:
                print(f"megafin: config error: {line}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    from megafin.runtime.distributed import detect_launch_env
    from megafin.train.loop import run_training

    return run_training(cfg, detect_launch_env())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megafin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a stage from a YAML recipe (single process, torchrun or srun)")
    train.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny/cpt.yaml")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. parallel.tp=2 train.steps=10")
    train.set_defaults(func=_train)
    from megafin.convert.cli import add_arguments as _convert_arguments, run as _convert

    convert = sub.add_parser("convert", help="checkpoint conversion: from-hf | to-hf")
    _convert_arguments(convert)
    convert.set_defaults(func=_convert)
    from data_prep.cli import add_commands as _prep_commands, run as _prep

    prep = sub.add_parser("prep", help="data preparation, the same commands as `python -m data_prep`: "
                                       "tokenizer train | pretrain | sft | preference | mix")
    _prep_commands(prep)
    prep.set_defaults(func=_prep)
    from megafin.generate.cli import add_commands as _generate_commands

    _generate_commands(sub)  # generate | serve
    from megafin.distill.cli import add_command as _distill_command

    _distill_command(sub)  # distill
    from megafin.plan.cli import add_command as _plan_command

    _plan_command(sub)  # plan
    from megafin.pipeline.cli import add_arguments as _pipeline_arguments

    pipeline = sub.add_parser("pipeline", help="FinDAP's stages from raw corpora to an evaluated HF model, stamped, "
                                               "resumable, locally or as dependent Slurm jobs")
    _pipeline_arguments(pipeline)
    from megafin.eval.tasks.registry import TASKS, task_names

    evaluate = sub.add_parser("eval", help="evaluate a model on the financial tasks")
    tasks = evaluate.add_subparsers(dest="kind", required=True)
    classification = task_names("classification")
    cls = tasks.add_parser("classification", help=f"greedy answer vs gold label "
                                                  f"({', '.join(TASKS[t].title for t in classification)})")
    cls.add_argument("--ckpt", required=True, help="a megafin checkpoint directory (RUN/checkpoints/step_N)")
    cls.add_argument("--task", required=True, choices=classification)
    cls.add_argument("--data", required=True, help="the task's JSONL (schemas: ../shared/data/SOURCES.md)")
    cls.add_argument("--limit", type=int, default=None, help="first N examples only")
    cls.add_argument("--out", default=None, help="also write the result as JSON here")
    cls.set_defaults(func=_eval_classification)
    from megafin.eval.cli import add_commands as _eval_commands

    _eval_commands(tasks)  # run | compare | contamination | lm-eval-path
    return parser


def _eval_classification(args: argparse.Namespace) -> int:
    from megafin.eval.classification import main as run

    return run(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    quiet_third_party()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
