"""The `dpo:` section of a recipe: settings of the preference stage and its losses."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DPOConfig:
    # a name in megafin/stages/preference/losses: dpo | rpo (dpo + NLL on chosen) | ipo | simpo | distill (the
    # implicit reward margin regressed onto the judge's reward margin)
    loss: str = "dpo"
    beta: float = 0.1
    rpo_alpha: float = 1.0  # weight of the length-normalized NLL on chosen responses (loss: rpo)
    label_smoothing: float = 0.0  # conservative DPO (loss: dpo)
    simpo_gamma: float = 0.5  # SimPO's target reward margin (loss: simpo; reference-free, length-normalized)
    distill_alpha: float = 0.0  # weight of the length-normalized NLL on chosen responses (loss: distill), as rpo_alpha
    reference: str = ""  # checkpoint of the frozen reference; "" = train.init_from (the policy's starting point)
    reference_logps: str = "precompute"  # precompute (once, stored in RUN_DIR) | online (every step; pp=1)
    # Each pair's prompt is computed once: the rejected response attends to the chosen document's prompt tokens
    # instead of repeating them (same log-probs; fewer tokens when prompts are long). Needs SDPA attention.
    share_prompt: bool = False
