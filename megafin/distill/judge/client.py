"""JudgeClient: solutions judged by an LLM behind any OpenAI-compatible endpoint (`vllm serve`, a hosted API,
`megafin serve`), through the official `openai` client (AsyncOpenAI, chat completions).

- Concurrency: up to `concurrency` requests in flight (a semaphore); judging is latency-bound, so this is the
  throughput lever (bench/distill_throughput.py).
- Each request has a timeout (`timeout_s`, the whole request). Timeouts, connection errors, 429 and 5xx answers
  are retried `retries` times with a short exponential backoff (outside the semaphore); another 4xx is not
  retried (the request itself is refused, e.g. a prompt over the judge's context) and discards the item as
  server_error, except 401 / 403 / 404 (wrong key, wrong model, wrong URL), which no item can get past: JudgeError.
- The answer is parsed by parse.parse_judgment (schema, verbatim quotes, one discard reason each).
- Judgments are cached on disk (cache.py; transient discards are not cached, so a rerun retries them), and the
  same (question, reference, solution) twice in one run is asked once.
- `on_done(judgment)` is called as each judgment finishes, after its cache line is durable: a caller that
  appends it to its output at once resumes a killed run without paying twice. It runs in the thread that called
  judge() (a worker thread if that thread already runs an event loop); if it raises, the other requests are
  cancelled and the exception propagates.

stats: requests (HTTP requests sent, retries included), retries, cache_hits (items answered with no request:
from the cache or a duplicate in the same run), elapsed_s (wall time inside judge()), judged, kept,
discarded {reason: n} (every reason of DISCARD_REASONS present); judged == kept + sum(discarded.values()).
cache_bad_lines: torn / invalid cache lines skipped on loading."""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from megafin.distill.judge.api import DISCARD_REASONS, JudgeItem, Judgment
from megafin.generate.engines.openai_engine import error_message
from megafin.distill.judge.cache import JudgmentCache, cache_key
from megafin.distill.judge.parse import discard, parse_judgment
from megafin.distill.judge.template import JudgeTemplate

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 8.0
FATAL_STATUS = (401, 403, 404)  # the endpoint, key or model is wrong: no item can succeed
RETRIED_4XX = (408, 409, 429)   # request timeout, conflict, rate limit: transient


class JudgeError(RuntimeError):
    """The judge cannot be used at all (wrong URL / model / key, bad items): one line."""


class JudgeClient:
    def __init__(self, base_url: str, model: str, *, template: Union[str, Path] = "outcome_process",
                 cache_dir: Union[str, Path, None] = None, concurrency: int = 32, timeout_s: float = 120.0,
                 retries: int = 3, api_key: str = "EMPTY", max_tokens: int = 1024, temperature: float = 0.0,
                 backoff_s: float = 0.5) -> None:
        if concurrency < 1 or timeout_s <= 0 or retries < 0 or max_tokens < 1:
            raise ValueError(f"JudgeClient: concurrency >= 1, timeout_s > 0, retries >= 0, max_tokens >= 1; got "
                             f"{concurrency}, {timeout_s}, {retries}, {max_tokens}")
        self.base_url, self.model, self.api_key = base_url, model, api_key
        self.concurrency, self.timeout_s, self.retries = int(concurrency), float(timeout_s), int(retries)
        self.max_tokens, self.temperature, self.backoff_s = int(max_tokens), float(temperature), float(backoff_s)
        self.template = JudgeTemplate.load(template)
        import openai  # noqa: F401 - here, not in the first judge() call: its import is not judging time
        self.cache = JudgmentCache(cache_dir) if cache_dir is not None else None
        self.stats: dict[str, Any] = dict(requests=0, cache_hits=0, retries=0, elapsed_s=0.0, judged=0, kept=0,
                                          discarded={r: 0 for r in DISCARD_REASONS},
                                          cache_bad_lines=self.cache.bad_lines if self.cache else 0)
        self._logged: set[str] = set()

    # -- public -------------------------------------------------------------------------------------------------
    def judge(self, items: Sequence[JudgeItem],
              on_done: Optional[Callable[[Judgment], None]] = None) -> list[Judgment]:
        """One Judgment per item, in item order."""
        for i, item in enumerate(items):
            bad = [f for f in ("key", "question", "reference", "solution")
                   if not isinstance(getattr(item, f, None), str)]
            if bad:
                raise JudgeError(f"judge item {i}: {', '.join(bad)} must be text (a JudgeItem), got "
                                 f"{type(item).__name__}")
        start = time.perf_counter()
        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self._judge_all(items, on_done))
            return _run_in_thread(lambda: asyncio.run(self._judge_all(items, on_done)))
        finally:
            self.stats["elapsed_s"] += time.perf_counter() - start

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> "JudgeClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- one run -------------------------------------------------------------------------------------------------
    async def _judge_all(self, items: Sequence[JudgeItem],
                         on_done: Optional[Callable[[Judgment], None]]) -> list[Judgment]:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                                    max_retries=0)  # retries are ours: which errors, how long to wait
        semaphore = asyncio.Semaphore(self.concurrency)
        asked: dict[str, asyncio.Future] = {}  # cache key -> its fields, for duplicates within this run
        results: list[Optional[Judgment]] = [None] * len(items)

        async def one(i: int, item: JudgeItem) -> tuple[int, dict[str, Any], bool]:
            key = cache_key(self.model, self.template.text, item.question, item.reference, item.solution)
            if self.cache is not None:
                fields = self.cache.get(key)
                if fields is not None:
                    return i, fields, True
            if key in asked:
                return i, dict(await asyncio.shield(asked[key])), True
            future = asked[key] = asyncio.get_running_loop().create_future()
            try:
                fields = await self._request(client, semaphore, item, key)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as err:
                future.set_exception(err)
                future.exception()  # retrieved: no "never retrieved" warning when nobody else waits on it
                raise
            future.set_result(fields)
            return i, fields, False

        window = self.concurrency * 4  # tasks alive at once: bounds memory on long item lists
        queue = iter(enumerate(items))
        pending: set[asyncio.Task] = set()
        try:
            while True:
                for i, item in queue:
                    pending.add(asyncio.create_task(one(i, item)))
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    i, fields, cached = task.result()
                    judgment = Judgment(key=items[i].key, cached=cached, **fields)
                    self._count(judgment)
                    results[i] = judgment
                    if on_done is not None:
                        on_done(judgment)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await client.close()
        return results  # type: ignore[return-value]

    async def _request(self, client: Any, semaphore: asyncio.Semaphore, item: JudgeItem,
                       key: str) -> dict[str, Any]:
        import openai

        messages = [{"role": "user", "content": self.template.render(item.question, item.reference, item.solution)}]
        reason, detail = "server_error", ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter: retries do not march in step
            async with semaphore:
                self.stats["requests"] += 1
                try:
                    response = await asyncio.wait_for(client.chat.completions.create(
                        model=self.model, messages=messages, max_tokens=self.max_tokens,
                        temperature=self.temperature), self.timeout_s)
                except (asyncio.TimeoutError, openai.APITimeoutError):
                    reason, detail = "timeout", f"no answer within {self.timeout_s:g} s"
                    continue
                except openai.APIStatusError as err:
                    detail = f"HTTP {err.status_code}: {error_message(err)}"
                    if err.status_code in FATAL_STATUS:
                        raise JudgeError(f"judge {self.base_url} model {self.model!r}: {detail}") from None
                    reason = "server_error"
                    if err.status_code >= 500 or err.status_code in RETRIED_4XX:
                        continue
                    return self._discarded(item, "server_error", detail)  # the request itself is refused
                except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as err:
                    reason, detail = "server_error", f"{type(err).__name__}: {error_message(err)}"
                    continue
                choices = getattr(response, "choices", None) or []
                message = getattr(choices[0], "message", None) if choices else None
                if message is None:
                    reason, detail = "server_error", "a response with no choices / message"
                    continue
                fields = parse_judgment(message.content, item.solution, self.template.process,
                                        choices[0].finish_reason, getattr(message, "refusal", None))
                if self.cache is not None:
                    # Durable before the slot is freed (fsync off the event loop): at concurrency 1 a request goes
                    # out only once every answer before it is on disk, so a killed run repeats no answered
                    # request; at concurrency c, only answers still being written when it died (< c).
                    await asyncio.to_thread(self.cache.put, key, fields)
            if fields["discard_reason"] is not None:
                self._log_first(item, fields["discard_reason"], repr((message.content or "")[:300]))
            return fields
        return self._discarded(item, reason, f"{detail} (after {self.retries + 1} tries)")

    def _discarded(self, item: JudgeItem, reason: str, detail: str) -> dict[str, Any]:
        self._log_first(item, reason, detail)
        return discard(reason)

    def _log_first(self, item: JudgeItem, reason: str, detail: str) -> None:
        """The first discard of each reason is logged with its detail (the rest are counted in stats)."""
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("judge: first %s discard (item %s): %s", reason, item.key, detail)

    def _count(self, judgment: Judgment) -> None:
        self.stats["judged"] += 1
        self.stats["cache_hits"] += int(judgment.cached)
        if judgment.kept:
            self.stats["kept"] += 1
        else:
            self.stats["discarded"][judgment.discard_reason] += 1


def _run_in_thread(fn: Callable[[], Any]) -> Any:
    """fn() in a fresh thread (asyncio.run cannot nest in a thread whose loop is running); its result or error."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="judge", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
