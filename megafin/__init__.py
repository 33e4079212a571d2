"""megafin: FinDAP-style domain-adaptive post-training on megatron-core."""

__version__ = "0.1.0"
