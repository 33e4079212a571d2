"""Every place megafin depends on a megatron-core internal (a private name, a rebound method, a copied method, a
shadowed attribute), in one index: what it is, who uses it, why, and what megafin needs of it.

megafin otherwise extends megatron-core through its public seams (ModuleSpec layer specs, GPTModel subclasses,
dist-checkpointing strategies, schedules). tests/unit/test_mcore_internals.py checks every entry against the
installed megatron-core, so raising the `megatron-core<0.20` pin in setup.py starts with that test: an entry that
fails names the file to revisit. Add an entry with any new use of an internal."""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Internal:
    target: str  # "module:Qualified.name"
    used_by: str  # the megafin file that depends on it
    why: str
    params: tuple[str, ...] = ()  # parameter names megafin passes or relies on (callables only)


INTERNALS: tuple[Internal, ...] = (
    # ---- start-up (megafin/runtime/deferred_compile.py): swapped right after megatron.core.jit runs
    Internal("megatron.core.jit:jit_fuser", "megafin/runtime/deferred_compile.py",
             "torch.compile there; replaced by a wrapper that calls torch.compile at a function's first call, before "
             "the fusion modules decorate with it (`from megatron.core.jit import jit_fuser` at their import)"),
    # ---- CPU execution (megafin/runtime/cpu_compat.py): rebinds these while running without CUDA
    Internal("megatron.core.tensor_parallel.random:_set_cuda_rng_state", "megafin/runtime/cpu_compat.py",
             "replaced by a CPU-generator version (the RNG tracker sets CUDA RNG state)", ("new_state",)),
    Internal("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer.__init__", "megafin/runtime/cpu_compat.py",
             "wrapped: checks param.type() against CUDA type names"),
    Internal("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer.get_parameter_state_dp_zero",
             "megafin/runtime/cpu_compat.py", "wrapped: calls tensor.cuda()"),
    Internal("megatron.core.optimizer.optimizer:Float16OptimizerWithFloat16Params.__init__",
             "megafin/runtime/cpu_compat.py", "wrapped: checks param.type() (bf16)"),
    Internal("megatron.core.optimizer.clip_grads:clip_grad_by_total_norm_fp32", "megafin/runtime/cpu_compat.py",
             "wrapped, and rebound where optimizer/distrib_optimizer imported it by name"),
    Internal("megatron.core.models.common.language_module.language_module:"
             "LanguageModule.setup_embeddings_and_output_layer", "megafin/runtime/cpu_compat.py",
             "wrapped: tied embeddings at pp>1 call .cuda()"),
    Internal("megatron.core.models.common.embeddings.rotary_pos_embedding:RotaryEmbedding.forward",
             "megafin/runtime/cpu_compat.py", "wrapped: under parallel.cp > 1 it slices the table per CP rank "
             "(get_pos_emb_on_this_cp_rank), which calls .cuda()", ("max_seq_len", "packed_seq", "cp_group")),
    Internal("megatron.core.models.common.embeddings.rotary_pos_embedding:RotaryEmbedding.forward",
             "megafin/generate/lean_decode.py", "called with packed_seq=True for the whole table: under parallel.cp "
             "> 1 it would slice it per CP rank, and the live model is decoded by one CP rank",
             ("max_seq_len", "packed_seq")),
    # ---- context parallelism without Transformer Engine (megafin/models/cp_attention.py)
    Internal("megatron.core.transformer.dot_product_attention:DotProductAttention.__init__",
             "megafin/models/cp_attention.py", "built from a config copy with context_parallel_size=1: its only use "
             "of it is the assert that refuses cp > 1 (the subclass attends over the gathered sequence itself)",
             ("config", "layer_number", "attn_mask_type", "attention_type", "pg_collection")),
    # ---- torch Adam fallback state (megafin/train/optimizer_fixes.py): rebinds three DistributedOptimizer methods
    Internal("megatron.core.optimizer.distrib_optimizer:HAVE_APEX_OR_TE", "megafin/train/optimizer_fixes.py",
             "the fix applies only to the torch-Adam fallback"),
    Internal("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer._set_main_param_and_optimizer_states",
             "megafin/train/optimizer_fixes.py", "rebound per instance: keeps Adam's step tensor on load",
             ("model_param", "tensors")),
    Internal("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer.model_param_group_index_map",
             "megafin/train/optimizer_fixes.py", "read by the rebound method (an instance attribute)"),
    Internal("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer.sharded_state_dict",
             "megafin/train/optimizer_fixes.py", "rebound per instance", ("model_sharded_state_dict", "is_loading")),
    # ---- a behaviour megafin works around (megafin/models/fusions.py)
    Internal("megatron.core.fusions.fused_cross_entropy:calculate_gradients", "megafin/models/fusions.py",
             "returns the logits' gradient in bf16 whatever their dtype: model.fusions.cross_entropy stays off for "
             "fp32 and fp16 runs without TE (tests/unit/test_fusions.py checks the cast is still there)",
             ("softmax", "grad_output", "target_mask", "masked_target_1d")),
    # ---- GPTModel internals (megafin/models/logprob_model.py, megafin/models/gpt.py)
    Internal("megatron.core.models.gpt.gpt_model:GPTModel.rotary_pos_emb", "megafin/models/logprob_model.py",
             "shadowed through __dict__ for one forward (per-token RoPE positions of shared-prompt packs)"),
    Internal("megatron.core.models.gpt.gpt_model:GPTModel.output_layer", "megafin/models/logprob_model.py",
             "shadowed through __dict__ for one forward (hidden states to the log-prob kernel)"),
    Internal("megatron.core.models.common.embeddings.rotary_pos_embedding:RotaryEmbedding._apply_scaling",
             "megafin/models/gpt.py", "Llama-3 RoPE scaling with all four HF parameters (GPTModel passes only "
             "the factor)", ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")),
    # ---- RoPE from shared cos/sin tables (megafin/models/rope.py): a SelfAttention subclass in the layer spec
    Internal("megatron.core.transformer.attention:SelfAttention.get_query_key_value_tensors",
             "megafin/models/rope.py", "overridden: q and k rotated where megatron returns them (split_qkv)",
             ("hidden_states", "key_value_states", "output_gate", "split_qkv")),
    Internal("megatron.core.transformer.attention:Attention.forward", "megafin/models/rope.py",
             "called with rotary_pos_emb=None (RoPE applied in the override above); falls back to megatron's RoPE "
             "when any of these is set", ("rotary_pos_emb", "rotary_pos_cos", "inference_context",
                                          "packed_seq_params")),
    Internal("megatron.core.models.common.embeddings.rope_utils:_apply_rotary_pos_emb_bshd", "megafin/models/rope.py",
             "reproduced bit for bit (tests/unit/test_rope.py): non-interleaved, cos/sin cast to q/k's dtype",
             ("t", "freqs", "rotary_interleaved", "mscale")),
    Internal("megatron.core.models.common.embeddings.rope_utils:_apply_rotary_pos_emb_thd", "megafin/models/rope.py",
             "its row choice reproduced: per document from 0, or per token when the table has one row per token",
             ("t", "cu_seqlens", "freqs")),
    # ---- generation (megafin/generate/rotated_key_cache.py): overridden in a subclass of the self-attention
    Internal("megatron.core.transformer.attention:Attention._adjust_key_value_for_inference",
             "megafin/generate/rotated_key_cache.py", "keys cached after RoPE in the static KV cache (the override "
             "rotates the new keys, calls it with rotary_pos_emb=None, returns (q_pos_emb, None))",
             ("inference_context", "query", "key", "value", "rotary_pos_emb")),
    Internal("megatron.core.inference.contexts.static_context:StaticInferenceContext.key_value_memory_dict",
             "megafin/generate/engines/megafin_engine.py", "buffers preallocated zeroed per layer number, and rows "
             "dropped from them as sequences finish"),
    # ---- lean decode steps (megafin/generate/lean_decode.py): reads the modules' parameters and attributes and
    # reproduces their forward in plain torch ops (the fused QKV's per-query-group layout, RoPE as applied)
    Internal("megatron.core.transformer.attention:Attention.num_query_groups_per_partition",
             "megafin/generate/lean_decode.py", "splits the fused QKV output per query group"),
    Internal("megatron.core.transformer.attention:Attention.num_attention_heads_per_partition",
             "megafin/generate/lean_decode.py", "query heads per group"),
    Internal("megatron.core.transformer.attention:Attention.hidden_size_per_attention_head",
             "megafin/generate/lean_decode.py", "head dim"),
    Internal("megatron.core.transformer.attention:SelfAttention.get_query_key_value_tensors",
             "megafin/generate/lean_decode.py", "the [groups, (heads/groups + 2) * dim] QKV layout reproduced",
             ("hidden_states",)),
    Internal("megatron.core.models.common.embeddings.rope_utils:_apply_rotary_pos_emb_bshd",
             "megafin/generate/lean_decode.py", "reproduced: non-interleaved rotation, cos/sin cast to the dtype",
             ("t", "freqs", "rotary_interleaved")),
    Internal("megatron.core.models.common.embeddings.rotary_pos_embedding:RotaryEmbedding.forward",
             "megafin/generate/lean_decode.py", "called for the frequencies [len, 1, 1, rot_dim]", ("max_seq_len",)),
    Internal("megatron.core.transformer.dot_product_attention:DotProductAttention.softmax_scale",
             "megafin/generate/lean_decode.py", "the attention's softmax scale"),
    # ---- restricted checkpoint loading (megafin/checkpoint/dist_load.py): a copy of
    # TorchDistLoadShardedStrategy.load that unpickles nothing
    Internal("megatron.core.dist_checkpointing.strategies.torch:TorchDistLoadShardedStrategy.load",
             "megafin/checkpoint/dist_load.py", "copied, with objects read by torch_load_restricted",
             ("sharded_state_dict", "checkpoint_dir")),
    Internal("megatron.core.dist_checkpointing.strategies.torch:MCoreLoadPlanner", "megafin/checkpoint/dist_load.py",
             "subclassed (objects are read restricted)"),
    Internal("megatron.core.dist_checkpointing.strategies.torch:_replace_state_dict_keys_with_sharded_keys",
             "megafin/checkpoint/dist_load.py", "called by the copied load"),
    Internal("megatron.core.dist_checkpointing.strategies.torch:mcore_to_pyt_state_dict",
             "megafin/checkpoint/dist_load.py", "called by the copied load"),
    Internal("megatron.core.dist_checkpointing.strategies.torch:_unwrap_pyt_sharded_tensor",
             "megafin/checkpoint/dist_load.py", "called by the copied load"),
    Internal("megatron.core.dist_checkpointing.strategies.torch:_replace_sharded_keys_with_state_dict_keys",
             "megafin/checkpoint/dist_load.py", "called by the copied load"),
    Internal("megatron.core.dist_checkpointing.strategies.torch:_restore_dict_types",
             "megafin/checkpoint/dist_load.py", "called by the copied load"),
    Internal("megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader:"
             "CachedMetadataFileSystemReader", "megafin/checkpoint/dist_load.py", "the copied load's reader"),
    Internal("megatron.core.dist_checkpointing.strategies.common:COMMON_STATE_FNAME", "megafin/checkpoint/dist_load.py",
             "the common-state file read restricted"),
    Internal("megatron.core.dist_checkpointing.strategies.common:TorchCommonLoadStrategy",
             "megafin/checkpoint/dist_load.py", "subclassed (common state read restricted)"),
    Internal("megatron.core.dist_checkpointing.mapping:ShardedObject.empty_from_unique_key",
             "megafin/checkpoint/dist_load.py", "sharded metadata of objects"),
    Internal("torch.distributed.checkpoint._traverse:set_element", "megafin/checkpoint/dist_load.py",
             "the copied planner's object placement (a torch internal)"),
    # ---- in-process checkpoint writes (megafin/checkpoint/in_process_save.py): no spawned writer processes
    Internal("megatron.core.dist_checkpointing.strategies.torch:TorchDistSaveShardedStrategy."
             "_get_save_and_finalize_callbacks", "megafin/checkpoint/in_process_save.py",
             "overridden: the write runs in threads of this process", ("writer", "save_state_dict_ret")),
    Internal("megatron.core.dist_checkpointing.strategies.filesystem_async:_results_queue",
             "megafin/checkpoint/in_process_save.py", "set to a thread queue instead of a multiprocessing one"),
    Internal("megatron.core.dist_checkpointing.strategies.filesystem_async:FileSystemWriterAsync.write_preloaded_data",
             "megafin/checkpoint/in_process_save.py", "called per file from threads"),
    Internal("megatron.core.dist_checkpointing.strategies.async_utils:AsyncRequest._replace",
             "megafin/checkpoint/in_process_save.py", "a NamedTuple's replace: async_fn and its arguments",),
)


def resolve(target: str) -> Any:
    """The object a target names (raises ImportError / AttributeError when it moved). An instance attribute (a
    submodule GPTModel registers in __init__, a map the optimizer builds) resolves to None when some megatron class
    of the instance's type assigns it (`self.name = ...`, also in a tuple assignment)."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        if not hasattr(obj, part) and inspect.isclass(obj) and _assigned_by(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _assigned_by(cls: type, name: str) -> bool:
    assignment = re.compile(rf"^\s*\(?\s*self\.{name}\b[^=\n]*=(?!=)", re.MULTILINE)
    for klass in cls.__mro__:
        if not klass.__module__.startswith("megatron"):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if assignment.search(source):
            return True
    return False


def problem(internal: Internal) -> Optional[str]:
    """Why the installed megatron-core breaks this dependency, or None."""
    try:
        obj = resolve(internal.target)
    except (ImportError, AttributeError) as err:
        return f"{internal.target} is gone ({type(err).__name__}: {err}); revisit {internal.used_by}"
    if internal.params:
        try:
            names = set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            return f"{internal.target} is no longer a callable with a signature; revisit {internal.used_by}"
        missing = [p for p in internal.params if p not in names]
        if missing:
            return (f"{internal.target} no longer takes {', '.join(missing)} (it takes {', '.join(sorted(names))}); "
                    f"revisit {internal.used_by}")
    return None
