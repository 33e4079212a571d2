"""GPTModel whose training loss skips work the loss does not use.

Two independent savings, both only on the loss path (a forward with labels); forwards without labels (inference)
still return ordinary logits, and the state dict and checkpoint keys are GPTModel's:

- `model.loss_positions: targets`: the output layer and the cross entropy run only at the positions the loss
  mask selects. Preference pairs and instruction data put their loss on the response alone (FPB pairs: 3% of the
  tokens), so the [tokens, vocab] projection and softmax at every prompt token were pure waste. Per-token losses at
  the other positions are returned as 0 with no gradient, which is what the stages' `loss * mask` made of them.
- `model.logprob_backend: triton`: per-token -log p(label) from the packed log-prob kernel (kernels.packed_logprobs),
  chunked over the vocabulary so the logits are never materialized.

How: during a training forward the output layer hands its input and weight through instead of multiplying them,
and `compute_language_model_loss` does the selection and the projection. The kernel all-reduces the max/sum-exp and
the hidden-state gradient over the tensor-parallel group itself, so the output layer's own input-gradient
all-reduce must not also run, which is why the layer is bypassed rather than wrapped. With sequence parallelism the
hidden states reach the output layer scattered over the sequence, so there every position is computed.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel


class _HiddenPassthrough(torch.nn.Module):
    """Stands in for the output layer during a training forward: returns the hidden states, keeps the weight."""

    def __init__(self, output_layer: torch.nn.Module) -> None:
        super().__init__()
        self.inner = output_layer
        self.active = False
        self.weight_used: Optional[torch.Tensor] = None

    @property
    def weight(self) -> Optional[torch.Tensor]:
        """The output layer's weight: with tied embeddings, a last pipeline stage takes it from here."""
        return self.inner.weight

    def forward(self, hidden: torch.Tensor, weight: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        if not self.active:
            return self.inner(hidden, weight=weight, **kwargs)
        self.weight_used = weight if weight is not None else self.inner.weight
        return hidden, None


def loss_rows(loss_mask: torch.Tensor) -> Optional[torch.Tensor]:
    """Indices into the [s*b] flattening of the output layer's input ([s, b, h]) of the positions with a loss;
    None when every position has one. An all-zero mask keeps one row, so the loss stays part of the graph."""
    flat = loss_mask.transpose(0, 1).reshape(-1)
    if bool(flat.all()):
        return None
    rows = flat.nonzero().squeeze(1)
    return rows if rows.numel() else rows.new_zeros(1)


@contextlib.contextmanager
def _rope_at_positions(model: GPTModel, position_ids: torch.Tensor) -> Iterator[None]:
    """RoPE at each token's own position_ids instead of restarting at 0 in every THD document: a shared-prompt
    rejected response continues at its prompt's length. megatron-core's THD RoPE applies frequencies token by token
    when their count equals the packed length, so the rotary module is stood in for by one that returns them."""
    rotary = model.rotary_pos_emb
    positions = position_ids.reshape(-1)

    def per_token(max_seq_len: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        table = rotary(int(positions.max()) + 1, *args, **kwargs)  # [max position + 1, 1, 1, dim]
        return table.index_select(0, positions.to(table.device))

    per_token.get_rotary_seq_len = rotary.get_rotary_seq_len  # type: ignore[attr-defined]
    model.__dict__["rotary_pos_emb"] = per_token  # shadows the registered module for this forward only
    try:
        yield
    finally:
        del model.__dict__["rotary_pos_emb"]


class LogprobGPTModel(GPTModel):
    def __init__(self, *args: Any, logprob_backend: str = "megatron", loss_positions: str = "all",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logprob_backend = logprob_backend
        self.targets_only = loss_positions == "targets" and not self.config.sequence_parallel
        # Kept out of nn.Module registration, so state dicts and checkpoints see only `output_layer`.
        self.__dict__["_passthrough"] = _HiddenPassthrough(self.output_layer) if self.post_process else None
        self._loss_mask: Optional[torch.Tensor] = None

    def forward(self, *args: Any, labels: Optional[torch.Tensor] = None, loss_mask: Optional[torch.Tensor] = None,
                **kwargs: Any) -> torch.Tensor:
        params = kwargs.get("packed_seq_params")
        if params is not None and getattr(params, "attn_prefix", None):
            with _rope_at_positions(self, args[1]):
                return self._forward(*args, labels=labels, loss_mask=loss_mask, **kwargs)
        return self._forward(*args, labels=labels, loss_mask=loss_mask, **kwargs)

    def _forward(self, *args: Any, labels: Optional[torch.Tensor] = None, loss_mask: Optional[torch.Tensor] = None,
                 **kwargs: Any) -> torch.Tensor:
        if labels is None or not self.post_process:
            return super().forward(*args, labels=labels, **kwargs)
        layer = self.output_layer
        self.__dict__["output_layer"] = self._passthrough  # bypass nn.Module registration: same parameters
        self._passthrough.active = True
        self._loss_mask = loss_mask if self.targets_only else None
        try:
            return super().forward(*args, labels=labels, **kwargs)
        finally:
            self._passthrough.active = False
            self._loss_mask = None
            del self.__dict__["output_layer"]
            assert self.output_layer is layer

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self._passthrough is None or not self._passthrough.active:
            return super().compute_language_model_loss(labels, logits)
        hidden = logits  # [s, b, h]: the passthrough returned the output layer's input
        s, b, h = hidden.shape
        weight = self._passthrough.weight_used
        hidden = hidden.reshape(s * b, h)
        labels = labels.transpose(0, 1).reshape(-1)  # [b, s] -> [s*b], the order of hidden's rows
        rows = loss_rows(self._loss_mask.to(labels.device)) if self._loss_mask is not None else None
        if rows is not None:
            hidden, labels = hidden.index_select(0, rows), labels.index_select(0, rows)
        n = labels.numel()
        if self.logprob_backend == "triton":
            import kernels

            tp = parallel_state.get_tensor_model_parallel_world_size()
            loss = -kernels.packed_logprobs(
                hidden, weight, labels,
                tp_group=parallel_state.get_tensor_model_parallel_group() if tp > 1 else None)
        else:
            logits, _ = self._passthrough.inner(hidden.unsqueeze(1), weight=weight)  # [n, 1, vocab/tp]
            loss = super().compute_language_model_loss(labels.unsqueeze(0), logits).reshape(n)
        if rows is not None:
            loss = loss.new_zeros(s * b).index_copy(0, rows, loss)
        return loss.reshape(s, b).transpose(0, 1).contiguous()  # [b, s], as megatron's loss
