"""Per-GPU memory and step time of one layout of a recipe: the arithmetic behind `megafin plan`.

Memory follows megatron-core as megafin drives it (megafin/train/loop.py): weights in the run's dtype, a gradient
buffer in fp32 (grad_reduce_in_fp32), Adam states (+ fp32 master weights for 16-bit runs) sharded over data parallel
ranks with the distributed optimizer. Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation
in Large Transformer Models"), re-derived for a Llama block: RMSNorm, grouped-query attention, SwiGLU, no dropout.
Per token and layer a 16-bit run stores 12h + 4k + 6f bytes (h hidden, k = query groups x head dim, f ffn width):
  outside the tensor-parallel region (divided by t only with sequence parallelism): the two norm inputs and the
  inputs of the QKV and FC1 projections (8h); inside it (divided by t): Q, K, V, the attention output that is also
  the output projection's input (4h + 4k), the SwiGLU input (4f) and FC2's input (2f).
For Korthikanti's GPT block (f = 4h, k = h) this is his 34 sbh less the two dropout masks. FP8 (Transformer Engine)
stores the four projection inputs in 1 byte. Fused attention kernels (te, triton, and PyTorch SDPA's flash /
memory-efficient kernels, CPU's included: measured) keep no s x s scores, only an fp32 logsumexp per token and head;
megatron's local DotProductAttention keeps the softmax (2 a s^2 per sequence, Korthikanti's 5as/h term without
dropout) and K, V repeated to every head. The layer's input is the first norm's input (counted in the layer), so the
embedding adds nothing of its own. Context parallelism without TE (megafin's all-gather attention) keeps the whole
sequence's keys and values per head and a dense mask instead of K, V (allgather_cp_attention_bytes). Recompute:
selective (core attention) keeps Q, K, V (stored anyway) and drops the scores or the logsumexp; full stores each
layer's input and one layer's working set. Pipeline: the first stage holds
min(pp, micro-batches) micro-batches in flight (1F1B), times 1 + (pp - 1) / (pp vp) when interleaved. Time:
megafin's FLOPs count (megafin/train/flops.py, the one its logged MFU uses) at a stated efficiency, plus recompute's
extra forward work and the pipeline bubble (pp - 1) / (vp m). Communication is not modelled. The optimizer step:
with Transformer Engine (or apex) megatron-core runs FusedAdam, which needs nothing beyond its states; without them
it builds torch's AdamW, whose default kernel on CUDA (foreach) allocates one fp32 temporary the size of the
optimizer's shard at each step (torch._foreach_sqrt of the second moments), after the activations are freed: the
peak is the larger of the two (from torch's source; an H200 run without TE, 8B width with 2 layers, peaked at 30.54
GiB allocated against 30.47 planned so, 27.2 without the term; optimizer.torch_adamw=fused avoids it). What a CPU
run keeps beyond this GPU model (unfused RMSNorm and SwiGLU): tests/unit/test_plan_activations.py."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from megafin.config.schema import Config
from megafin.models.layout import padded_vocab_size
from megafin.plan.gpus import GIB, GPU

RECOMPUTE = ("none", "selective", "full")
# Megatron's unfused core attention materializes the softmax; every other backend (on a GPU `auto` is te or triton,
# on a CPU sdpa) runs a fused kernel that keeps only the logsumexp.
SCORE_STORING_ATTENTION = ("local",)


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    vp: int = 1  # virtual pipeline stages per rank (interleaved 1F1B)
    mbs: int = 1
    recompute: str = "none"
    distributed_optimizer: bool = True
    sequence_parallel: bool = False

    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    def describe(self) -> str:
        return (f"tp{self.tp} pp{self.pp} cp{self.cp} vp{self.vp} mbs{self.mbs} {self.recompute}"
                f"{' sp' if self.sequence_parallel else ''}{'' if self.distributed_optimizer else ' no-distopt'}")


@dataclass(frozen=True)
class Estimate:
    layout: Layout
    dp: int
    micro_batches: int  # per data-parallel rank and step
    stage: str  # the pipeline stage whose memory is reported (the larger): first | last | only
    params_per_gpu: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float  # as the layout runs (distributed or not)
    optimizer_replicated_gib: float  # without the distributed optimizer
    optimizer_distributed_gib: float  # with it
    activations_per_layer_gib: float  # one micro-batch, at the layout's recompute setting
    activations_per_layer_by_recompute_gib: dict  # none | selective | full
    micro_batches_in_flight: float
    activations_gib: float  # everything the stage holds for backward, all micro-batches in flight
    logits_gib: float
    optimizer_step_gib: float  # the optimizer step's own temporaries (activations are freed by then)
    total_gib: float
    usable_gib: float
    fits: bool
    step_time_s: float
    tokens_per_s_per_gpu: float
    mfu: float  # model FLOPs (megafin's count) per second / (GPUs x dense bf16 peak), as megafin logs it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    """What a recipe asks of the GPUs, independent of the layout."""

    cfg: Config
    vocab_size: int  # the tokenizer's (FLOPs); the embedding is padded (memory)
    gpus: int
    gpu: GPU
    efficiency: float  # fraction of the dense peak the GPU sustains on the model's FLOPs while computing
    te: bool = True  # the GPUs have Transformer Engine: its FusedAdam and its context-parallel attention

    @property
    def adam_step_temporary(self) -> bool:
        """torch's AdamW with its default kernel on CUDA (foreach): one fp32 temporary per optimizer element."""
        return not self.te and self.cfg.optimizer.torch_adamw == "default"

    @property
    def seq_length(self) -> int:
        return self.cfg.data.seq_length

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.parallel.global_batch_size * self.seq_length

    @property
    def activation_bytes(self) -> int:
        return 4 if self.cfg.precision.dtype == "fp32" else 2

    @property
    def fp8(self) -> bool:
        return self.cfg.precision.dtype == "fp8"

    @property
    def peak_tflops(self) -> float:
        """The efficiency is stated against the dense bf16 peak for every dtype, as megafin's logged MFU is: FP8's
        faster GEMMs show as a higher efficiency (cli.py's defaults), not as another peak."""
        return self.gpu.bf16_tflops

    def flops_per_token(self) -> float:
        from megafin.train.flops import flops_per_token

        return flops_per_token(self.cfg.model, self.vocab_size, self.seq_length)


def _layer_params(m: Any, tp: int) -> tuple[float, float]:
    """(matmul weights, norm weights) of one transformer layer on one TP rank."""
    h, f = m.hidden_size, m.ffn_hidden_size
    kv = m.num_query_groups * (h // m.num_attention_heads)
    matmul = h * (h + 2 * kv) + h * h + 2 * h * f + f * h + ((h + 2 * kv) if m.add_qkv_bias else 0)
    return matmul / tp, 2.0 * h


def activation_bytes_per_layer(w: Workload, lay: Layout, recompute: str) -> float:
    """Bytes one layer keeps for backward for one micro-batch (of mbs sequences) on one GPU."""
    m = w.cfg.model
    h, f, a = m.hidden_size, m.ffn_hidden_size, m.num_attention_heads
    kv = m.num_query_groups * (h // a)
    e = w.activation_bytes
    lin = 1 if w.fp8 else e  # Transformer Engine keeps FP8 projection inputs
    t = lay.tp
    tokens = w.seq_length * lay.mbs / lay.cp
    outside = (2 * h * e + 2 * h * lin) / (t if lay.sequence_parallel else 1)  # norm inputs; QKV and FC1 inputs
    inside = (h * e + 2 * kv * e + h * e + (h * lin if w.fp8 else 0) + 2 * f * e + f * lin) / t
    stats = scores = 0.0  # what core attention keeps beyond Q, K, V (selective recompute drops it)
    if recompute == "none" and m.attention_backend in SCORE_STORING_ATTENTION:
        # the stored softmax of each attention call and its causal mask, and K, V repeated from the query groups to
        # every head
        scores = local_attention(w, lay).kept
        inside += 2 * (h - kv) * e / t
    elif recompute == "none":
        stats = 4.0 * a / t  # the fp32 logsumexp per token and head
    if lay.cp > 1 and not w.te and recompute == "none":
        inside -= 2 * kv * e / t  # this rank's K, V: what SDPA keeps instead is counted next
        scores += allgather_cp_attention_bytes(w, lay)
    full_layer = tokens * (outside + inside + stats) + scores
    if recompute == "full":
        return tokens * h * e / (t if lay.sequence_parallel else 1)  # the layer's input only
    return full_layer


@dataclass(frozen=True)
class LocalAttention:
    """Bytes of megatron's local core attention (DotProductAttention) for one micro-batch on one GPU."""
    kept: float  # per layer, for backward: the softmax (and its 16-bit copy), the causal mask
    buffer: float  # once per process: the scores' GEMM buffer (megatron's global memory buffer), never freed
    working_set: float  # beyond `kept` while one call runs forward or backward: scores in flight, their gradients


def local_attention(w: Workload, lay: Layout) -> LocalAttention:
    """Per score (heads x s^2 per sequence; packed micro-batches are one sequence of mbs packs), e the activation
    bytes. The fused masked-softmax kernel (apex; 16-bit, s <= 4096, fusions.masked_softmax on) keeps its e-byte
    output. Unfused, a 16-bit run with model.attention_softmax_in_fp32 (megatron-core's default) keeps the fp32
    softmax and its e-byte cast for the second GEMM, 4 + e, and in flight holds the e-byte scores with their fp32
    copy (forward) or the gradients' fp32 and e-byte forms (backward), 4 + e again; a softmax in the run's own dtype
    keeps e and holds up to 3e (backward: the probabilities' gradient, the softmax's, the mask's). Unfused, the s x s
    causal mask (1 byte) is kept per layer. Measured on CPU with a live-storage tracker (megatron-core 0.16.1,
    tests/unit/test_plan_activations.py). On an H200 (8B width, 2 layers, seq 8192, bf16, no apex), the fp32
    softmax peaked at 74.65 GiB allocated, planned 73.36 (41.23 before these terms), and the bf16 one at 50.65,
    planned 57.36: the plan adds the working set to the logits, which are freed before the attention's backward."""
    m, e = w.cfg.model, w.activation_bytes
    sequences, seq = attention_sequences(w, lay)
    seq /= lay.cp
    per_score = sequences * (m.num_attention_heads / lay.tp) * seq * seq
    fused = m.fusions.masked_softmax == "on" and e == 2 and seq <= 4096
    fp32_copy = not fused and e < 4 and m.attention_softmax_in_fp32
    mask = 0.0 if fused else seq * seq  # one [s, s] mask, broadcast over the batch and the heads
    return LocalAttention(kept=per_score * ((4 + e) if fp32_copy else e) + mask, buffer=per_score * e,
                          working_set=per_score * ((4 + e) if fp32_copy else 3 * e))


def attention_sequences(w: Workload, lay: Layout) -> tuple[int, int]:
    """(sequences in one micro-batch's attention call, the tokens each spans over the whole context): a packed
    micro-batch is one sequence of mbs packs, a [b, s] one is mbs sequences."""
    if w.cfg.data.format == "packed":
        return 1, w.seq_length * lay.mbs
    return lay.mbs, w.seq_length


def allgather_cp_attention_bytes(w: Workload, lay: Layout) -> float:
    """What megafin's all-gather context-parallel attention (no TE: megafin/models/cp_attention.py) keeps for backward
    per layer and micro-batch beyond Q, the output and the logsumexp: the whole sequence's keys and values expanded to
    this rank's query heads (grouped_sdpa expands them where no fused CUDA kernel takes GQA with a mask: the upper
    bound), and the mask over local queries x all keys as SDPA's additive bias in the activation dtype (one per
    micro-batch; a packed one is one sequence)."""
    m, e = w.cfg.model, w.activation_bytes
    sequences, seq = attention_sequences(w, lay)
    keys_values = 2 * sequences * seq * (m.num_attention_heads // lay.tp) * (m.hidden_size // m.num_attention_heads)
    return keys_values * e + seq / lay.cp * seq * e


def head_activation_bytes(w: Workload, lay: Layout) -> float:
    """Bytes the last stage's head keeps for backward for one micro-batch: the final norm's and the output layer's
    inputs."""
    tokens = w.seq_length * lay.mbs / lay.cp
    return 2 * tokens * w.cfg.model.hidden_size * w.activation_bytes / (lay.tp if lay.sequence_parallel else 1)


def logits_bytes(w: Workload, lay: Layout) -> float:
    """The logits of one micro-batch at their peak. Megatron's vocab-parallel cross entropy keeps an fp32 softmax for
    backward; a 16-bit run's logits are alive beside it while it is computed (freed at the end of the forward, so
    not kept for backward). The triton log-prob kernel (what `auto` picks on a GPU) never materializes them."""
    m = w.cfg.model
    if m.logprob_backend in ("auto", "triton"):
        return 0.0
    e = w.activation_bytes
    tokens = w.seq_length * lay.mbs / lay.cp
    vocab = padded_vocab_size(w.vocab_size, m.make_vocab_size_divisible_by)
    return tokens * vocab / lay.tp * (4.0 if e == 4 else e + 4.0)


def estimate(w: Workload, lay: Layout) -> Estimate:
    m, par = w.cfg.model, w.cfg.parallel
    dp = w.gpus // lay.model_parallel()
    micro_batches = par.global_batch_size // (lay.mbs * dp)
    h, L = m.hidden_size, m.num_layers
    vocab = padded_vocab_size(w.vocab_size, m.make_vocab_size_divisible_by)
    layers = L // lay.pp
    matmul, norms = _layer_params(m, lay.tp)
    embedding = vocab * h / lay.tp
    output = embedding  # untied: its own weight; tied with pp > 1: megatron keeps a copy on the last stage
    first = layers * (matmul + norms) + embedding + (0 if lay.pp > 1 or m.tie_embeddings else output)
    first += h if lay.pp == 1 else 0  # final norm
    last = layers * (matmul + norms) + output + h
    linear_params = {"first": layers * matmul, "last": layers * matmul}

    per_layer = {r: activation_bytes_per_layer(w, lay, r) / GIB for r in RECOMPUTE}
    layer_act = per_layer[lay.recompute]
    working_set = per_layer["none"] if lay.recompute == "full" else 0.0  # one layer recomputed at a time
    attention_buffer = 0.0
    if m.attention_backend in SCORE_STORING_ATTENTION:
        local = local_attention(w, lay)
        # one call's scores in flight; selective recompute reruns core attention in backward, keeping its softmax
        working_set += (local.working_set + (local.kept if lay.recompute == "selective" else 0.0)) / GIB
        attention_buffer = local.buffer / GIB
    if lay.pp > 1 and lay.vp > 1:
        in_flight = lay.pp * (1 + (lay.pp - 1) / (lay.pp * lay.vp))
    else:
        in_flight = float(min(lay.pp, micro_batches))
    logits = logits_bytes(w, lay) / GIB

    def stage_memory(stage: str) -> dict[str, float]:
        params = first if stage in ("first", "only") else last
        flight = in_flight if stage in ("first", "only") else 1.0
        acts = flight * layers * layer_act + working_set + attention_buffer
        stage_logits = 0.0
        if stage in ("last", "only"):
            acts += head_activation_bytes(w, lay) / GIB
            stage_logits = logits
        weight_bytes = 4 if w.cfg.precision.dtype == "fp32" else 2
        fp8_cache = 2 * linear_params["first" if stage == "only" else stage] if w.fp8 else 0.0  # TE's FP8 copies
        state_bytes = 8 if w.cfg.precision.dtype == "fp32" else 12  # Adam moments (+ fp32 master weights)
        shards = dp * lay.cp  # megatron shards optimizer states over data (and context) parallel ranks
        replicated = params * state_bytes / GIB
        distributed = replicated / shards
        owned = params / shards if lay.distributed_optimizer else params  # elements this rank's optimizer steps
        return {"params": params, "weights": (params * weight_bytes + fp8_cache) / GIB,
                "gradients": params * 4 / GIB, "optimizer_replicated": replicated,
                "optimizer_distributed": distributed, "activations": acts, "logits": stage_logits,
                "step": owned * 4 / GIB if w.adam_step_temporary else 0.0, "in_flight": flight}

    stages = ["only"] if lay.pp == 1 else ["first", "last"]
    best: dict[str, float] = {}
    stage_name = stages[0]
    for stage in stages:
        mem = stage_memory(stage)
        opt = mem["optimizer_distributed"] if lay.distributed_optimizer else mem["optimizer_replicated"]
        mem["optimizer"] = opt
        mem["total"] = (mem["weights"] + mem["gradients"] + opt
                        + max(mem["activations"] + mem["logits"], mem["step"]))
        if not best or mem["total"] > best["total"]:
            best, stage_name = mem, stage

    fpt = w.flops_per_token()
    extra = 0.0  # recompute's extra forward FLOPs per token
    s = w.seq_length
    if lay.recompute == "full":
        extra = 2.0 * L * _layer_params(m, 1)[0] + 4.0 * L * h * s
    elif lay.recompute == "selective":
        extra = 4.0 * L * h * s
    bubble = (lay.pp - 1) / (lay.vp * micro_batches) if lay.pp > 1 else 0.0
    compute_s = w.tokens_per_step * (fpt + extra) / (w.gpus * w.peak_tflops * 1e12 * w.efficiency)
    step = compute_s * (1 + bubble)
    return Estimate(
        layout=lay, dp=dp, micro_batches=micro_batches, stage=stage_name, params_per_gpu=int(best["params"]),
        weights_gib=best["weights"], gradients_gib=best["gradients"], optimizer_gib=best["optimizer"],
        optimizer_replicated_gib=best["optimizer_replicated"],
        optimizer_distributed_gib=best["optimizer_distributed"], activations_per_layer_gib=per_layer[lay.recompute],
        activations_per_layer_by_recompute_gib=per_layer, micro_batches_in_flight=best["in_flight"],
        activations_gib=best["activations"], logits_gib=best["logits"], optimizer_step_gib=best["step"],
        total_gib=best["total"],
        usable_gib=w.gpu.usable_gib, fits=best["total"] <= w.gpu.usable_gib, step_time_s=step,
        tokens_per_s_per_gpu=w.tokens_per_step / step / w.gpus,
        mfu=w.tokens_per_step * fpt / step / (w.gpus * w.gpu.bf16_tflops * 1e12))
