"""GPTModel whose training loss comes from the packed log-prob kernel (kernels.packed_logprobs): per-token
-log p(label) straight from the final hidden states and the (vocab-parallel) output weight, chunked over the
vocabulary so the [tokens, vocab] logits are never materialized. Selected by `model.logprob_backend: triton`
(auto: on CUDA). Forwards without labels (inference) still return ordinary logits.

Only the loss path changes: when labels are given, the output layer hands its input and weight through instead of
multiplying them, and `compute_language_model_loss` calls the kernel. The kernel all-reduces the max/sum-exp and
the hidden-state gradient over the tensor-parallel group itself, so the output layer's own input-gradient
all-reduce must not also run, which is why the layer is bypassed rather than wrapped.
"""
from __future__ import annotations

from typing import Any, Optional

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

    def forward(self, hidden: torch.Tensor, weight: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        if not self.active:
            return self.inner(hidden, weight=weight, **kwargs)
        self.weight_used = weight if weight is not None else self.inner.weight
        return hidden, None


class KernelLogprobGPTModel(GPTModel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Kept out of nn.Module registration, so state dicts and checkpoints see only `output_layer`.
        self.__dict__["_passthrough"] = _HiddenPassthrough(self.output_layer) if self.post_process else None

    def forward(self, *args: Any, labels: Optional[torch.Tensor] = None, **kwargs: Any) -> torch.Tensor:
        if labels is None or not self.post_process:
            return super().forward(*args, labels=labels, **kwargs)
        layer = self.output_layer
        self.__dict__["output_layer"] = self._passthrough  # bypass nn.Module registration: same parameters
        self._passthrough.active = True
        try:
            return super().forward(*args, labels=labels, **kwargs)
        finally:
            self._passthrough.active = False
            del self.__dict__["output_layer"]
            assert self.output_layer is layer

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self._passthrough is None or not self._passthrough.active:
            return super().compute_language_model_loss(labels, logits)
        import kernels

        hidden = logits  # [s, b, h]: the passthrough returned the output layer's input
        s, b, h = hidden.shape
        tp = parallel_state.get_tensor_model_parallel_world_size()
        logp = kernels.packed_logprobs(hidden.reshape(s * b, h), self._passthrough.weight_used,
                                       labels.transpose(0, 1).reshape(-1),
                                       tp_group=parallel_state.get_tensor_model_parallel_group() if tp > 1 else None)
        return (-logp).reshape(s, b).transpose(0, 1).contiguous()  # [b, s], as megatron's loss
