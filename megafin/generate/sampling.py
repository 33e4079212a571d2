"""From next-token logits to a token, and when a sequence ends: what every engine that runs the model itself shares.

Sampling is per row: greedy (temperature 0) is the argmax; otherwise temperature, then top-k, then top-p (HF's
order), and one draw from the row's own `torch.Generator`. A generator belongs to one (request, sample index) and is
seeded from the request's seed and that index, so a sample depends on its prompt, its seed and its index only, never
on which other requests share the batch.

A sequence ends ("stop") at a stop token (the tokenizer's end-of-sequence and end-of-turn tokens plus the request's
`stop_token_ids`; the token is counted but not in the text) or at a stop string (the text is cut before its first
occurrence), else ("length") after `max_new_tokens`.
"""
from __future__ import annotations

import secrets
from typing import Any, Optional, Sequence

import torch

from megafin.generate.api import SamplingParams

# End-of-turn and end-of-text tokens of common chat formats (Llama 3, Qwen2/ChatML, Phi-3, Gemma): an answer ends there
# even when the tokenizer's eos is another token. Every engine that decodes itself (megafin, hf) stops on these.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>", "<end_of_turn>")
_SEED_MIX = 1_000_003


def sample_generator(seed: Optional[int], index: int) -> torch.Generator:
    """The generator of sample `index` of a request: from its seed when given, else from fresh OS entropy."""
    base = secrets.randbits(62) if seed is None else int(seed)
    return torch.Generator().manual_seed((base * _SEED_MIX + index) % (2 ** 63))


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """One row's logits [V] scaled by the temperature, tokens outside top-k / top-p set to -inf."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token stays while the mass before it is < top_p.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, params: Sequence[SamplingParams],
                generators: Sequence[Optional[torch.Generator]]) -> torch.Tensor:
    """The next token of each row of `logits` [B, V] (long [B]): argmax for greedy rows, else one draw from the
    row's filtered distribution with the row's generator."""
    out = logits.argmax(dim=-1)
    for row, (p, gen) in enumerate(zip(params, generators)):
        if p.temperature > 0:
            probs = torch.softmax(filter_logits(logits[row], p.temperature, p.top_k, p.top_p), dim=-1)
            out[row] = torch.multinomial(probs, 1, generator=gen)[0]
    return out


def stop_token_ids(tokenizer: Any, extra: Sequence[int] = (), model_eos: Any = None) -> frozenset[int]:
    """The tokenizer's end-of-sequence token, the model's (`model_eos`: an HF generation config's eos_token_id, an
    id or a list), the end-of-turn tokens the vocabulary has, and `extra`."""
    ids = set(int(i) for i in extra)
    for source in (model_eos, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return frozenset(ids)


def cut_at_stop_string(text: str, stops: Sequence[str]) -> Optional[str]:
    """`text` cut before the earliest occurrence of any stop string; None when none occurs."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[:min(hits)] if hits else None
