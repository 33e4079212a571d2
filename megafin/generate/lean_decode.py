"""Prefill and decode steps of a megatron-core GPTModel (Llama/Qwen2 shape, TP=1 or tensor-parallel) in plain torch ops
on the model's own parameters, with a KV cache, without megatron's per-layer module machinery.

Why: on CPU a decode step of a small model is a few [batch, hidden] matmuls per layer, and megatron's layer stack
(module calls, autograd-function wrappers of the parallel linears, process-group lookups, the inference context's
bookkeeping, a permuted [len, batch, ...] cache) cost as much as the arithmetic (the profile: megafin/generate/
engines/megafin_engine.py's docstring). The cache is [batch, groups, len, dim] per layer: a step attends to a
contiguous prefix of each row. Prompts are LEFT-PADDED as on megatron's path (each prefilled alone, right-aligned at
the batch's longest prompt, RoPE position = cache slot), so the two paths compute the same thing.

A layer does what megatron's layer does, op for op and in the same order: RMSNorm; the fused QKV linear split per
query group as `get_query_key_value_tensors` splits it ([groups, (heads/groups + 2) * dim]: the group's query heads,
then its key, then its value); RoPE as `_apply_rotary_pos_emb_bshd` applies it (non-interleaved, cos/sin of the
frequencies `RotaryEmbedding.forward` returns, cast to the model dtype); keys cached after RoPE (as
megafin/generate/rotated_key_cache.py caches them on the megatron path); SDPA with GQA and the core attention's
softmax scale; output projection and residual; RMSNorm; the SwiGLU MLP (fc1's first half is the gate); residual; the
final RMSNorm and the output layer. `unsupported` names what this does not cover
(the engine falls back to megatron's path for such models).

Tensor parallel (the trainer's live model at TP>1, megafin/eval/in_training.py): every rank of the TP group runs the
same steps in lockstep on its own shards, as megatron's parallel layers split them: the vocab-parallel embedding is
looked up where a rank holds the id and summed over the group; the QKV and fc1 (column-parallel) give each rank its
query groups and its halves of gate and up; the output projection and fc2 (row-parallel) are summed over the group,
their bias added after; the logits (column-parallel over the vocabulary) are gathered. Every rank then holds the same
logits and picks the same tokens. Sequence parallelism only lays out training activations: the weights, and so these
steps, are the same.

Pipeline parallel (the live model at PP>1): each stage runs its own layers on the hidden states the stage before sent
it (point to point, as megatron's schedules pass activations) and sends its output on; the first stage embeds, the
last applies the final norm and the output layer and broadcasts the logits over the pipeline group. With virtual
stages a rank holds several model chunks, run in megatron's order (chunk 0 of every stage, then chunk 1, ...): the
last stage's chunk hands on to the first stage's next one. Every rank then holds the same logits and picks the same
tokens, so the engine above is the same at any layout. Context parallelism splits training sequences, not weights:
one CP rank decodes alone (its RoPE table whole).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F


def unsupported(model: torch.nn.Module) -> Optional[str]:
    """Why the lean step cannot run this model (one chunk of it with virtual pipeline stages) exactly as megatron does
    (None: it can)."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.identity_op import IdentityOp

    c = model.config
    if getattr(model, "position_embedding_type", None) != "rope" or type(model.rotary_pos_emb) is not RotaryEmbedding:
        return "not plain RoPE"
    flags = ("rotary_interleaved", "qk_layernorm", "multi_latent_attention", "layernorm_zero_centered_gamma",
             "apply_residual_connection_post_layernorm", "fp32_residual_connection", "attention_output_gate",
             "num_moe_experts")
    on = [f for f in flags if getattr(c, f, None)]
    if on:
        return f"config {', '.join(on)}"
    if not (c.gated_linear_unit and c.activation_func is F.silu):
        return "MLP is not SwiGLU"
    if getattr(c, "pipeline_model_parallel_size", 1) == 1 and not (model.pre_process and model.post_process):
        return "not a whole model"
    final = (model.decoder.final_layernorm,) if model.post_process else ()
    if model.post_process and final[0] is None:
        return "no final norm"
    for layer in model.decoder.layers:
        att = layer.self_attention
        norms = (layer.input_layernorm, layer.pre_mlp_layernorm, *final)
        if not all(isinstance(n, torch.nn.RMSNorm) for n in norms):
            return "norms are not torch RMSNorm"
        if type(layer.mlp) is not MLP or not all(isinstance(getattr(att, n, None), IdentityOp)
                                                  for n in ("q_layernorm", "k_layernorm")):
            return "layer is not attention + dense MLP"
        if not isinstance(layer.cross_attention, IdentityOp):
            return "cross attention"
    return None


class _Layer:
    def __init__(self, layer: Any, tp: "_TensorParallel") -> None:
        att = layer.self_attention
        self.tp = tp
        self.number = att.layer_number
        self.norm1, self.norm2 = layer.input_layernorm, layer.pre_mlp_layernorm
        self.qkv_w, self.qkv_b = att.linear_qkv.weight, _bias(att.linear_qkv)
        self.proj_w, self.proj_b = att.linear_proj.weight, _bias(att.linear_proj)
        self.fc1_w, self.fc1_b = layer.mlp.linear_fc1.weight, _bias(layer.mlp.linear_fc1)
        self.fc2_w, self.fc2_b = layer.mlp.linear_fc2.weight, _bias(layer.mlp.linear_fc2)
        self.groups = att.num_query_groups_per_partition
        self.heads = att.num_attention_heads_per_partition
        self.dim = att.hidden_size_per_attention_head
        self.scale = att.core_attention.softmax_scale


class _TensorParallel:
    """The TP group's two collectives; at TP=1 neither runs (and the ops are the ones TP=1 always used)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.group = None
        if size > 1:
            from megatron.core import parallel_state

            self.group = parallel_state.get_tensor_model_parallel_group()

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x, group=self.group)
        return x

    def gather_last(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


class _Pipeline:
    """The pipeline group's hand-offs: hidden states to the next stage, logits from the last stage to every stage.
    At PP=1 nothing runs (every rank is first and last)."""

    def __init__(self, size: int, param: torch.Tensor, hidden: int, vocab: int) -> None:
        self.size, self.param, self.hidden, self.vocab = size, param, hidden, vocab
        self.first = self.last = True
        if size > 1:
            from megatron.core import parallel_state as ps

            self.first = ps.is_pipeline_first_stage(ignore_virtual=True)
            self.last = ps.is_pipeline_last_stage(ignore_virtual=True)
            self.prev = ps.get_pipeline_model_parallel_prev_rank()  # wraps around: virtual stages hand on to stage 0
            self.next = ps.get_pipeline_model_parallel_next_rank()
            self.group = ps.get_pipeline_model_parallel_group()
            self.last_rank = ps.get_pipeline_model_parallel_last_rank()

    def receive(self, rows: int) -> torch.Tensor:
        x = torch.empty(rows, self.hidden, dtype=self.param.dtype, device=self.param.device)
        dist.recv(x, src=self.prev)
        return x

    def send(self, x: torch.Tensor) -> None:
        dist.send(x.contiguous(), dst=self.next)

    def share_logits(self, logits: Optional[torch.Tensor], rows: int) -> torch.Tensor:
        if self.size == 1:
            return logits
        if not self.last:
            logits = torch.empty(rows, self.vocab, dtype=self.param.dtype, device=self.param.device)
        dist.broadcast(logits, src=self.last_rank, group=self.group)
        return logits


def _bias(linear: Any) -> Optional[torch.Tensor]:
    return getattr(linear, "bias", None)


def _rms(x: torch.Tensor, norm: torch.nn.RMSNorm) -> torch.Tensor:
    return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)


class LeanDecoder:
    """The model's parameters as the lean steps read them; `prefill` starts one batch. `chunks`: this rank's model,
    one module, or its chunks in order with virtual pipeline stages."""

    def __init__(self, chunks: list[torch.nn.Module]) -> None:
        first, last = chunks[0], chunks[-1]
        self.tp = _TensorParallel(first.config.tensor_model_parallel_size)
        self.chunks = [[_Layer(layer, self.tp) for layer in chunk.decoder.layers] for chunk in chunks]
        self.layers = [lay for chunk in self.chunks for lay in chunk]  # LeanBatch's caches follow this order
        self.param = self.layers[0].qkv_w  # dtype and device, on every stage
        self.pipe = _Pipeline(first.config.pipeline_model_parallel_size, self.param, first.config.hidden_size,
                              first.vocab_size)
        if first.pre_process:
            words = first.embedding.word_embeddings
            self.vocab_start = int(getattr(words, "vocab_start_index", 0))  # this rank's rows of the vocabulary
            self.embedding = words.weight
        if last.post_process:
            self.final_norm = last.decoder.final_layernorm
            self.output = (last.shared_embedding_or_output_weight() if last.share_embeddings_and_output_weights
                           else last.output_layer.weight)
            self.output_b = _bias(last.output_layer)
        self.rope = first.rotary_pos_emb

    def through_stages(self, embed: Callable[[], torch.Tensor], rows: int,
                       layer: Callable[[int, torch.Tensor], torch.Tensor]) -> Optional[torch.Tensor]:
        """This rank's chunks in order: each starts from the embedding (the first stage's first chunk) or the hidden
        states [rows, h] the stage before sent, runs `layer(i, x)` for its layers (i: the index in self.layers),
        and hands its output on; the last stage's last chunk returns it (None on every other rank)."""
        pipe, i = self.pipe, 0
        for v, layers in enumerate(self.chunks):
            x = embed() if pipe.first and v == 0 else pipe.receive(rows)
            for _ in layers:
                x = layer(i, x)
                i += 1
            if pipe.last and v == len(self.chunks) - 1:
                return x
            pipe.send(x)
        return None

    def prefill(self, prompts: list[list[int]], total: int) -> tuple["LeanBatch", torch.Tensor]:
        """A batch of `total` cache slots per row with the prompts written LEFT-PADDED (right-aligned at the
        longest), and the logits [batch, padded vocab] after each prompt's last token."""
        batch = LeanBatch(self, prompts, total)
        longest = max(len(p) for p in prompts)
        last = []
        # One prompt at a time, causal among its own tokens: no compute on padding, no mask. RoPE positions are
        # cache slots (pad .. longest - 1), as megatron's static cache gives them.
        for row, prompt in enumerate(prompts):
            pad = longest - len(prompt)
            cos, sin = batch.cos[pad:longest, None, None], batch.sin[pad:longest, None, None]

            def layer(i: int, x: torch.Tensor) -> torch.Tensor:  # x [n, h]
                lay, (kc, vc) = self.layers[i], batch.cache[i]
                q, k, v = _qkv(lay, x, cos, sin)  # [n, g, r, d], [n, g, d], [n, g, d]
                kc[row, :, pad:longest] = k.transpose(0, 1)
                vc[row, :, pad:longest] = v.transpose(0, 1)
                a = F.scaled_dot_product_attention(q.flatten(1, 2).transpose(0, 1).unsqueeze(0),
                                                   kc[row:row + 1, :, pad:longest], vc[row:row + 1, :, pad:longest],
                                                   is_causal=True, scale=lay.scale, enable_gqa=q.size(2) != 1)
                return _after_attention(lay, x, a[0].transpose(0, 1).reshape(x.size(0), -1))

            out = self.through_stages(lambda: self.embed(torch.tensor(prompt, device=self.param.device)),
                                      len(prompt), layer)
            if out is not None:
                last.append(out[-1:])
        return batch, self.pipe.share_logits(self.logits(torch.cat(last)) if last else None, len(prompts))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.embedding)
        local = ids - self.vocab_start
        elsewhere = (local < 0) | (local >= self.embedding.size(0))  # another rank's rows: zeros here, summed
        x = F.embedding(local.masked_fill(elsewhere, 0), self.embedding).masked_fill(elsewhere.unsqueeze(-1), 0)
        return self.tp.sum(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(_rms(x, self.final_norm), self.output, self.output_b)
        return out if self.tp.size == 1 else self.tp.gather_last(out)


def _qkv(lay: _Layer, x: torch.Tensor, cos: torch.Tensor,
         sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query [n, groups, heads/groups, dim] and key [n, groups, dim] after RoPE, value [n, groups, dim]."""
    g, d = lay.groups, lay.dim
    r = lay.heads // g
    qkv = F.linear(_rms(x, lay.norm1), lay.qkv_w, lay.qkv_b).view(x.size(0), g, r + 2, d)
    qk = _rotate(qkv[:, :, :r + 1], cos, sin)  # the group's query heads and its key, rotated in one go
    return qk[:, :, :r], qk[:, :, r], qkv[:, :, r + 1]


def _after_attention(lay: _Layer, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Output projection and residual, then the SwiGLU MLP and residual."""
    x = x + _row_parallel(lay.tp, a, lay.proj_w, lay.proj_b)
    gate, up = F.linear(_rms(x, lay.norm2), lay.fc1_w, lay.fc1_b).chunk(2, dim=-1)  # this rank's gate | up halves
    return x + _row_parallel(lay.tp, F.silu(gate) * up, lay.fc2_w, lay.fc2_b)


def _row_parallel(tp: _TensorParallel, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    if tp.size == 1:
        return F.linear(x, w, b)
    y = tp.sum(F.linear(x, w))  # partial products over this rank's input columns
    return y if b is None else y + b


class LeanBatch:
    """One batch's KV cache ([batch, groups, len, dim] per layer; keys after RoPE) and its decode steps: `step` runs
    one token per row, `keep` drops finished rows."""

    def __init__(self, dec: LeanDecoder, prompts: list[list[int]], total: int) -> None:
        self.dec = dec
        w = dec.param
        # Zeroed: a padding slot is masked, and a masked slot must not hold NaN (0 * NaN in SDPA).
        self.cache = [tuple(torch.zeros(len(prompts), lay.groups, total, lay.dim, dtype=w.dtype, device=w.device)
                            for _ in "kv") for lay in dec.layers]
        # RotaryEmbedding.forward: [len, 1, 1, rot_dim], as GPTModel asks for them; packed_seq=True keeps the whole
        # table under context parallelism (one CP rank decodes every position: weights are whole on each)
        freqs = dec.rope(total, packed_seq=True)
        self.cos, self.sin = (f(freqs).to(w.dtype).view(total, -1) for f in (torch.cos, torch.sin))
        # SDPA's boolean mask: True = attend, a row's padding slots hidden. None when no row is padded.
        longest = max(len(p) for p in prompts)
        pads = torch.tensor([longest - len(p) for p in prompts], device=w.device)
        slots = torch.arange(total, device=w.device)
        self.visible = (slots.view(1, 1, 1, -1) >= pads.view(-1, 1, 1, 1)) if int(pads.max()) else None

    def keep(self, index: torch.Tensor) -> None:
        self.cache = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cache]
        if self.visible is not None:
            self.visible = self.visible.index_select(0, index)
            if bool(self.visible.all()):
                self.visible = None

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """Logits [batch, padded vocab] after `tokens` [batch] written at cache slot `t` (RoPE position t)."""
        dec = self.dec
        b = tokens.size(0)
        cos, sin = self.cos[t], self.sin[t]
        mask = self.visible[..., :t + 1] if self.visible is not None else None

        def layer(i: int, x: torch.Tensor) -> torch.Tensor:  # x [b, h]
            lay, (kc, vc) = dec.layers[i], self.cache[i]
            q, k, v = _qkv(lay, x, cos, sin)
            kc[:, :, t] = k
            vc[:, :, t] = v
            a = F.scaled_dot_product_attention(q.reshape(b, -1, 1, lay.dim), kc[:, :, :t + 1], vc[:, :, :t + 1],
                                               attn_mask=mask, scale=lay.scale, enable_gqa=q.size(2) != 1)
            return _after_attention(lay, x, a.view(b, -1))

        out = dec.through_stages(lambda: dec.embed(tokens), b, layer)
        return dec.pipe.share_logits(dec.logits(out) if out is not None else None, b)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """megatron's non-interleaved RoPE on the last dim (rot_dim = cos.size(-1); the rest passes through)."""
    rot = cos.size(-1)
    if rot == x.size(-1):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin
    head, rest = x[..., :rot], x[..., rot:]
    x1, x2 = head.chunk(2, dim=-1)
    return torch.cat((head * cos + torch.cat((-x2, x1), dim=-1) * sin, rest), dim=-1)
