"""`megafin plan RECIPE [key=value ...] --gpus N --gpu h100|h200|a100`: will it fit, how fast, which layout."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megafin.runtime.exit_codes import EXIT_CONFIG_ERROR

# Default efficiency (fraction of the dense bf16 peak, megafin's FLOPs count) by dtype. Published runs imply about
# 0.34-0.39 for bf16 (torchtitan, Llama-3.1-8B) and 0.50-0.85 for FP8 (torchtitan; Megatron-Bridge): see
# megafin/plan/published.py.
DEFAULT_EFFICIENCY = {"fp32": 0.40, "bf16": 0.40, "fp8": 0.55}


class PlanError(ValueError):
    """Bad input to `megafin plan`: one line."""


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="per-GPU memory, fit, step time and the layouts that fit, before submitting")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/llama3_8b/cpt_it_group1.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for megafin train")
    p.add_argument("--gpus", required=True, help="number of GPUs (the world size)")
    p.add_argument("--gpu", default="h100", help="h100 | h200 | a100")
    p.add_argument("--mfu", default=None, help="efficiency to assume, a fraction of the dense bf16 peak "
                                               "(default 0.40 for bf16, 0.55 for fp8)")
    p.add_argument("--no-te", action="store_true", help="the GPUs lack Transformer Engine: no sequence parallelism, "
                   "no fp8, torch's AdamW instead of FusedAdam, and megafin's all-gather context parallelism")
    p.add_argument("--top", default="10", help="how many fitting layouts to list")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PlanError(f"{name}: expected a positive integer, got {text!r}") from None
    if value < 1:
        raise PlanError(f"{name}: expected a positive integer, got {text!r}")
    return value


def workload(args: argparse.Namespace):
    """The recipe, as written (auto left for the GPU), and what it asks of the GPUs; ConfigError/PlanError."""
    from megafin.config import validate
    from megafin.config.load import read_config
    from megafin.plan.estimate import Workload
    from megafin.plan.gpus import GPUS

    gpus = _positive_int("--gpus", args.gpus)
    if args.gpu not in GPUS:
        raise PlanError(f"--gpu: expected one of {', '.join(GPUS)}, got {args.gpu!r}")
    gpu = GPUS[args.gpu]
    cfg = read_config(args.recipe, args.overrides)
    dtype = cfg.precision.dtype
    if dtype == "fp8" and (gpu.fp8_tflops is None or args.no_te):
        raise PlanError(f"precision.dtype: fp8 needs Hopper or newer GPUs with Transformer Engine, got --gpu "
                        f"{args.gpu}{' --no-te' if args.no_te else ''}")
    # The recipe's own checks, for the cluster (not this machine's files); the layout is the planner's to judge.
    from megafin.config import ConfigError

    try:
        validate(cfg, gpus, on_this_machine=False)
    except ConfigError as err:
        kept = [line for line in err.lines if not line.startswith("parallel.")]
        if kept:
            raise ConfigError(*kept) from None
    efficiency = DEFAULT_EFFICIENCY.get(dtype, 0.40)
    if args.mfu is not None:
        try:
            efficiency = float(args.mfu)
        except ValueError:
            efficiency = -1.0
        if not 0 < efficiency <= 1:
            raise PlanError(f"--mfu: expected a fraction in (0, 1], got {args.mfu!r}")
    return Workload(cfg=cfg, vocab_size=_vocab_size(cfg), gpus=gpus, gpu=gpu, efficiency=efficiency,
                    te=not args.no_te)


def _vocab_size(cfg) -> int:
    if cfg.model.vocab_size > 0:
        return cfg.model.vocab_size
    tok = cfg.data.tokenizer
    if tok and (Path(tok, "tokenizer.json").is_file() or Path(tok, "tokenizer_config.json").is_file()):
        from megafin.data.tokenizer import HFTokenizerAdapter

        return HFTokenizerAdapter(tok).vocab_size
    raise PlanError(f"model.vocab_size: expected the vocabulary size (0 takes it from data.tokenizer, and "
                    f"{tok or '(empty)'} is not a tokenizer directory here); add model.vocab_size=N")


def run(args: argparse.Namespace) -> int:
    from megafin.config import ConfigError
    from megafin.plan.estimate import estimate
    from megafin.plan.layouts import layout_problem, plan_layouts, recipe_layout
    from megafin.plan.report import as_json, table

    try:
        w = workload(args)
        top = _positive_int("--top", args.top)
    except PlanError as err:
        print(f"megafin plan: error: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    except ConfigError as err:
        for line in err.lines:
            print(f"megafin plan: config error: {line}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    own_layout = recipe_layout(w.cfg)
    own_problem = layout_problem(w, own_layout)
    own = None if own_problem else estimate(w, own_layout)
    ranked = plan_layouts(w)
    print(as_json(w, args.recipe, own, own_problem, ranked) if args.json
          else table(w, args.recipe, own, own_problem, ranked, top), flush=True)
    return 0
