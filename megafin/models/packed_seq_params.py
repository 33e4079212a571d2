"""megafin's packed-sequence parameters: megatron-core's PackedSeqParams plus what shared-prompt packs declare."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from megatron.core.packed_seq_params import PackedSeqParams


@dataclass
class MegafinPackedSeqParams(PackedSeqParams):
    # Shared-prompt preference pairs (dpo.share_prompt): per document, how many tokens of the document before it it
    # also attends to (its pair's prompt). Read by SDPACoreAttention and by LogprobGPTModel's per-token RoPE.
    attn_prefix: Optional[list[int]] = None
    # parallel.cp > 1: where this rank's tokens and the gathered keys sit (megafin.data.context_parallel.CPLayout).
    # Read by ContextParallelSDPAAttention (the mask) and CachedRopeSelfAttention (each token's RoPE row).
    cp_layout: Optional[Any] = None
