"""`megafin generate` (a JSONL of prompts -> a JSONL of samples) and `megafin serve` (an OpenAI-compatible HTTP
server): argument parsing, engine options, exit codes (0 ok, 2 bad input or setting: one line on stderr)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from megafin.generate.api import GenerationError, SamplingParams
from megafin.runtime.exit_codes import EXIT_CONFIG_ERROR


def add_commands(sub: Any) -> None:
    """The `generate` and `serve` subcommands of the megafin CLI."""
    gen = sub.add_parser("generate", help="sample answers for a JSONL of prompts (resumable, --shard i/N)")
    gen.add_argument("--model", required=True, help="a megafin checkpoint, an HF directory, or a model name at "
                                                   "--base-url")
    gen.add_argument("--engine", default="auto", help="auto | megafin | hf | vllm | openai (default: auto, from "
                                                      "--model and --base-url)")
    gen.add_argument("--input", required=True, help="JSONL: one row per prompt, with 'prompt' (text) or "
                                                    "'messages' (chat turns); other fields are kept")
    gen.add_argument("--output", required=True, help="JSONL to write (appended to: rows already there are "
                                                     "skipped, so a rerun resumes)")
    _sampling_arguments(gen)
    gen.add_argument("--shard", default=None, help="i/N: only the rows whose index %% N == i (Slurm arrays)")
    gen.add_argument("--batch-size", type=int, default=16, help="rows per engine call and per flushed write")
    gen.add_argument("--skip-bad", action="store_true", help="skip bad input rows (each named on stderr, counted) "
                                                            "instead of stopping with exit 2")
    _engine_arguments(gen)
    gen.set_defaults(func=run_generate)

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server over a model (/v1/models, "
                                         "/v1/chat/completions, /v1/completions)")
    serve.add_argument("model", help="a megafin checkpoint or an HF directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0: a free port, printed when listening")
    serve.add_argument("--engine", default="auto", choices=("auto", "megafin", "hf", "vllm"))
    serve.add_argument("--max-batch", type=int, default=8, help="most requests served by one engine call")
    serve.add_argument("--batch-window-ms", type=float, default=10.0,
                       help="how long the first request of a batch waits for others")
    serve.add_argument("--max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    serve.add_argument("--served-model-name", default=None, help="the model's name in /v1/models and requests "
                                                                 "(default: the directory's name)")
    serve.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    serve.set_defaults(func=run_serve)


def _sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sampling")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (needs --temperature > 0 when > 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", nargs="+", default=[], help="stop strings: each answer is cut before the first")


def _engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    p.add_argument("--api-key-env", default=None, help="the environment variable holding the API key "
                                                       "(default OPENAI_API_KEY; none needed for a local server)")
    p.add_argument("--concurrency", type=int, default=8, help="openai engine: requests in flight at once")
    p.add_argument("--timeout", type=float, default=120.0, help="openai engine: seconds per request")


def engine_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """What each engine is given: only the options it takes."""
    options: dict[str, Any] = {}
    if getattr(args, "tokenizer", None) and name != "openai":
        options["tokenizer"] = args.tokenizer
    if name == "hf" and getattr(args, "batch_size", None):
        options["batch_size"] = args.batch_size
    if name == "openai":
        options.update(base_url=args.base_url, api_key_env=args.api_key_env, concurrency=args.concurrency,
                       timeout=args.timeout)
    return options


def open_engine_for(args: argparse.Namespace) -> Any:
    from megafin.generate.engines import auto_engine, engine_class

    name = auto_engine(args.model, getattr(args, "base_url", None)) if args.engine == "auto" else args.engine
    return engine_class(name)(args.model, **engine_options(name, args))


def _fail(command: str, message: str) -> int:
    print(f"megafin {command}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_CONFIG_ERROR


def run_generate(args: argparse.Namespace) -> int:
    from megafin.generate.engines import engine_class
    from megafin.generate.jobs import JobSummary, parse_shard, read_rows, run_job

    summary = JobSummary()
    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, n=args.n, seed=args.seed, stop=tuple(args.stop))
        params.check()
        if args.batch_size < 1:
            raise GenerationError(f"--batch-size: expected a positive integer, got {args.batch_size}")
        shard = parse_shard(args.shard)
        if args.engine != "auto":
            engine_class(args.engine)  # an unknown name fails here, before the input is read
        rows = read_rows(Path(args.input), args.skip_bad, summary)  # every row checked before a model loads
        for line in summary.bad:
            print(f"megafin generate: skipped: {line}", file=sys.stderr)
        with open_engine_for(args) as engine:
            run_job(engine, rows, Path(args.output), params, shard, args.batch_size, summary,
                    input_name=args.input)
    except GenerationError as err:
        return _fail("generate", str(err))
    rate = summary.completion_tokens / summary.seconds if summary.seconds > 0 else 0.0
    notes = [f"{summary.already_done} already there"] if summary.already_done else []
    if summary.dropped_partial:
        notes.append("a partly written last row dropped and redone")
    if args.shard:
        notes.append(f"{summary.other_shards} in other shards")
    if summary.bad:
        notes.append(f"{len(summary.bad)} bad rows skipped")
    print(f"megafin generate: {summary.written} rows written to {args.output}"
          f"{' (' + ', '.join(notes) + ')' if notes else ''}; {summary.completion_tokens} tokens in "
          f"{summary.seconds:.1f} s: {rate:.1f} tokens/s", file=sys.stderr, flush=True)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import socket

    try:
        if args.max_batch < 1:
            raise GenerationError(f"--max-batch: expected a positive integer, got {args.max_batch}")
        engine = open_engine_for(args)
    except GenerationError as err:
        return _fail("serve", str(err))
    import uvicorn

    from megafin.generate.server import build_app

    app = build_app(engine, max_batch=args.max_batch, window_ms=args.batch_window_ms,
                    default_max_tokens=args.max_tokens, served_name=args.served_model_name)
    # The socket is bound here, so that --port 0 can say which port the OS gave before serving.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        return _fail("serve", f"--host {args.host} --port {args.port}: cannot listen ({err.strerror})")
    host, port = sock.getsockname()[:2]
    print(f"megafin serve: {engine.name} engine, model {app.state.served_name!r}, listening on "
          f"http://{host}:{port}/v1", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
    return 0
