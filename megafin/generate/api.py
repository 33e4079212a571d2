"""What every generation engine takes and returns: text in, text out, so an engine that tokenizes for itself (vLLM,
an OpenAI-compatible endpoint) and one that runs megafin's own model are used the same way.

A request is a prompt (plain text, or chat `messages` rendered by the engine with the model's chat template) plus
sampling parameters; a result holds `n` samples, each with its text, why it ended and its token counts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class GenerationError(ValueError):
    """A request or an engine setting that cannot be served: one line naming what was expected (exit 2 / HTTP 400)."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy (argmax); > 0: sampling
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    n: int = 1  # samples per prompt
    seed: Optional[int] = None  # fixed: reproducible samples (per prompt and sample index)
    stop: tuple[str, ...] = ()  # stop strings: the text is cut before the first one
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's end-of-sequence / end-of-turn tokens

    def check(self) -> None:
        """Raise GenerationError naming the first bad field (what the CLI and the server report)."""
        if self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens: expected a positive integer, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise GenerationError(f"temperature: expected a number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p: expected a number in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise GenerationError(f"top_k: expected an integer >= 0, got {self.top_k}")
        if self.n < 1:
            raise GenerationError(f"n: expected a positive integer, got {self.n}")
        if self.temperature == 0 and self.n > 1:
            raise GenerationError(f"n: greedy decoding (temperature 0) gives one answer, got n={self.n}; "
                                  f"set temperature > 0 for several samples")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: Optional[str] = None  # plain text, used as is
    messages: Optional[list[dict]] = None  # chat turns [{"role", "content"}], rendered with the chat template
    params: SamplingParams = field(default_factory=SamplingParams)

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise GenerationError("a request needs exactly one of 'prompt' (text) or 'messages' (chat turns)")
        if self.messages is not None:
            if not isinstance(self.messages, list) or not self.messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in self.messages):
                raise GenerationError("messages: expected a non-empty list of {role, content} string pairs")
        elif not isinstance(self.prompt, str):
            raise GenerationError(f"prompt: expected a string, got {type(self.prompt).__name__}")
        self.params.check()


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str  # "stop" (end token or stop string) | "length" (max_new_tokens)
    completion_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    samples: list[Sample]
    prompt_tokens: int


def check_requests(requests: list[GenerationRequest]) -> None:
    """Every request checked before any is served; the first bad one named by its index (one line)."""
    for i, request in enumerate(requests):
        try:
            request.check()
        except GenerationError as err:
            raise GenerationError(f"request {i}: {err}") from None
