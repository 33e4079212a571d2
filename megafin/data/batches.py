"""Deterministic micro-batches addressed by consumed samples: resuming needs only that one number."""
from __future__ import annotations

from typing import Any, Callable, Iterator


class MicroBatches:
    """Global batch `b` of the run covers dataset samples [b*G, (b+1)*G); rank r of DP size D takes the r-th
    slice of each micro-batch round, as Megatron-LM's pretraining sampler does."""

    def __init__(self, dataset: Any, collate: Callable[[list], Any], global_batch_size: int,
                 micro_batch_size: int, dp_rank: int, dp_size: int) -> None:
        self.dataset = dataset
        self.collate = collate
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    @property
    def num_micro_batches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def global_batch(self, consumed_samples: int) -> Iterator[Any]:
        """This rank's micro-batches of the global batch that starts at `consumed_samples`."""
        per_round = self.micro_batch_size * self.dp_size
        for m in range(self.num_micro_batches):
            start = consumed_samples + m * per_round + self.dp_rank * self.micro_batch_size
            idx = [start + i for i in range(self.micro_batch_size)]  # datasets map indices past an epoch themselves
            yield self.collate([self.dataset[i] for i in idx])
