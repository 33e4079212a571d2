"""`megafin convert from-hf|to-hf`: argument parsing and exit codes (0 ok, 2 bad input: one line on stderr)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from megafin.convert.errors import EXIT_CONVERT_ERROR, ConvertError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", required=True)
    f = sub.add_parser("from-hf", help="Hugging Face safetensors -> megafin training checkpoint")
    f.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors)")
    f.add_argument("--out", required=True, help="checkpoint directory to create (use with train.init_from=...)")
    f.add_argument("--tp", type=int, default=1, help="tensor parallel size the checkpoint is meant for (validated)")
    f.add_argument("--pp", type=int, default=1, help="pipeline parallel size the checkpoint is meant for (validated)")
    f.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="parameter dtype of the checkpoint")
    f.add_argument("--force", action="store_true", help="replace --out if it exists")
    f.add_argument("--allow-nonfinite", action="store_true",
                   help="convert tensors holding NaN/inf values (refused by default, naming the tensor)")
    t = sub.add_parser("to-hf", help="megafin checkpoint (any TP/PP) -> Hugging Face directory "
                       "(LlamaForCausalLM or Qwen2ForCausalLM, by model.family)")
    t.add_argument("--ckpt", required=True, help="checkpoint directory (RUN_DIR/checkpoints/step_N)")
    t.add_argument("--out", required=True, help="HF directory to create")
    t.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="dtype of the exported tensors (default: the HF source's, else the checkpoint's)")
    t.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB, 2GiB")
    t.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's data.tokenizer)")
    t.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from megafin.convert.convert import from_hf, to_hf

    start = time.perf_counter()
    try:
        if args.direction == "from-hf":
            out = from_hf(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, force=args.force,
                          allow_nonfinite=args.allow_nonfinite)
        else:
            out = to_hf(args.ckpt, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                        tokenizer=args.tokenizer, force=args.force)
    except ConvertError as err:
        print(f"megafin convert: error: {err}", file=sys.stderr, flush=True)
        return EXIT_CONVERT_ERROR
    print(f"megafin convert: wrote {out} in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="megafin convert", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
