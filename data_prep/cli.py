"""`python -m data_prep {tokenizer train | pretrain | merge | sft | preference | mix}`: parse, dispatch, one-line errors.

`megafin prep ...` is the same commands: megafin's CLI adds them to its `prep` parser with `add_commands` and runs
them with `run`, so both share this one definition.
"""
from __future__ import annotations

import argparse
import sys

from data_prep.sources import DEFAULT_MAX_DOC_BYTES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="HF tokenizer directory (megafin's or e.g. Llama-3's)")
    p.add_argument("--output-prefix", required=True, help="output path prefix (directories are created)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, at most one per available core (output is identical for any N)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input item instead of skipping it")
    p.add_argument("--max-doc-bytes", type=int, default=DEFAULT_MAX_DOC_BYTES,
                   help="skip items larger than this (default %(default)s)")
    p.add_argument("--encoder", choices=["auto", "hf", "tiktoken"], default="auto",
                   help="auto: verified tiktoken fast path when ids are identical, else HF tokenizers")
    p.add_argument("--allow-empty", action="store_true",
                   help="write a valid dataset of nothing when no input item is usable (default: exit 2)")
    p.add_argument("--quiet", action="store_true")


def _packed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-length", type=int, required=True, help="pack length in tokens")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--chat-template", default=None, help="file with a Jinja chat template (overrides the tokenizer's)")


def add_commands(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add data_prep's subcommands (tokenizer, pretrain, merge, sft, preference, mix) to `ap`; `run` dispatches them."""
    sub = ap.add_subparsers(dest="cmd", required=True)

    tk = sub.add_parser("tokenizer", help="tokenizer utilities")
    tks = tk.add_subparsers(dest="tok_cmd", required=True)
    tr = tks.add_parser("train", help="train a byte-level BPE (Llama-3 layout) and save an HF tokenizer dir")
    tr.add_argument("--input", required=True, help="JSONL/JSONL.gz/parquet/datasets dir")
    tr.add_argument("--text-key", default="text")
    tr.add_argument("--vocab-size", type=int, required=True, help="final vocabulary size incl. special tokens")
    tr.add_argument("--min-frequency", type=int, default=2)
    tr.add_argument("--max-chars", type=int, default=200_000_000, help="train on at most this many characters")
    tr.add_argument("--out", required=True, help="output directory")

    pt = sub.add_parser("pretrain", help="text corpus -> PREFIX_text_document.bin/.idx + PREFIX_stats.json")
    pt.add_argument("--input", required=True, nargs="+", help="JSONL, JSONL.gz, parquet, datasets dir, or hub:NAME")
    pt.add_argument("--text-key", default="text")
    pt.add_argument("--dedup", action="store_true", help="drop exact duplicate documents (with --shard: across shards at `merge`)")
    pt.add_argument("--bos", choices=["auto", "always", "never"], default="never",
                    help="never (default): text + EOD, as Megatron-LM's tool; auto: prepend what the tokenizer "
                         "adds to plain text (BOS for Llama-3); always")
    pt.add_argument("--shard", default=None, metavar="I/N",
                    help="tokenize only shard I of N (by input file and line ranges) into PREFIX_shardI-of-N; "
                         "`merge` joins the N shards into exactly the output of one run")
    _common(pt)

    mg = sub.add_parser("merge", help="join the shards of `pretrain --shard` into one dataset identical to one run")
    mg.add_argument("--inputs", required=True, nargs="+",
                    help="the shards' output prefixes (PREFIX_shardI-of-N, or any of their files), or PREFIX "
                         "for every PREFIX_shard*-of-* beside it")
    mg.add_argument("--output-prefix", required=True, help="output path prefix (as pretrain's)")
    mg.add_argument("--allow-empty", action="store_true",
                    help="write a valid dataset of nothing when the shards hold no document (default: exit 2)")
    mg.add_argument("--quiet", action="store_true")

    sf = sub.add_parser("sft", help="instruction data -> packed tokens + loss mask + doc lens")
    sf.add_argument("--input", required=True, nargs="+")
    sf.add_argument("--on-overflow", choices=["drop", "truncate"], default="drop",
                    help="examples longer than --seq-length: drop (default) or keep the first seq-length tokens")
    _common(sf)
    _packed(sf)

    pf = sub.add_parser("preference", help="prompt/chosen/rejected -> packed pairs (2k chosen, 2k+1 rejected)")
    pf.add_argument("--input", required=True, nargs="+")
    _common(pf)
    _packed(pf)

    mx = sub.add_parser("mix", help="FinDAP CPT+IT: CPT docs (all targets) + instructions (prompt masked), packed")
    mx.add_argument("--cpt", required=True, nargs="+", help="CPT text inputs")
    mx.add_argument("--it", required=True, nargs="+", help="instruction inputs (same formats as sft)")
    mx.add_argument("--text-key", default="text")
    mx.add_argument("--cpt-ratio", type=float, default=0.5,
                    help="share of CPT documents by example count; the larger side is downsampled (default 0.5)")
    _common(mx)
    _packed(mx)
    return ap


def build_parser() -> argparse.ArgumentParser:
    return add_commands(argparse.ArgumentParser(prog="python -m data_prep", description=__doc__))


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; a bad input, output or setting is one line on stderr and exit 2."""
    from data_prep.outputs import OutputError
    from data_prep.parallel import WorkerDied
    from data_prep.stats import BadInputError

    try:
        if args.cmd == "tokenizer":
            import time

            from data_prep.tokenizer import train_tokenizer_from_file

            t = time.perf_counter()
            out = train_tokenizer_from_file(args.input, args.vocab_size, args.out, args.text_key,
                                            args.max_chars, args.min_frequency)
            print(f"data_prep tokenizer: vocab {args.vocab_size} -> {out} ({time.perf_counter() - t:.2f}s)",
                  file=sys.stderr)
        elif args.cmd == "pretrain":
            from data_prep.pretrain import pretrain

            pretrain(args.input, args.tokenizer, args.output_prefix, text_key=args.text_key, workers=args.workers,
                     dedup=args.dedup, strict=args.strict, max_doc_bytes=args.max_doc_bytes, encoder=args.encoder,
                     bos=args.bos, quiet=args.quiet, allow_empty=args.allow_empty, shard=args.shard)
        elif args.cmd == "merge":
            from data_prep.merge import merge

            merge(args.inputs, args.output_prefix, allow_empty=args.allow_empty, quiet=args.quiet)
        else:
            from data_prep import packed_writer

            common = dict(tokenizer=args.tokenizer, output_prefix=args.output_prefix, seq_length=args.seq_length,
                          workers=args.workers, strict=args.strict, max_doc_bytes=args.max_doc_bytes,
                          seed=args.seed, chat_template=args.chat_template, encoder=args.encoder, quiet=args.quiet,
                          allow_empty=args.allow_empty)
            if args.cmd == "sft":
                packed_writer.sft(args.input, on_overflow=args.on_overflow, **common)
            elif args.cmd == "preference":
                packed_writer.preference(args.input, **common)
            else:
                packed_writer.mix(args.cpt, args.it, cpt_ratio=args.cpt_ratio, text_key=args.text_key, **common)
    except (BadInputError, OutputError, FileNotFoundError, ValueError) as e:
        print(f"data_prep {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's side (disk full, permissions changed mid-run): one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"data_prep {args.cmd}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except WorkerDied as e:  # not the input's fault: exit 1
        print(f"data_prep {args.cmd}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
