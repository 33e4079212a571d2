"""Continual-pretraining data: Megatron indexed corpora blended by weight through BlendedMegatronDatasetBuilder."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from megafin.config.schema import Config
from megafin.data.tokenizer import HFTokenizerAdapter


def build_pretrain_datasets(cfg: Config, tokenizer: HFTokenizerAdapter, num_train_samples: int,
                            num_valid_samples: int, cache_dir: Optional[str] = None) -> Tuple[Any, Optional[Any]]:
    """Train and validation datasets of `seq_length + 1`-token windows over the weighted blend."""
    paths, weights = [], []
    for entry in cfg.data.blend:
        paths.append(entry.path)
        weights.append(entry.weight)
    ds_cfg = GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.data.seq_length,
        blend=(paths, weights),
        split=cfg.data.split,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal SDPA/TE needs no explicit mask
        path_to_cache=cache_dir,
        mmap_bin_files=True,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [num_train_samples, max(num_valid_samples, 1), 0], lambda: True, ds_cfg
    ).build()
    return train, valid


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the tensor fields; BlendedDataset's `dataset_id` (which corpus a sample came from) stays a list."""
    return {key: torch.stack([s[key] for s in samples]) if torch.is_tensor(samples[0][key]) else
            [s[key] for s in samples] for key in samples[0]}
