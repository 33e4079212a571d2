"""The one config schema: recipes (YAML), CLI overrides and Slurm scripts all fill these dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from megafin.stages.preference.config import DPOConfig  # a stage's section lives with its stage


@dataclass
class RopeScalingConfig:
    type: str = "none"  # none | llama3
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


class Switch(str):
    """A value auto | on | off. YAML reads a bare on/off (or true/false) as a boolean; the loader maps those back."""


@dataclass
class FusionsConfig:
    """megatron-core's fused kernels (megafin/models/fusions.py). Each: auto (on where this machine has the kernel:
    CUDA, and TE or apex for some) | on (refused where the kernel is missing) | off. `all: off` turns every fusion
    left at auto off. CPU: all off."""
    all: Switch = "auto"  # type: ignore[assignment]
    rope: Switch = "auto"  # type: ignore[assignment]
    bias_activation: Switch = "auto"  # type: ignore[assignment]
    bias_dropout: Switch = "auto"  # type: ignore[assignment]
    masked_softmax: Switch = "auto"  # type: ignore[assignment]
    gradient_accumulation: Switch = "auto"  # type: ignore[assignment]
    cross_entropy: Switch = "auto"  # type: ignore[assignment]
    persist_layer_norm: Switch = "auto"  # type: ignore[assignment]


@dataclass
class ModelConfig:
    family: str = "llama"  # llama | qwen2: the Hugging Face architecture `megafin convert` maps to and from
    num_layers: int = 4
    hidden_size: int = 256
    num_attention_heads: int = 8
    num_query_groups: int = 4
    ffn_hidden_size: int = 704
    # 0: take it from the tokenizer. The embedding is padded up to a multiple of make_vocab_size_divisible_by
    # (not times TP, unlike Megatron-LM) so a checkpoint's shapes do not depend on the layout it was saved at.
    vocab_size: int = 0
    make_vocab_size_divisible_by: int = 128
    max_position_embeddings: int = 4096
    rope_theta: float = 500000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # A bias on q/k/v (not on the output projection or the MLP): Qwen2 has one, Llama does not. It follows the
    # family (validated), so a checkpoint exports to the HF architecture that has exactly these tensors.
    add_qkv_bias: bool = False
    init_std: float = 0.02
    # auto | te | triton | sdpa | local. auto: TE with CUDA+TE, triton with CUDA, sdpa on CPU.
    attention_backend: str = "auto"
    # local attention only (megatron's unfused core attention) in a 16-bit run: the masked softmax in fp32, which keeps
    # an fp32 copy of the s x s probabilities for backward beside the 16-bit one. megatron-core's default (true);
    # Megatron-LM's trainer runs it in 16 bits unless --attention-softmax-in-fp32.
    attention_softmax_in_fp32: bool = True
    # Per-token log-probs for the losses. auto | megatron | triton. triton: the packed log-prob kernel, which never
    # materializes [tokens, vocab] logits; auto picks it on CUDA, megatron's vocab-parallel cross entropy on CPU.
    logprob_backend: str = "auto"
    # Where the training forward computes logits and log-probs: targets (only positions the loss mask selects; the
    # same loss and gradients, less work when the loss covers part of the tokens, e.g. responses) | all.
    loss_positions: str = "targets"
    fusions: FusionsConfig = field(default_factory=FusionsConfig)
    # Activation recomputation (megatron-core's recompute_granularity): none | selective (recompute_modules of every
    # layer in the backward pass; core_attn by default, megatron-core's) | full (whole layers: recompute_method
    # uniform, in groups of recompute_num_layers, or block, the first recompute_num_layers layers of each pipeline
    # chunk). Same loss and gradients; less activation memory for more compute.
    recompute: str = "none"
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1
    recompute_modules: List[str] = field(default_factory=lambda: ["core_attn"])


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    # Interleaved pipeline stages (megatron-core's virtual_pipeline_model_parallel_size): each pipeline rank holds
    # virtual_pp model chunks of num_layers / (pp * virtual_pp) layers, run by the interleaved 1F1B schedule
    # (a smaller pipeline bubble for more point-to-point traffic). 1: one chunk per rank.
    virtual_pp: int = 1
    micro_batch_size: int = 1
    global_batch_size: int = 8
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    # With distributed_optimizer: the parameter all-gather after the step overlaps the next forward (megatron-core's
    # forward pre-hooks); parameters are gathered in full before a checkpoint is saved or validation runs.
    overlap_param_gather: bool = False
    sequence_parallel: bool = False
    # Context parallelism (megatron-core's context_parallel_size): each sequence is split over cp ranks, 2*cp chunks
    # load balanced for causal attention (rank r holds chunks r and 2*cp-1-r; packed documents are each padded to a
    # multiple of 2*cp and split alike). Attention: Transformer Engine's on GPUs with TE (cp_comm_type), else
    # megafin's all-gather of K/V (megafin/models/cp_attention.py). world = tp * pp * cp * dp.
    cp: int = 1
    # Transformer Engine's CP exchange (model.attention_backend=te): p2p (ring) | a2a (Ulysses) | all_gather | a2a+p2p.
    cp_comm_type: str = "p2p"


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3.0e-4
    min_lr: float = 3.0e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-8
    clip_grad: float = 1.0
    # Which torch.optim.AdamW kernel runs where megatron-core falls back to torch's AdamW (no Transformer Engine or
    # Apex, e.g. CPU; their FusedAdam is used otherwise): default (torch's choice: a per-tensor loop on CPU) or fused
    # (one pass per tensor: 0.07 s vs 2.7 s per step at 25M parameters on a loaded 2-core CPU; ~1e-7 relative from
    # default per step). megafin/train/torch_adamw.py
    torch_adamw: str = "default"


@dataclass
class SchedulerConfig:
    warmup_steps: int = 0
    decay: str = "cosine"  # cosine | linear | constant
    decay_steps: int = 0  # 0: decay until train.steps


@dataclass
class BlendEntry:
    path: str = ""  # prefix of a .bin/.idx pair, e.g. out/finance_text_document
    weight: float = 1.0


@dataclass
class DataConfig:
    tokenizer: str = ""  # a Hugging Face tokenizer directory
    seq_length: int = 256
    # pretrain: Megatron indexed documents blended by weight (GPTDataset). Packed formats arrive with data_prep.
    format: str = "pretrain"
    blend: List[BlendEntry] = field(default_factory=list)
    split: str = "98,2,0"  # train, valid, test shares of every blended corpus


@dataclass
class TrainConfig:
    steps: int = 100
    seed: int = 1234
    resume: str = "auto"  # auto: the latest checkpoint under run_dir if any | none | a checkpoint directory
    init_from: str = ""  # a checkpoint to take weights from (not optimizer or progress), e.g. from `convert from-hf`
    eval_interval: int = 0  # 0: no periodic validation
    eval_iters: int = 2
    # Task scores during training (megafin/eval/in_training.py): every eval_every steps rank 0 answers the first
    # eval_limit examples of each of eval_tasks (from eval_data_dir, the layout of ../shared/data) with the live
    # model and logs eval/<task>/<metric>. Empty: none.
    eval_tasks: list[str] = field(default_factory=list)
    eval_every: int = 0
    eval_limit: int = 32
    eval_data_dir: str = ""
    max_bad_steps: int = 3  # consecutive non-finite losses before the run stops
    threads: int = 0  # torch intra-op threads on CPU; 0: leave as is (torchrun sets 1, so set it)
    # CPU runs: reuse (glibc malloc serves blocks over 32 MiB from its heap too, instead of fresh mmap pages that
    # fault in again every step: megafin/runtime/host_malloc.py) | release (glibc's defaults). Process-wide.
    host_memory: str = "reuse"
    # A collective that waits longer than this for a peer (dead, hung, partitioned) fails the run instead of
    # hanging it. Must exceed the longest single-rank pause between collectives (dataset index build, a save).
    collective_timeout_s: float = 1800.0


@dataclass
class CheckpointConfig:
    interval: int = 0  # save every N steps; 0: only at the end and on signals
    keep_last: int = 2
    save_at_end: bool = True
    # train.resume=none in a run_dir with checkpoints is refused unless true; then the earlier run's checkpoints are
    # removed once the new run has read what it starts from (train.init_from, dpo.reference).
    overwrite: bool = False


@dataclass
class LoggingConfig:
    interval: int = 1
    wandb: bool = True  # offline unless WANDB_API_KEY is set
    wandb_project: str = "megafin"
    tensorboard: bool = False
    peak_tflops: float = 0.0  # for MFU; 0: look the device up (GPU) or measure a matmul (CPU)


@dataclass
class PrecisionConfig:
    dtype: str = "fp32"  # fp32 | bf16 | fp8
    fp8_recipe: str = "delayed"  # delayed | tensorwise | mxfp8 (Transformer Engine recipes)


@dataclass
class Config:
    run_dir: str = "runs/default"
    stage: str = "cpt"  # a name registered in megafin/stages (cpt, cpt_it, sft, dpo)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
