"""The decoder every family builds: a megatron-core GPTModel (RMSNorm, SwiGLU, RoPE, GQA, q/k/v biases when the
family has them). Architecture only (no data, no training)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megafin.config.schema import Config, ModelConfig
from megafin.models.backends import resolve_backends
from megafin.models.fusions import transformer_config_flags
from megafin.models.layout import padded_vocab_size
from megafin.models.spec import decoder_layer_spec, uses_activation_module

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


def transformer_config(cfg: Config, initialize: bool = True) -> TransformerConfig:
    """initialize=False: the weights are loaded right after the build (train.init_from), so none is drawn; each rank
    allocates only its own shards, on the GPU where there is one, instead of every full weight on the host."""
    m, par = cfg.model, cfg.parallel
    dtype = _DTYPES[cfg.precision.dtype]
    on_cuda = torch.cuda.is_available()
    kwargs = {}
    if cfg.precision.dtype == "fp8":
        # Transformer Engine's recipes; validation already refused fp8 without CUDA+TE.
        kwargs.update(fp8="hybrid", fp8_recipe=cfg.precision.fp8_recipe)
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.hidden_size // m.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        attention_softmax_in_fp32=m.attention_softmax_in_fp32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_std,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        sequence_parallel=par.sequence_parallel,
        context_parallel_size=par.cp,
        cp_comm_type=par.cp_comm_type if par.cp > 1 else None,  # Transformer Engine's exchange (te backend only)
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=cfg.precision.dtype in ("bf16", "fp8"),
        # Fused kernels where this machine has them (model.fusions, settled by config resolution); all off on CPU.
        **transformer_config_flags(m.fusions, cfg.precision.dtype),
        # CPU init builds each full weight and splits it, so every TP/PP layout starts from identical weights.
        use_cpu_initialization=initialize or not on_cuda,
        perform_initialization=initialize,
        # Loss is a sum over tokens; the step divides by the global token count (not a mean of means).
        calculate_per_token_loss=True,
        batch_p2p_sync=False,  # avoids a torch.cuda.synchronize in p2p_communication on CPU; harmless on GPU
        deallocate_pipeline_outputs=on_cuda,
        **_recompute_and_virtual_pp(cfg),
        **kwargs,
    )


def _recompute_and_virtual_pp(cfg: Config) -> dict:
    """model.recompute and parallel.virtual_pp in megatron-core's TransformerConfig terms (validated already)."""
    m, vpp = cfg.model, cfg.parallel.virtual_pp
    full = m.recompute == "full"
    return dict(recompute_granularity=None if m.recompute == "none" else m.recompute,
                recompute_method=m.recompute_method if full else None,
                recompute_num_layers=m.recompute_num_layers if full else None,
                recompute_modules=list(m.recompute_modules),
                # None, not 1: megatron-core picks the interleaved schedule whenever it is set
                virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
                # Interleaving as Megatron-LM runs it (overlap_p2p_comm, so no batch_p2p_comm): the batched ops
                # post a pp=2 pair's activation and gradient to the same peer in opposite orders, which swaps them
                # (measured under gloo); the unbatched ops order them by rank parity.
                **(dict(overlap_p2p_comm=True, batch_p2p_comm=False) if vpp > 1 else {}))


def _layout_independent_layer(layer_cls: type, seed: int) -> type:
    """A TransformerLayer subclass that reseeds the init RNG from its global layer number before building.

    Without it, the weights of layer k depend on how many layers the same rank built before it, so a PP=2 run
    starts from different weights than PP=1. Embedding and output layer need nothing: the embedding is built
    first from the run's seed, and the output layer right after the reseeded last layer, on any layout.
    """

    class SeededLayer(layer_cls):  # type: ignore[misc, valid-type]
        def __init__(self, config: TransformerConfig, submodules: object, layer_number: int = 1,
                     *args: object, **kwargs: object) -> None:
            # The same global number TransformerLayer computes for itself (handles uneven and virtual PP).
            offset = get_transformer_layer_offset(config, kwargs.get("vp_stage"),
                                                  parallel_state.get_pipeline_model_parallel_rank())
            torch.manual_seed(seed * 1_000_003 + layer_number + offset)
            super().__init__(config, submodules, layer_number, *args, **kwargs)

    SeededLayer.__name__ = SeededLayer.__qualname__ = f"Seeded{layer_cls.__name__}"
    return SeededLayer


def build_model(cfg: Config, vocab_size: int, pre_process: bool | None = None,
                post_process: bool | None = None, vp_stage: int | None = None, initialize: bool = True) -> GPTModel:
    """This rank's pipeline stage of the model (the whole model at pp=1); with parallel.virtual_pp > 1, its model
    chunk `vp_stage` (megafin.train.model_chunks builds them all). initialize=False: its weights are allocated but
    not drawn (uninitialized memory), for a caller that loads every weight next."""
    m: ModelConfig = cfg.model
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    scaling = m.rope_scaling
    attention, logprob = resolve_backends(m, cfg.parallel.cp)
    spec = decoder_layer_spec(attention, m.attention_backend, cfg.parallel.cp)
    spec.module = _layout_independent_layer(spec.module, cfg.train.seed)
    config = transformer_config(cfg, initialize)
    # The spec's activation module (SwiGLU), unless megatron's fused SwiGLU is on (model.fusions.bias_activation).
    config.use_te_activation_func = uses_activation_module(spec) and not config.bias_activation_fusion
    model_cls, extra = GPTModel, {}
    if logprob == "triton" or m.loss_positions == "targets":
        from megafin.models.logprob_model import LogprobGPTModel

        model_cls, extra = LogprobGPTModel, {"logprob_backend": logprob, "loss_positions": m.loss_positions}
    model = model_cls(
        **extra,
        config=config,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by),
        max_sequence_length=m.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=m.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(m.rope_theta),
        rope_scaling=scaling.type == "llama3",
        rope_scaling_factor=scaling.factor,
        vp_stage=vp_stage,
    )
    if scaling.type == "llama3":
        _apply_llama3_rope_scaling(model, m)
    if torch.cuda.is_available():
        model.cuda()
    model.megafin_attention_backend = attention
    return model


def _apply_llama3_rope_scaling(model: GPTModel, m: ModelConfig) -> None:
    """GPTModel passes only the factor; Llama-3.2 and others also set low/high factors and original length."""
    rope = model.rotary_pos_emb
    dim = rope.inv_freq.numel() * 2
    base = 1.0 / (m.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=rope.inv_freq.device) / dim))
    s = m.rope_scaling
    # A private megatron-core method: listed in the internals index (megafin/runtime/mcore_internals.py).
    rope.inv_freq = rope._apply_scaling(base, factor=s.factor, low_freq_factor=s.low_freq_factor,
                                        high_freq_factor=s.high_freq_factor,
                                        original_max_position_embeddings=s.original_max_position_embeddings)
