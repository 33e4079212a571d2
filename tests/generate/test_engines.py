"""The hf engine on a tiny random Llama (batching, seeds, stops), the openai engine's retries and keys against a
scripted HTTP server, the vllm engine's refusal on CPU and its parameter mapping (a stand-in vllm module)."""
from __future__ import annotations

import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import torch

from megafin.generate.api import GenerationError, GenerationRequest, SamplingParams
from megafin.generate.engines import open_engine
from tests.generate.serve_fixtures import make_tiny_hf

PROMPTS = ["Revenue", "Operating margin in the third quarter of the year was",
           "The board proposed a dividend of EUR 0.50 per share for"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def hf(tiny_hf: Path):
    with open_engine("hf", str(tiny_hf)) as engine:
        yield engine


def greedy(prompt: str, tokens: int = 10, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, params=SamplingParams(max_new_tokens=tokens, **kw))


def test_hf_prompts_of_different_lengths_batched_equal_each_alone(hf) -> None:
    together = hf.generate([greedy(p) for p in PROMPTS])  # left padding: the short prompts are padded
    alone = [hf.generate([greedy(p)])[0] for p in PROMPTS]
    assert together == alone
    assert len({r.prompt_tokens for r in together}) == 3
    assert all(s.completion_tokens == 10 and s.finish_reason == "length" for r in together for s in r.samples)


def test_hf_seed_repeats_samples_and_n_samples_differ(hf) -> None:
    ask = GenerationRequest(prompt=PROMPTS[1], params=SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50,
                                                                     n=4, seed=11))
    first = hf.generate([ask])[0]
    # The same seed gives the same samples whatever the request is batched with.
    again = hf.generate([greedy(PROMPTS[0]), ask])[1]
    assert again == first
    assert len({s.text for s in first.samples}) > 1
    other = hf.generate([GenerationRequest(prompt=ask.prompt, params=SamplingParams(
        max_new_tokens=8, temperature=1.0, top_k=50, n=4, seed=12))])[0]
    assert other != first


def test_hf_stop_string_and_stop_token(hf) -> None:
    full = hf.generate([greedy(PROMPTS[2], 16)])[0].samples[0]
    stop = full.text[6:9]
    cut = hf.generate([greedy(PROMPTS[2], 16, stop=(stop, "never there"))])[0].samples[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.find(stop)]
    assert stop not in cut.text and cut.completion_tokens < full.completion_tokens
    # A stop token: the answer ends at its first occurrence, the token counted but not in the text.
    prompt = hf.tokenizer(PROMPTS[2], return_tensors="pt")
    ids = hf.lm.generate(**prompt, max_new_tokens=16, do_sample=False, pad_token_id=hf.tokenizer.pad_token_id,
                         eos_token_id=sorted(hf.end_ids))[0, prompt["input_ids"].shape[1]:].tolist()
    assert hf.tokenizer.decode(ids, skip_special_tokens=True) == full.text and len(ids) > 5
    token = ids[5]
    at = ids.index(token)
    ended = hf.generate([greedy(PROMPTS[2], 16, stop_token_ids=(token,))])[0].samples[0]
    assert ended.finish_reason == "stop" and ended.completion_tokens == at + 1
    assert ended.text == hf.tokenizer.decode(ids[:at], skip_special_tokens=True)


def test_hf_chat_uses_the_tokenizers_template(hf) -> None:
    messages = [{"role": "user", "content": "Is a 20% drop in profit good news?"}]
    rendered = hf.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|assistant|>")
    chat = hf.generate([GenerationRequest(messages=messages, params=SamplingParams(max_new_tokens=6))])[0]
    plain = hf.generate([GenerationRequest(prompt=rendered, params=SamplingParams(max_new_tokens=6))])[0]
    assert chat.prompt_tokens == len(hf.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    # A template writes its own BOS: the chat prompt is the plain one without the tokenizer's added BOS.
    assert plain.prompt_tokens == chat.prompt_tokens + 1


def test_hf_refuses_a_directory_without_safetensors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(GenerationError, match="no \\*.safetensors weights"):
        open_engine("hf", str(tmp_path))


# The openai engine against a scripted HTTP server: what it retries and what it does not.

class Script(BaseHTTPRequestHandler):
    replies: list[tuple[int, dict]] = []  # (status, body) per request, in order; the last one repeats
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, **body})
        status, reply = self.replies[min(len(self.seen) - 1, len(self.replies) - 1)]
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def script() -> Iterator[tuple[type[Script], str]]:
    Script.replies, Script.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Script, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


COMPLETION = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "judge",
              "choices": [{"index": 1, "text": "negative", "finish_reason": "length", "logprobs": None},
                          {"index": 0, "text": "positive!", "finish_reason": "stop", "logprobs": None}],
              "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}
UNAVAILABLE = {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}}


def test_openai_engine_retries_503_and_429_then_maps_the_choices(script) -> None:
    handler, url = script
    handler.replies = [(503, UNAVAILABLE), (429, UNAVAILABLE), (200, COMPLETION)]
    with open_engine("openai", "judge", base_url=url, backoff=0.01) as engine:
        request = GenerationRequest(prompt="Label: profit fell.", params=SamplingParams(
            max_new_tokens=4, temperature=0.5, top_k=20, n=2, seed=9, stop=("\n",)))
        result = engine.generate([request])[0]
        assert engine.retried == 2
    assert len(handler.seen) == 3
    sent = handler.seen[-1]
    assert sent["path"] == "/v1/completions" and sent["prompt"] == "Label: profit fell."
    assert (sent["max_tokens"], sent["n"], sent["temperature"], sent["seed"], sent["stop"], sent["top_k"]) == \
        (4, 2, 0.5, 9, ["\n"], 20)
    assert [(s.text, s.finish_reason) for s in result.samples] == [("positive!", "stop"), ("negative", "length")]
    assert sum(s.completion_tokens for s in result.samples) == 5 and result.prompt_tokens == 7


def test_openai_engine_does_not_retry_a_400(script) -> None:
    handler, url = script
    handler.replies = [(400, {"error": {"message": "max_tokens is too large", "type": "invalid_request_error",
                                        "param": "max_tokens", "code": None}})]
    with open_engine("openai", "judge", base_url=url, backoff=0.01) as engine:
        with pytest.raises(GenerationError, match="HTTP 400: max_tokens is too large"):
            engine.generate([GenerationRequest(messages=[{"role": "user", "content": "hi"}])])
    assert len(handler.seen) == 1 and handler.seen[0]["path"] == "/v1/chat/completions"


def test_openai_engine_gives_up_on_a_dead_endpoint_with_one_line() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open_engine("openai", "judge", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2,
                     backoff=0.01) as engine:
        with pytest.raises(GenerationError, match="gave up after 3 tries: APIConnectionError") as err:
            engine.generate([greedy("x")])
        assert engine.retried == 2 and "\n" not in str(err.value)


def test_openai_engine_key_from_the_named_variable(monkeypatch) -> None:
    from megafin.generate.engines.openai_engine import DUMMY_KEY, api_key

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("JUDGE_KEY", "sk-judge")
    assert api_key(None, "JUDGE_KEY") == "sk-judge"
    assert api_key("http://127.0.0.1:8000/v1", None) == DUMMY_KEY  # a local server: no key needed
    with pytest.raises(GenerationError, match="--api-key-env MISSING_KEY: that environment variable is not set"):
        api_key(None, "MISSING_KEY")
    with pytest.raises(GenerationError, match="set OPENAI_API_KEY"):
        api_key(None, None)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert api_key("http://127.0.0.1:8000/v1", None) == "sk-env"


def test_split_tokens_sums_to_the_total() -> None:
    from megafin.generate.engines.openai_engine import split_tokens

    for total, texts in ((7, ["a"]), (10, ["abc", "", "abcdefg"]), (5, ["", ""]), (3, ["x"] * 4)):
        shares = split_tokens(total, texts)
        assert sum(shares) == total and len(shares) == len(texts)


# vLLM: refused on CPU with one line; its SamplingParams mapping checked with a stand-in module.

@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal is tested on a machine without CUDA")
def test_vllm_is_refused_on_cpu_with_one_line(tiny_hf: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(GenerationError, match=r"^--engine vllm: needs a CUDA GPU \(no GPU here\); on CPU use "
                                              r"--engine hf"):
        open_engine("vllm", str(tiny_hf))
    from megafin.cli import main

    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "x"}\n')
    assert main(["generate", "--model", str(tiny_hf), "--engine", "vllm", "--input", str(data), "--output",
                 str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["megafin generate: error: --engine vllm: needs a CUDA GPU (no GPU here); on CPU use --engine "
                   "hf (an HF directory) or --engine megafin (a megafin checkpoint)"]


def test_vllm_engine_maps_requests_to_vllm(tiny_hf: Path, monkeypatch) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf))
    made: dict = {}

    class LLM:
        def __init__(self, **kw):
            made["llm"] = kw

        def get_tokenizer(self):
            return tokenizer

        def generate(self, prompts, sampling_params, use_tqdm):
            made["prompts"], made["params"] = prompts, sampling_params
            return [types.SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[
                types.SimpleNamespace(text=f"answer {i}.{k}", finish_reason="length", token_ids=[5] * (k + 1))
                for k in range(p.n)]) for i, p in enumerate(sampling_params)]

    class FakeSamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=FakeSamplingParams))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    messages = [{"role": "user", "content": "Sentiment?"}]
    with open_engine("vllm", str(tiny_hf)) as engine:
        results = engine.generate([
            GenerationRequest(prompt="Revenue", params=SamplingParams(max_new_tokens=5)),
            GenerationRequest(messages=messages, params=SamplingParams(max_new_tokens=7, temperature=0.8, top_p=0.9,
                                                                       top_k=40, n=2, seed=3, stop=("\n",),
                                                                       stop_token_ids=(9,)))])
    assert made["llm"]["trust_remote_code"] is False and made["llm"]["load_format"] == "safetensors"
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert made["prompts"] == ["Revenue", {"prompt_token_ids": tokenizer(rendered, add_special_tokens=False)[
        "input_ids"]}]
    greedy_params, sampled = (vars(p) for p in made["params"])
    assert greedy_params == dict(n=1, temperature=0.0, top_p=1.0, top_k=-1, max_tokens=5, seed=None, stop=[],
                                 stop_token_ids=[])
    assert sampled == dict(n=2, temperature=0.8, top_p=0.9, top_k=40, max_tokens=7, seed=3, stop=["\n"],
                           stop_token_ids=[9])
    assert [[(s.text, s.completion_tokens) for s in r.samples] for r in results] == \
        [[("answer 0.0", 1)], [("answer 1.0", 1), ("answer 1.1", 2)]]
    assert results[1].prompt_tokens == 3
