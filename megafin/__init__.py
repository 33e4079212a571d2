"""megafin: FinDAP-style domain-adaptive post-training on megatron-core."""

from megafin.runtime.deferred_compile import install as _defer_megatron_compile

__version__ = "0.1.0"

# Before any megafin module imports megatron-core: its fusion functions compile at first call, not at import (3-4 s
# of every process's start-up on 2 cores: megafin/runtime/deferred_compile.py). Imports nothing.
_defer_megatron_compile()
