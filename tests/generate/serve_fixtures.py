"""For the generate / serve / engine tests: a tiny random HF Llama with the project's tokenizer and a chat
template, `megafin serve` in a subprocess on a port the OS picks, a scripted engine whose answers are known."""
from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from megafin.generate.api import GenerationRequest, GenerationResult, Sample
from megafin.generate.engines import GenerationEngine, register_engine

REPO = Path(__file__).resolve().parents[2]


def make_tiny_hf(root: Path) -> Path:
    """A random LlamaForCausalLM (tests/convert/hf_fixtures.py) with a BPE tokenizer trained on the project's
    sample corpora and a chat template."""
    from data_prep.tokenizer import iter_training_texts, train_tokenizer
    from megafin.demo import SAMPLES
    from tests.convert.hf_fixtures import make_hf_llama

    texts = [t for name in ("finance_corpus.jsonl", "general_corpus.jsonl")
             for t in iter_training_texts(SAMPLES / name)]
    tokenizer = train_tokenizer(texts, vocab_size=1000, out_dir=root / "tokenizer")
    return make_hf_llama(root / "tiny-llama", tied=False, seed=5, tokenizer_dir=tokenizer)


def megafin_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@contextmanager
def megafin_serve(model: Path, *extra: str, timeout: float = 120) -> Iterator[str]:
    """`megafin serve MODEL --port 0` in a subprocess; yields its base URL (http://127.0.0.1:PORT/v1) once it
    answers /health; stops it afterwards."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "megafin", "serve", str(model), "--host", "127.0.0.1",
                             "--port", "0", *extra], cwd=REPO, env=megafin_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    log: list[str] = []

    def drain() -> None:  # keeps reading, so that a chatty server never blocks on a full pipe
        for line in proc.stderr:
            log.append(line)
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise AssertionError(f"megafin serve did not start (rc={proc.poll()}):\n{''.join(log)}")
            try:
                found = re.search(r"listening on (http://\S+/v1)", lines.get(timeout=0.5))
            except queue.Empty:
                continue
            url = found.group(1) if found else None
        while True:
            try:
                if httpx.get(url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"megafin serve never answered /health:\n{''.join(log)}")
            time.sleep(0.1)
        yield url
        assert proc.poll() is None, f"megafin serve died while being used:\n{''.join(log)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scripted_text(request: GenerationRequest, k: int) -> str:
    """What the scripted engine answers: the prompt (or last message) reversed, then the sample index."""
    source = request.prompt if request.messages is None else request.messages[-1]["content"]
    return f"{source[::-1]}#{k}"


@register_engine("scripted")
class ScriptedEngine(GenerationEngine):
    """Answers known in advance (scripted_text), one token per character; records each generate call's size.
    A prompt "FAIL" raises RuntimeError, as an engine bug would; `delay` seconds per call."""

    calls: list[int] = []
    delay = 0.0

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        for r in requests:
            r.check()
        type(self).calls.append(len(requests))
        time.sleep(self.delay)
        if any(r.prompt == "FAIL" for r in requests):
            raise RuntimeError("scripted failure")
        out = []
        for r in requests:
            texts = [scripted_text(r, k)[:r.params.max_new_tokens] for k in range(r.params.n)]
            out.append(GenerationResult(samples=[Sample(t, "stop", len(t)) for t in texts],
                                        prompt_tokens=len(r.prompt or r.messages[-1]["content"])))
        return out


def scripted_engine(**kw: Any) -> ScriptedEngine:
    ScriptedEngine.calls = []
    engine = ScriptedEngine("scripted-model")
    for k, v in kw.items():
        setattr(engine, k, v)
    return engine
