"""`--engine openai`: a model behind any OpenAI-compatible endpoint (vLLM / SGLang servers, `megafin serve`, a
hosted API) through the official `openai` client.

Requests go out concurrently (a thread pool of `concurrency`), each with a timeout; connection errors, timeouts,
429 and 5xx answers are retried with exponential backoff, a 4xx answer is not (the request itself is wrong)."""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from megafin.generate.api import GenerationError, GenerationRequest, GenerationResult, Sample, check_requests
from megafin.generate.engines import GenerationEngine, register_engine

# A local server (vLLM, `megafin serve`) ignores the key, but the client insists on one.
DUMMY_KEY = "EMPTY"


def api_key(base_url: Optional[str], api_key_env: Optional[str]) -> str:
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise GenerationError(f"--api-key-env {api_key_env}: that environment variable is not set")
        return key
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    if base_url:
        return DUMMY_KEY
    raise GenerationError("--engine openai: set OPENAI_API_KEY (or name the variable with --api-key-env), or give "
                          "--base-url for a local server that needs no key")


def split_tokens(total: int, texts: list[str]) -> list[int]:
    """Per-sample token counts from the response's total, where the API reports only that (n > 1): shared in
    proportion to the texts' lengths, summing to the total."""
    if len(texts) == 1:
        return [total]
    chars = [len(t) for t in texts]
    if sum(chars) == 0:
        shares = [total // len(texts)] * len(texts)
    else:
        shares = [total * c // sum(chars) for c in chars]
    for i in range(total - sum(shares)):
        shares[i % len(shares)] += 1
    return shares


@register_engine("openai")
class OpenAIEngine(GenerationEngine):
    def __init__(self, model: str, base_url: Optional[str] = None, api_key_env: Optional[str] = None,
                 concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
                 **options: Any) -> None:
        super().__init__(model)
        import openai

        self.base_url = base_url
        # Retries are ours (below), so that which errors are retried and how long it waits are explicit.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key(base_url, api_key_env), timeout=timeout,
                                    max_retries=0)
        self.concurrency, self.max_retries, self.backoff = max(1, int(concurrency)), int(max_retries), backoff
        self.retried = 0  # how many calls were retried: shown by the job, checked by the tests

    @property
    def model_name(self) -> str:
        return self.model

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        check_requests(requests)
        if len(requests) == 1:
            return [self._one(requests[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: GenerationRequest) -> GenerationResult:
        p = request.params
        kwargs: dict[str, Any] = dict(model=self.model, max_tokens=p.max_new_tokens, temperature=p.temperature,
                                      top_p=p.top_p, n=p.n)
        if p.seed is not None:
            kwargs["seed"] = p.seed
        if p.stop:
            kwargs["stop"] = list(p.stop)
        extra: dict[str, Any] = {}  # vLLM's extensions of the API (ignored or refused by others)
        if p.top_k:
            extra["top_k"] = p.top_k
        if p.stop_token_ids:
            extra["stop_token_ids"] = list(p.stop_token_ids)
        if extra:
            kwargs["extra_body"] = extra
        if request.messages is not None:
            response = self._call(self.client.chat.completions.create, messages=request.messages, **kwargs)
            texts = [c.message.content or "" for c in sorted(response.choices, key=lambda c: c.index)]
        else:
            response = self._call(self.client.completions.create, prompt=request.prompt, **kwargs)
            texts = [c.text for c in sorted(response.choices, key=lambda c: c.index)]
        reasons = [c.finish_reason or "stop" for c in sorted(response.choices, key=lambda c: c.index)]
        usage = response.usage
        counts = split_tokens(usage.completion_tokens if usage else 0, texts)
        return GenerationResult(samples=[Sample(text=t, finish_reason=r, completion_tokens=c)
                                         for t, r, c in zip(texts, reasons, counts)],
                                prompt_tokens=usage.prompt_tokens if usage else 0)

    def _call(self, create: Any, **kwargs: Any) -> Any:
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                return create(**kwargs)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                last = err
            except openai.APIStatusError as err:
                if err.status_code < 500:
                    raise GenerationError(f"{self.base_url or 'OpenAI API'}: HTTP {err.status_code}: "
                                          f"{error_message(err)}") from None
                last = err
            if attempt < self.max_retries:
                self.retried += 1
                # Exponential backoff with jitter, so that many threads do not retry in step.
                time.sleep(self.backoff * (2 ** attempt) * (0.5 + random.random() / 2))
        raise GenerationError(f"{self.base_url or 'OpenAI API'}: gave up after {self.max_retries + 1} tries: "
                              f"{type(last).__name__}: {error_message(last)}")

    def close(self) -> None:
        self.client.close()


def error_message(err: Any) -> str:
    """The first line of an OpenAI-client error: the server's own message where its body has one (also used by
    the distillation judge client)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(err).splitlines()[0] if str(err) else type(err).__name__
