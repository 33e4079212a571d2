"""RoPE as a ModuleSpec self-attention: cos/sin computed once per forward, not per layer, and no `cat` per q/k.

megatron-core's unfused RoPE (rope_utils._apply_rotary_pos_emb_bshd), used wherever Transformer Engine's fused RoPE
is not (CPU, GPUs without TE), recomputes cos(freqs) and sin(freqs) in every layer for q and for k, builds
rotate_half(x) with a negation and a `cat`, and ends with another `cat` (an empty pass-through part); its backward
adds a `cat`, a slice backward and full-width products. Here one autograd function rotates the two halves in place
of that, with a hand-written backward (the inverse rotation), from cos/sin tables shared by every layer of a
forward. The products and sums are the ones megatron computes, in the same order: bit-identical outputs and
gradients (tests/unit/test_rope.py).

Only the plain training/scoring path takes it (no KV cache, non-interleaved, full-width rotary, no YaRN scale);
anything else is megatron-core's own path, unchanged. Under context parallelism a [b, s] batch's table is already
this rank's rows (RotaryEmbedding's get_pos_emb_on_this_cp_rank), and a packed batch's tokens take the positions its
CPLayout gives (megafin/data/context_parallel.py).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from megatron.core.transformer.attention import SelfAttention


class _Rotate(torch.autograd.Function):
    """y = x * cos + rotate_half(x) * sin on the two halves of the last dim: [x1*c - x2*s, x2*c + x1*s]."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, sign=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, sign=-1), None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: int) -> torch.Tensor:
    """sign=1: [x1*c - x2*s, x2*c + x1*s] (the rotation); sign=-1: [x1*c + x2*s, x2*c - x1*s] (its transpose, the
    gradient). Each product rounded, then summed, as megatron's `t * cos_ + rotate_half(t) * sin_` does."""
    h = x.size(-1) // 2
    x1, x2 = x[..., :h], x[..., h:]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :h], out[..., h:]
    tmp = torch.mul(x2, sin)
    torch.mul(x1, cos, out=o1)
    o1.sub_(tmp) if sign > 0 else o1.add_(tmp)
    torch.mul(x1, sin, out=tmp)
    torch.mul(x2, cos, out=o2)
    o2.add_(tmp) if sign > 0 else o2.sub_(tmp)
    return out


class _Tables:
    """cos/sin of one frequency tensor [s, 1, 1, 2 * half] (megatron's emb = cat(freqs, freqs)), halves only."""

    def __init__(self, freqs: torch.Tensor) -> None:
        self.freqs = freqs  # held: identity is the cache key, so the object must not be freed and its id reused
        half = freqs[..., : freqs.size(-1) // 2]
        self.usable = bool(torch.equal(half, freqs[..., freqs.size(-1) // 2:]))
        self.cos, self.sin = torch.cos(half), torch.sin(half)
        self._cast: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def cast(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """In q/k's dtype, as megatron rounds cos_/sin_ to it before the products (bf16)."""
        if dtype not in self._cast:
            self._cast[dtype] = (self.cos.to(dtype), self.sin.to(dtype))
        return self._cast[dtype]


# The tables of the last frequency tensor seen: GPTModel computes it once per forward (and caches it across forwards)
# and hands the same object to every layer, so every layer and both q and k share one cos/sin.
_last: Optional[_Tables] = None


def _tables(freqs: torch.Tensor) -> _Tables:
    global _last
    if _last is None or _last.freqs is not freqs:
        _last = _Tables(freqs)
    return _last


def _thd_rows(params: Any, freqs_len: int, tokens: int) -> Optional[torch.Tensor]:
    """Which table row each packed token takes, as megatron's _apply_rotary_pos_emb_thd (cp=1) chooses it: every
    document from position 0, or token by token when the table has exactly one row per packed token (per-token
    positions).
    Cached on the PackedSeqParams (every layer of a forward shares it). None: not a layout handled here."""
    rows = params.__dict__.get("_megafin_rope_rows")
    layout = getattr(params, "cp_layout", None)
    if rows is None and layout is not None:
        # parallel.cp > 1: this rank's tokens are chunks of padded documents; each takes its position in its document
        rows = layout.q_pos.to(params.cu_seqlens_q.device)
        if rows.numel() != tokens or (tokens and int(rows.max()) >= freqs_len):
            return None
        params.__dict__["_megafin_rope_rows"] = rows
    if rows is None:
        cu = params.cu_seqlens_q
        if params.cu_seqlens_q_padded is not None or not torch.equal(cu, params.cu_seqlens_kv) \
                or int(cu[-1]) != tokens:
            return None
        if freqs_len == tokens:
            rows = torch.arange(tokens, device=cu.device)
        else:
            lens = (cu[1:] - cu[:-1]).long()
            if int(lens.max()) > freqs_len:
                return None
            starts = torch.repeat_interleave(cu[:-1].long(), lens)
            rows = torch.arange(tokens, device=cu.device) - starts
        params.__dict__["_megafin_rope_rows"] = rows
    return rows


def _thd_tables(params: Any, tables: _Tables, tokens: int,
                dtype: torch.dtype) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """cos/sin row per packed token [t, 1, 1, half], cached on the PackedSeqParams for the layers after the first."""
    hit = params.__dict__.get("_megafin_rope_tables")
    if hit is not None and hit[0] is tables and hit[1] == dtype:
        return hit[2]
    rows = _thd_rows(params, tables.freqs.size(0), tokens)
    if rows is None:
        return None
    cos, sin = tables.cast(dtype)
    selected = cos.index_select(0, rows), sin.index_select(0, rows)
    params.__dict__["_megafin_rope_tables"] = (tables, dtype, selected)
    return selected


class CachedRopeSelfAttention(SelfAttention):
    """megatron's SelfAttention with RoPE applied to q and k where get_query_key_value_tensors returns them
    (megatron is told rotary_pos_emb=None); everything else is its own forward."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], *args: Any,
                **kwargs: Any) -> Any:
        rope = self._rope_for(hidden_states, args, kwargs)
        if rope is None:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        self._megafin_rope = rope
        try:
            return super().forward(hidden_states, attention_mask, *args, **{**kwargs, "rotary_pos_emb": None})
        finally:
            self._megafin_rope = None

    def get_query_key_value_tensors(self, *args: Any, **kwargs: Any) -> Any:
        out = super().get_query_key_value_tensors(*args, **kwargs)
        rope = getattr(self, "_megafin_rope", None)
        if rope is None:
            return out
        query, key, value = out  # split_qkv, no output gate: checked in _rope_for
        cos, sin = rope
        if cos.dtype != query.dtype:
            cos, sin = cos.to(query.dtype), sin.to(query.dtype)
        return _Rotate.apply(query, cos, sin), _Rotate.apply(key, cos, sin), value

    def _rope_for(self, hidden_states: torch.Tensor, args: tuple,
                  kwargs: dict) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) broadcastable to q/k [s, b, heads, dim] (THD: [t, 1, heads, dim]), or None for megatron's
        own path."""
        freqs = kwargs.get("rotary_pos_emb")
        c = self.config
        if (args or freqs is None or not isinstance(freqs, torch.Tensor) or kwargs.get("inference_context")
                is not None or kwargs.get("inference_params") is not None or kwargs.get("rotary_pos_cos") is not None
                or c.apply_rope_fusion or c.rotary_interleaved or c.multi_latent_attention or c.no_rope_freq
                or c.attention_output_gate or c.fused_single_qkv_rope
                or hasattr(c, "yarn_rotary_scaling_factor") or self.attention_type != "self"
                or freqs.dim() != 4 or freqs.size(-1) != self.hidden_size_per_attention_head):
            return None
        tables = _tables(freqs)
        if not tables.usable:
            return None
        # q/k's sequence length: the QKV projection gathers a sequence-parallel input across TP ranks.
        seq = hidden_states.size(0) * (c.tensor_model_parallel_size if c.sequence_parallel else 1)
        params = kwargs.get("packed_seq_params")
        if params is not None and params.qkv_format == "thd":
            return _thd_tables(params, tables, seq, hidden_states.dtype)
        if params is not None or freqs.size(0) != seq:  # (cp > 1: GPTModel gave this rank's rows of the table)
            return None
        return tables.cast(hidden_states.dtype)
