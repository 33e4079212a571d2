"""The cache-less greedy decoder the KV-cache engine is checked against: the whole sequence re-run through
`forward_logits` for every new token (megafin's decoder before megafin/generate/engines/megafin_engine.py)."""
from __future__ import annotations

from typing import Optional

import torch

from megafin.generate.forward import forward_logits


@torch.no_grad()
def greedy_decode(model: torch.nn.Module, prompt: list[int], vocab_size: int, max_new_tokens: int,
                  eos_token_id: Optional[int] = None) -> list[int]:
    """Greedy decoding of one prompt with a loaded megafin model (at any TP/PP), no KV cache: the full forward
    re-run on the growing sequence; stops after `eos_token_id` (included) or `max_new_tokens`."""
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
