"""Greedy decoding of one prompt with a loaded megafin model (megafin.runtime.model_session.load_model).

The reference decoder: no KV cache, the whole sequence re-run through `forward_logits` for every new token.
"""
from __future__ import annotations

from typing import Optional

import torch

from megafin.generate.forward import forward_logits


@torch.no_grad()
def greedy_decode(model: torch.nn.Module, prompt: list[int], vocab_size: int, max_new_tokens: int,
                  eos_token_id: Optional[int] = None) -> list[int]:
    """megafin's own greedy decoding: the full forward re-run on the growing sequence (no KV cache)."""
    ids = list(prompt)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = forward_logits(model, torch.tensor([ids]), vocab_size)
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        new.append(nxt)
        if eos_token_id is not None and nxt == eos_token_id:
            break
    return new
