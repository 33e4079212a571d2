"""Checkpoint conversion Hugging Face <-> megafin (megatron-core dist_checkpointing), one adapter per family."""
from megafin.convert.errors import ConvertError

__all__ = ["ConvertError"]
