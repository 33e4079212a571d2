"""Datasets and collate function for a run, chosen by `data.format`: one place the trainer asks."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Tuple

from megafin.config.schema import Config
from megafin.data.tokenizer import HFTokenizerAdapter


def build_datasets(cfg: Config, tokenizer: HFTokenizerAdapter, num_train_samples: int, num_valid_samples: int,
                   cache_dir: Optional[str]) -> Tuple[Any, Optional[Any], Callable[[list], Any]]:
    if cfg.data.format == "pretrain":
        from megafin.data.pretrain import build_pretrain_datasets, collate

        train, valid = build_pretrain_datasets(cfg, tokenizer, num_train_samples, num_valid_samples, cache_dir)
        return train, valid, collate
    from megafin.data.packed_collate import collate_packed
    from megafin.data.packed_dataset import PackedSequences, PackedSplit, split_packs

    packs = PackedSequences(cfg.data.blend[0].path)
    train_ids, valid_ids = split_packs(packs, cfg.data.split, cfg.train.seed)
    train = PackedSplit(packs, train_ids, cfg.train.seed)
    valid = PackedSplit(packs, valid_ids, cfg.train.seed + 1) if len(valid_ids) else None
    pad_id = int(packs.meta.get("pad_id", tokenizer.eod))
    return train, valid, partial(collate_packed, seq_length=cfg.data.seq_length, pad_id=pad_id,
                                 fixed_length=packed_fixed_length(cfg), share_prompt=shares_prompt(cfg))


def shares_prompt(cfg: Config) -> bool:
    """Whether the run's stage marks shared prompts in packed micro-batches (preference pairs, dpo.share_prompt)."""
    from megafin.stages import stage_class

    return stage_class(cfg.stage).shares_prompt(cfg)


def packed_fixed_length(cfg: Config) -> bool:
    """Packed micro-batches keep a fixed length only where shapes must agree: across pipeline stages."""
    return cfg.parallel.pp > 1


def packed_prefix_files(prefix: str) -> list[str]:
    return [f"{prefix}_meta.json"] + [f"{prefix}_{name}{ext}" for name in ("tokens", "loss_mask", "doc_lens")
                                       for ext in (".bin", ".idx")]


__all__ = ["build_datasets", "packed_prefix_files"]
