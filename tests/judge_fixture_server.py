"""A scripted OpenAI-compatible judge for tests and benches: a real HTTP server on 127.0.0.1 (a port the OS
picks), served from a background thread, one thread per connection (many concurrent requests overlap).

GET /v1/models and POST /v1/chat/completions. What each completion answers is chosen by `respond`, a function of
the request (ScriptedRequest: body, prompt text, prompt hash, attempt number for that prompt) returning a Reply
(or a plain string: the judge's text, HTTP 200): text, HTTP status, finish_reason, a refusal, a raw (malformed)
body, a delay (a delay past the client's timeout makes a timeout; the late answer is dropped). `by_marker`
builds a `respond` that picks the reply by a marker such as [[case:name]] in the prompt (put it in the solution).

The server counts requests (total, per prompt hash, most in flight at once) and the answers written out in full
(per prompt hash), so tests can assert that no request was repeated, or none that had been answered. Asking
for another model than the one served gets a 404, as from vLLM.

    with JudgeFixtureServer(respond, latency_s=0.2) as server:
        client = JudgeClient(server.base_url, server.model, ...)
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional, Union

import pytest


@dataclass(frozen=True)
class Reply:
    content: Optional[str] = None      # the judge's text (message.content)
    status: int = 200                  # another status sends an OpenAI-style error body
    delay_s: float = 0.0               # added to the server's latency_s
    finish_reason: str = "stop"        # "content_filter" for a filtered answer
    refusal: Optional[str] = None      # message.refusal
    raw_body: Optional[bytes] = None   # sent as is, with `status` (a malformed response)


@dataclass(frozen=True)
class ScriptedRequest:
    body: dict
    prompt: str        # the last message's content
    prompt_hash: str   # sha256 of the prompt
    attempt: int       # 0 for the first request with this prompt, 1 for the next (a retry), ...


Respond = Callable[[ScriptedRequest], Union[Reply, str]]
MARKER = re.compile(r"\[\[case:([\w-]+)\]\]")


def by_marker(table: dict[str, Union[Reply, str, Respond]], default: Union[Reply, str, None] = None) -> Respond:
    """A respond function: the first [[case:NAME]] in the prompt picks table[NAME] (a Reply, a text, or a function
    of the request, e.g. `lambda r: Reply(status=500) if r.attempt == 0 else GOOD`)."""
    def respond(request: ScriptedRequest) -> Union[Reply, str]:
        found = MARKER.search(request.prompt)
        entry = table.get(found.group(1)) if found else None
        if entry is None:
            if default is None:
                return Reply(status=400, content=f"no scripted reply for {found.group(0) if found else 'no marker'}")
            return default
        return entry(request) if callable(entry) else entry
    return respond


class JudgeFixtureServer:
    def __init__(self, respond: Respond, model: str = "fixture-judge", latency_s: float = 0.0) -> None:
        self.respond, self.model, self.latency_s = respond, model, latency_s
        self.requests_total = 0
        self.requests_by_prompt: Counter = Counter()
        self.prompts: dict[str, str] = {}  # prompt hash -> prompt text
        self.answered_by_prompt: Counter = Counter()  # HTTP 200 answers written out in full, per prompt hash
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- life ----------------------------------------------------------------------------------------------------
    def start(self) -> "JudgeFixtureServer":
        server = self

        class Handler(_Handler):
            owner = server

        httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="judge-fixture-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # sleeping handlers wake up and finish
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "JudgeFixtureServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def repeated(self) -> dict[str, int]:
        """Prompt hashes asked more than once (retries included)."""
        with self._lock:
            return {h: n for h, n in self.requests_by_prompt.items() if n > 1}

    def reset_counts(self) -> None:
        with self._lock:
            self.requests_total, self.max_in_flight = 0, 0
            self.requests_by_prompt.clear()
            self.prompts.clear()
            self.answered_by_prompt.clear()

    # -- one request (called from the handler threads) ----------------------------------------------------------
    def _answer(self, body: dict) -> tuple[int, bytes, float, str]:
        """(HTTP status, body, seconds to wait before sending it, the prompt's hash)."""
        messages = body.get("messages") or [{}]
        prompt = str(messages[-1].get("content", "")) if isinstance(messages[-1], dict) else ""
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        with self._lock:
            self.requests_total += 1
            attempt = self.requests_by_prompt[digest]
            self.requests_by_prompt[digest] += 1
            self.prompts[digest] = prompt
        if body.get("model") != self.model:
            return (404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError"),
                    self.latency_s, digest)
        reply = self.respond(ScriptedRequest(body=body, prompt=prompt, prompt_hash=digest, attempt=attempt))
        if isinstance(reply, str):
            reply = Reply(content=reply)
        delay = self.latency_s + reply.delay_s
        if reply.raw_body is not None:
            return reply.status, reply.raw_body, delay, digest
        if reply.status != 200:
            return reply.status, _error(reply.content or f"scripted HTTP {reply.status}", "server_error"), delay, digest
        message = {"role": "assistant", "content": reply.content, "refusal": reply.refusal}
        payload = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                   "model": self.model,
                   "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason,
                                "logprobs": None}],
                   "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens":
                             len((reply.content or "").split()), "total_tokens": 0}}
        return 200, json.dumps(payload).encode("utf-8"), delay, digest

    def _answered(self, digest: str) -> None:
        with self._lock:
            self.answered_by_prompt[digest] += 1

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True        # a handler still sleeping never blocks shutdown
    request_queue_size = 256     # the bench opens 32+ connections at once; the default backlog is 5
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # a client closing its keep-alive connections
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: JudgeFixtureServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client (httpx) expects
    disable_nagle_algorithm = True  # headers and body go out as two writes: Nagle + delayed ACK would add ~40 ms

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": self.owner.model, "object": "model", "created": 0, "owned_by": "fixture"}]}).encode())
        else:
            self._send(404, _error(f"GET {self.path}: not found", "NotFoundError"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, _error(f"POST {self.path}: not found", "NotFoundError"))
            return
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            self._send(400, _error("the request body is not a JSON object", "invalid_request_error"))
            return
        self.owner._enter()
        try:
            status, payload, delay, digest = self.owner._answer(body)
            self.owner._sleep(delay)
        finally:
            self.owner._leave()
        if self._send(status, payload) and status == 200:
            self.owner._answered(digest)

    def _send(self, status: int, payload: bytes) -> bool:
        """Whether the answer went out in full."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to do
            self.close_connection = True
            return False


def _error(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode("utf-8")


@pytest.fixture
def judge_server() -> Iterator[Callable[..., JudgeFixtureServer]]:
    """A factory: judge_server(respond, model=..., latency_s=...) starts a JudgeFixtureServer, stopped after the
    test. Import it into a test module to use it."""
    servers: list[JudgeFixtureServer] = []

    def start(respond: Respond, **kwargs: Any) -> JudgeFixtureServer:
        servers.append(JudgeFixtureServer(respond, **kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
