"""`megafin serve`: an OpenAI-compatible HTTP server over one engine (FastAPI + uvicorn), the CPU stand-in for
`vllm serve`: GET /v1/models, POST /v1/chat/completions, POST /v1/completions.

Requests arriving within a short window are served by one `engine.generate` call (up to max_batch requests).
A malformed request gets a 400 with an OpenAI-style JSON error {"error": {"message", "type", "param", "code"}};
nothing a client sends stops the server. Streaming is not offered: `stream: true` is refused with a 400."""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request), imported inside
# build_app so that importing this module does not import FastAPI.
import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from megafin.generate.api import GenerationError, GenerationRequest, GenerationResult, SamplingParams
from megafin.generate.engines import GenerationEngine


class RequestError(Exception):
    """A request the server refuses: the HTTP status and the OpenAI-style error body."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error", code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": kind, "param": param,
                                                    "code": code}}


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low < value if low_open else low <= value) and value <= high):
        raise RequestError(f"{key}: expected a number in {'(' if low_open else '['}{low}, {high}], got "
                           f"{value!r}", param=key)
    return float(value)


def _integer(body: dict, key: str, default: Optional[int], low: int) -> Optional[int]:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RequestError(f"{key}: expected an integer >= {low}, got {value!r}", param=key)
    return value


def sampling_params(body: dict, default_max_tokens: int) -> SamplingParams:
    """The OpenAI request fields (and vLLM's top_k / stop_token_ids extensions) as megafin SamplingParams."""
    for key, why in (("stream", "streaming is not supported by megafin serve; send stream=false"),
                     ("logprobs", "logprobs are not supported by megafin serve"),
                     ("echo", "echo is not supported by megafin serve")):
        if body.get(key):
            raise RequestError(f"{key}: {why}", param=key)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"stop: expected a non-empty string or a list of them, got {body.get('stop')!r}",
                           param="stop")
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise RequestError("stop_token_ids: expected a list of integers", param="stop_token_ids")
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    top_k = _integer(body, "top_k", 0, -1)
    params = SamplingParams(
        max_new_tokens=_integer(body, max_key, default_max_tokens, 1),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),  # OpenAI's default: 1 (sampling)
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k, 0),  # vLLM's -1: no top-k cut
        n=_integer(body, "n", 1, 1),
        seed=_integer(body, "seed", None, -2 ** 63),
        stop=tuple(stop), stop_token_ids=tuple(stop_ids))
    if params.n > 1 and params.temperature == 0:
        raise RequestError(f"n: greedy decoding (temperature 0) gives one answer, got n={params.n}; set "
                           f"temperature > 0 for several samples", param="n")
    return params


def _content(message: dict, i: int) -> str:
    """A message's text: a string, or OpenAI's list of content parts of type "text"."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(f"messages[{i}].content: expected a string or a list of text parts", param="messages")


def chat_requests(body: dict, default_max_tokens: int) -> list[GenerationRequest]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list of {role, content} objects", param="messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}]: expected an object with a string 'role'", param="messages")
        turns.append({"role": m["role"], "content": _content(m, i)})
    return [GenerationRequest(messages=turns, params=sampling_params(body, default_max_tokens))]


def completion_requests(body: dict, default_max_tokens: int) -> list[GenerationRequest]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt: expected a string or a non-empty list of strings (token-id prompts are not "
                           "supported)", param="prompt")
    params = sampling_params(body, default_max_tokens)
    return [GenerationRequest(prompt=p, params=params) for p in prompts]


def _usage(results: list[GenerationResult]) -> dict:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(s.completion_tokens for r in results for s in r.samples)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class Pending:
    request: GenerationRequest
    future: asyncio.Future


class Batcher:
    """Requests queued by the handlers, served in batches by one worker: the engine sees one call at a time."""

    def __init__(self, engine: GenerationEngine, max_batch: int, window_s: float) -> None:
        self.engine, self.max_batch, self.window_s = engine, max(1, max_batch), window_s
        self.queue: Optional[asyncio.Queue] = None
        self.batch_sizes: list[int] = []  # what each engine call served (for the log and the tests)

    async def submit(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        loop = asyncio.get_running_loop()
        pending = [Pending(r, loop.create_future()) for r in requests]
        for p in pending:
            self.queue.put_nowait(p)
        return list(await asyncio.gather(*(p.future for p in pending)))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            self.batch_sizes.append(len(batch))
            try:
                outcomes = await loop.run_in_executor(None, self._serve, [p.request for p in batch])
            except Exception as err:  # noqa: BLE001 - the worker must outlive any batch, or the server hangs
                outcomes = [err] * len(batch)
            for p, outcome in zip(batch, outcomes):
                if p.future.done():  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)

    def _serve(self, requests: list[GenerationRequest]) -> list[Any]:
        """Results, or per request the error it caused: a batch that fails is retried one request at a time so
        that one bad request does not fail the others."""
        try:
            return list(self.engine.generate(requests))
        except Exception as err:  # noqa: BLE001 - the server answers every request, whatever the engine raised
            if len(requests) == 1:
                return [err]
        outcomes: list[Any] = []
        for r in requests:
            try:
                outcomes.append(self.engine.generate([r])[0])
            except Exception as err:  # noqa: BLE001
                outcomes.append(err)
        return outcomes


def build_app(engine: GenerationEngine, max_batch: int = 8, window_ms: float = 10.0,
              default_max_tokens: int = 256, served_name: Optional[str] = None) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    name = served_name or engine.model_name
    batcher = Batcher(engine, max_batch, window_ms / 1000)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.queue = asyncio.Queue()
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="megafin serve", lifespan=lifespan)
    app.state.batcher, app.state.served_name = batcher, name

    def error(err: RequestError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status)

    async def body_of(request: Request) -> dict:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any undecodable body is the client's error
            raise RequestError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != name:
            raise RequestError(f"model: this server serves {name!r}, got {model!r}", param="model", status=404,
                               code="model_not_found")
        return body

    async def complete(request: Request, parse: Any, chat: bool) -> JSONResponse:
        try:
            body = await body_of(request)
            requests = parse(body, default_max_tokens)
            for r in requests:
                r.check()
        except RequestError as err:
            return error(err)
        except GenerationError as err:
            return error(RequestError(str(err)))
        try:
            results = await batcher.submit(requests)
        except GenerationError as err:
            return error(RequestError(str(err)))
        except Exception as err:  # noqa: BLE001 - an engine failure is a 500 for this request, not a dead server
            return error(RequestError(f"generation failed: {type(err).__name__}: {err}", status=500,
                                      kind="internal_error"))
        choices = []
        for result in results:
            for s in result.samples:
                choice: dict[str, Any] = {"index": len(choices), "finish_reason": s.finish_reason, "logprobs": None}
                if chat:
                    choice["message"] = {"role": "assistant", "content": s.text}
                else:
                    choice["text"] = s.text
                choices.append(choice)
        return JSONResponse({"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                             "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": name, "choices": choices,
                             "usage": _usage(results)})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "megafin"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        return await complete(request, chat_requests, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        return await complete(request, completion_requests, chat=False)

    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:  # unknown path, wrong method
        return error(RequestError(f"{request.method} {request.url.path}: {err.detail}", status=err.status_code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        return error(RequestError(f"internal error: {type(err).__name__}: {err}", status=500,
                                  kind="internal_error"))

    return app
