"""`megafin serve` on 127.0.0.1 (a real server in a subprocess, hf engine on a tiny random Llama) answers the
official `openai` client and the openai engine (the judge path), refuses malformed requests with OpenAI-style 400s
and keeps serving; request batching and per-request failures on an in-process server with a scripted engine."""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from megafin.generate.api import GenerationError, GenerationRequest, SamplingParams
from tests.generate.serve_fixtures import make_tiny_hf, megafin_serve, scripted_engine, scripted_text

openai = pytest.importorskip("openai", reason="megafin serve tests need the openai client (setup.py)")
httpx = pytest.importorskip("httpx")

CHAT = [{"role": "system", "content": "You are a financial analyst."},
        {"role": "user", "content": "Is 'operating profit fell 20%' positive, negative or neutral?"}]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(tiny_hf: Path) -> Iterator[str]:
    with megafin_serve(tiny_hf, "--engine", "hf", "--max-batch", "4") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> "openai.OpenAI":
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(tiny_hf: Path):
    """The same model through the hf engine in this process: what the server's answers must equal."""
    from megafin.generate.engines import open_engine

    with open_engine("hf", str(tiny_hf)) as engine:
        yield engine


def test_models_lists_the_served_model(client: "openai.OpenAI") -> None:
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]


def test_greedy_chat_and_completion_equal_the_engine_in_process(client, local) -> None:
    chat = client.chat.completions.create(model="tiny-llama", messages=CHAT, temperature=0, max_tokens=12)
    comp = client.completions.create(model="tiny-llama", prompt="Net sales rose 4% in", temperature=0,
                                     max_tokens=12)
    want_chat, want_comp = local.generate([
        GenerationRequest(messages=CHAT, params=SamplingParams(max_new_tokens=12)),
        GenerationRequest(prompt="Net sales rose 4% in", params=SamplingParams(max_new_tokens=12))])
    assert chat.object == "chat.completion" and comp.object == "text_completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == want_chat.samples[0].text
    assert comp.choices[0].text == want_comp.samples[0].text
    assert chat.choices[0].finish_reason == want_chat.samples[0].finish_reason
    assert chat.usage.prompt_tokens == want_chat.prompt_tokens
    assert comp.usage.prompt_tokens == want_comp.prompt_tokens
    assert comp.usage.completion_tokens == want_comp.samples[0].completion_tokens
    assert comp.usage.total_tokens == comp.usage.prompt_tokens + comp.usage.completion_tokens


def test_n_samples_with_temperature_differ_and_a_seed_repeats_them(client) -> None:
    ask = dict(model="tiny-llama", messages=CHAT, n=3, temperature=1.0, top_p=0.95, max_tokens=10, seed=123)
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len(set(texts)) > 1, texts
    assert [c.message.content for c in again.choices] == texts
    other = client.chat.completions.create(**{**ask, "seed": 124})
    assert [c.message.content for c in other.choices] != texts


def test_stop_string_cuts_the_answer(client) -> None:
    full = client.completions.create(model="tiny-llama", prompt="Cash flow", temperature=0, max_tokens=16)
    text = full.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.completions.create(model="tiny-llama", prompt="Cash flow", temperature=0, max_tokens=16,
                                    stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.find(stop)]
    assert cut.usage.completion_tokens < full.usage.completion_tokens


BAD = [  # (endpoint, body, the param the error names)
    ("chat/completions", {"model": "tiny-llama"}, "messages"),
    ("chat/completions", {"model": "tiny-llama", "messages": "hello"}, "messages"),
    ("chat/completions", {"model": "tiny-llama", "messages": [{"role": "user"}]}, "messages"),
    ("chat/completions", {"model": "tiny-llama", "messages": CHAT, "temperature": -1}, "temperature"),
    ("chat/completions", {"model": "tiny-llama", "messages": CHAT, "temperature": "hot"}, "temperature"),
    ("chat/completions", {"model": "tiny-llama", "messages": CHAT, "n": 0}, "n"),
    ("chat/completions", {"model": "tiny-llama", "messages": CHAT, "n": 2, "temperature": 0}, "n"),
    ("chat/completions", {"model": "tiny-llama", "messages": CHAT, "top_p": 0}, "top_p"),
    ("chat/completions", {"model": "tiny-llama", "messages": CHAT, "stream": True}, "stream"),
    ("completions", {"model": "tiny-llama"}, "prompt"),
    ("completions", {"model": "tiny-llama", "prompt": [1, 2, 3]}, "prompt"),
    ("completions", {"model": "tiny-llama", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("completions", {"model": "tiny-llama", "prompt": "x", "stop": [3]}, "stop"),
    ("completions", {"model": "tiny-llama", "prompt": "x", "seed": 1.5}, "seed"),
]


@pytest.mark.parametrize("endpoint,body,param", BAD, ids=[f"{e}-{p}-{i}" for i, (e, _, p) in enumerate(BAD)])
def test_malformed_request_is_an_openai_style_400_and_the_server_keeps_serving(server, endpoint, body,
                                                                              param) -> None:
    reply = httpx.post(f"{server}/{endpoint}", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"] and "\n" not in error["message"]
    ok = httpx.post(f"{server}/completions", json={"model": "tiny-llama", "prompt": "Revenue", "max_tokens": 2,
                                                   "temperature": 0}, timeout=30)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] is not None


def test_body_that_is_not_json_unknown_model_and_client_errors(server, client) -> None:
    reply = httpx.post(f"{server}/completions", content=b"{not json", timeout=30)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="serves 'tiny-llama'"):
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny-llama", messages=CHAT, temperature=5)
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context of 256 tokens"):
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=1000)
    assert client.models.list().data[0].id == "tiny-llama"


def test_openai_engine_against_megafin_serve(server, local) -> None:
    """The judge path: the openai engine talks to `megafin serve` as it would to `vllm serve`."""
    from megafin.generate.engines import open_engine

    requests = [GenerationRequest(messages=CHAT, params=SamplingParams(max_new_tokens=8)),
                GenerationRequest(prompt="Dividends per share", params=SamplingParams(max_new_tokens=8)),
                GenerationRequest(prompt="Dividends per share",
                                  params=SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=3))]
    with open_engine("openai", "tiny-llama", base_url=server, concurrency=3) as engine:
        got = engine.generate(requests)
        assert engine.retried == 0
        with pytest.raises(GenerationError, match="HTTP 404.*serves 'tiny-llama'"):
            type(engine)("no-such-model", base_url=server, max_retries=3).generate(requests[:1])
    want = local.generate(requests[:2])
    for g, w in zip(got[:2], want):
        assert [(s.text, s.finish_reason, s.completion_tokens) for s in g.samples] == \
               [(s.text, s.finish_reason, s.completion_tokens) for s in w.samples]
        assert g.prompt_tokens == w.prompt_tokens
    assert len(got[2].samples) == 2
    assert sum(s.completion_tokens for s in got[2].samples) <= 16


# In-process server with the scripted engine: batching and failures are the point, not the model.

def _serve_in_thread(engine, **kw):
    import uvicorn

    from megafin.generate.server import build_app

    app = build_app(engine, **kw)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "in-process server did not start"
        time.sleep(0.02)
    return app, server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture
def scripted_server():
    engine = scripted_engine(delay=0.3)
    app, server, thread, url = _serve_in_thread(engine, max_batch=4, window_ms=50)
    yield engine, app, url
    server.should_exit = True
    thread.join(timeout=10)


def test_requests_arriving_together_share_engine_calls(scripted_server) -> None:
    engine, app, url = scripted_server
    prompts = [f"prompt number {i}" for i in range(9)]

    def ask(prompt: str) -> str:
        r = httpx.post(f"{url}/completions", json={"prompt": prompt, "max_tokens": 50, "temperature": 0},
                       timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(9) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == [f"{p[::-1]}#0" for p in prompts]  # every answer went back to its own request
    sizes = app.state.batcher.batch_sizes
    assert sum(sizes) == 9 and max(sizes) > 1 and max(sizes) <= 4, sizes
    assert type(engine).calls == sizes


def test_a_request_the_engine_fails_on_gets_500_and_its_batch_mates_their_answers(scripted_server) -> None:
    _, app, url = scripted_server

    def ask(prompt: str) -> httpx.Response:
        return httpx.post(f"{url}/completions", json={"prompt": prompt, "max_tokens": 50, "temperature": 0},
                          timeout=30)

    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(ask, ["alpha", "FAIL", "beta"]))
    assert [r.status_code for r in replies] == [200, 500, 200]
    assert replies[1].json()["error"]["type"] == "internal_error"
    assert "scripted failure" in replies[1].json()["error"]["message"]
    assert replies[0].json()["choices"][0]["text"] == scripted_text(GenerationRequest(prompt="alpha"), 0)
    assert ask("gamma").status_code == 200


def test_serves_a_megafin_checkpoint_through_the_megafin_engine(llama_pair) -> None:
    """The primary path: `megafin serve CKPT` (megafin engine, KV cache) answers as the HF model it was converted
    from does under HF generate (greedy, token for token)."""
    hf, ckpt = llama_pair
    with megafin_serve(ckpt, "--engine", "megafin") as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        name = client.models.list().data[0].id
        served = client.chat.completions.create(model=name, messages=CHAT, temperature=0, max_tokens=10)
    from megafin.generate.engines import open_engine

    with open_engine("hf", str(hf)) as engine:
        want = engine.generate([GenerationRequest(messages=CHAT, params=SamplingParams(max_new_tokens=10))])[0]
    assert want.samples[0].completion_tokens > 1  # not an empty answer on both sides
    assert served.choices[0].message.content == want.samples[0].text
    assert served.usage.completion_tokens == want.samples[0].completion_tokens
