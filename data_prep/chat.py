"""Instruction/preference records -> chat messages -> rendered text + per-token loss mask.

The mask is computed by rendering prefixes, which works for any chat template: for every assistant message i,
render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) bound the characters that message
contributes (its content and end-of-turn marker, e.g. `<|eot_id|>`). The full text is then tokenized once
(the ids the model sees at inference) and a token is a target iff its characters lie inside such a span.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Messages = list[dict[str, str]]

SFT_EXPECTED = (
    "expected 'messages' (a list of {role, content}), 'prompt'+'response', 'query'+'answer' (FinDAP) "
    "or 'instruction'+'output'"
)
PREF_EXPECTED = "expected 'prompt', 'chosen' and 'rejected' (strings or lists of {role, content})"


class ExampleError(Exception):
    """A record that cannot become an example: args = (reason, message)."""


def _check_messages(msgs: Any, what: str) -> Messages:
    if not isinstance(msgs, list) or not msgs:
        raise ExampleError("bad_messages", f"'{what}' is not a non-empty list of messages ({SFT_EXPECTED})")
    out = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ExampleError(
                "bad_messages", f"'{what}'[{k}] is not {{'role': str, 'content': str}} ({SFT_EXPECTED})"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _str_field(rec: dict, key: str, expected: str) -> str:
    v = rec[key]
    if not isinstance(v, str):
        raise ExampleError("wrong_type", f"'{key}' is a {type(v).__name__} (expected a string; {expected})")
    if not v.strip():
        raise ExampleError("empty_text", f"'{key}' is empty ({expected})")
    return v


def sft_messages(rec: dict) -> Messages:
    """Normalise one SFT record to chat messages (system/user/assistant)."""
    system = rec.get("system") if isinstance(rec.get("system"), str) and rec.get("system") else None
    if "messages" in rec:
        msgs = _check_messages(rec["messages"], "messages")
    else:
        for pk, rk in (("prompt", "response"), ("query", "answer"), ("instruction", "output")):
            if pk in rec and rk in rec:
                prompt = _str_field(rec, pk, SFT_EXPECTED)
                if pk == "instruction" and isinstance(rec.get("input"), str) and rec["input"].strip():
                    prompt = f"{prompt}\n\n{rec['input']}"
                msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _str_field(rec, rk, SFT_EXPECTED)}]
                break
        else:
            have = ", ".join(list(rec)[:8])
            raise ExampleError("missing_key", f"no usable keys (have: {have}; {SFT_EXPECTED})")
    if system is not None and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    if not any(m["role"] == "assistant" for m in msgs):
        raise ExampleError("no_assistant_turn", f"no assistant message ({SFT_EXPECTED})")
    if all(not m["content"].strip() for m in msgs if m["role"] == "assistant"):
        raise ExampleError("empty_text", "every assistant message is empty (expected a response to learn)")
    return msgs


def _as_prompt(v: Any) -> Messages:
    if isinstance(v, str):
        if not v.strip():
            raise ExampleError("empty_text", f"'prompt' is empty ({PREF_EXPECTED})")
        return [{"role": "user", "content": v}]
    return _check_messages(v, "prompt")


def _as_response(v: Any, key: str, prompt: Messages) -> Messages:
    if isinstance(v, str):
        if not v.strip():
            raise ExampleError("empty_text", f"'{key}' is empty ({PREF_EXPECTED})")
        return [{"role": "assistant", "content": v}]
    msgs = _check_messages(v, key)
    if msgs[: len(prompt)] == prompt and len(msgs) > len(prompt):  # full conversation (TRL style): drop the prompt
        msgs = msgs[len(prompt) :]
    if not any(m["role"] == "assistant" for m in msgs):
        raise ExampleError("no_assistant_turn", f"'{key}' has no assistant message ({PREF_EXPECTED})")
    return msgs


def preference_messages(rec: dict) -> tuple[Messages, Messages, Messages]:
    """(prompt, chosen continuation, rejected continuation) as message lists."""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in rec]
    if missing:
        raise ExampleError("missing_key", f"missing key '{missing[0]}' ({PREF_EXPECTED})")
    if rec.get("system") and isinstance(rec["system"], str):
        prompt = [{"role": "system", "content": rec["system"]}] + _as_prompt(rec["prompt"])
    else:
        prompt = _as_prompt(rec["prompt"])
    return prompt, _as_response(rec["chosen"], "chosen", prompt), _as_response(rec["rejected"], "rejected", prompt)


class NoChatTemplate(ValueError):
    pass


class ChatRenderer:
    """Renders with the tokenizer's chat template (compiled once, the same Jinja env as `apply_chat_template`)."""

    def __init__(self, tok: Any, template: str | None = None):
        template = template or getattr(tok, "chat_template", None)
        if isinstance(template, dict):  # multiple named templates: use the default one
            template = template.get("default")
        if not template:
            raise NoChatTemplate(
                f"{tok.name_or_path}: tokenizer has no chat template (expected 'chat_template' in "
                "tokenizer_config.json or a chat_template.jinja file; or pass --chat-template FILE)"
            )
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.template = template
        self._compiled = _compile_jinja_template(template)
        self._kw = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
        self._backend = tok.backend_tokenizer
        self._added = tuple(tok.added_tokens_encoder)  # strings the tokenizer would turn into control tokens

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> str:
        return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **self._kw)

    def check_text(self, messages: Messages) -> None:
        for m in messages:
            for a in self._added:
                if a in m["content"]:
                    raise ExampleError(
                        "special_token_in_text", f"message content contains the control token {a!r} (expected plain text)"
                    )

    def spans(self, messages: Messages, target_from: int = 0) -> tuple[str, list[tuple[int, int]]]:
        """Full text and the character spans of assistant messages with index >= target_from."""
        self.check_text(messages)
        full = self.render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or i < target_from:
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                raise ExampleError(
                    "template_not_prefix_stable",
                    "chat template renders a conversation prefix differently from the whole (expected a "
                    "prefix-stable template: rendering messages[:i] must be a prefix of rendering messages)",
                )
            if len(upto) > len(before):
                spans.append((len(before), len(upto)))
        return full, spans

    def encode(self, texts: Sequence[str], spans: Sequence[list[tuple[int, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids (uint32) and the uint8 target mask of each rendered text."""
        encs = self._backend.encode_batch(list(texts), add_special_tokens=False)
        out = []
        for enc, sp in zip(encs, spans):
            ids = np.asarray(enc.ids, dtype=np.int64)
            off = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            mask = np.zeros(len(ids), dtype=np.uint8)
            for a, b in sp:
                # A token is a target iff its (non-empty) character interval lies inside the assistant span.
                mask[(off[:, 0] >= a) & (off[:, 1] <= b) & (off[:, 1] > off[:, 0])] = 1
            out.append((ids, mask))
        return out
