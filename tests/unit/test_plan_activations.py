"""`megafin plan`'s activation memory against what a megafin model keeps for backward on CPU, for the tiny model
(fp32, seq 128) and a mid-size one (hidden 1024, GQA 16/4, ffn 2816, bf16, seq 512; 2 layers: the figures are per
layer), with recompute none,
selective and full, on bshd and packed (THD) micro-batches.

Measured with torch.autograd.graph.saved_tensors_hooks during one training forward: every tensor autograd keeps,
each storage counted once at its full size (a view keeps its whole storage alive), parameters left out, and each
storage charged to the module that first saved it (embedding, a decoder layer, the head). Why not the allocator:
torch exposes no CPU allocator statistics (torch.cuda.memory_allocated is CUDA's), and a process-RSS delta mixes in
temporaries that are freed before backward and allocator caching; the hooks see exactly what backward will need.

The planner models a GPU layer (Transformer Engine or fused kernels: fused RMSNorm, fused SwiGLU); per layer it
matches megafin on CPU once these CPU-only costs are added (`cpu_extra_per_token`):
  - megafin's RMSNorm (rms_norm.py; no fused kernel on CPU) keeps the fp32 normalized input and the fp32 rstd instead
    of the input: 4h + 4 - e h bytes per norm (torch's, before it, also kept an fp32 copy of its input: 8h + 4 - e h);
  - megatron's unfused SwiGLU keeps silu(gate) besides its input: f e;
  - without recompute the attention output is kept twice, by SDPA's backward and (reshaped, or unpadded when packed)
    by the output projection: h e. SDPA itself keeps copies (on CPU it gets contiguous q/k/v, packed or not).
    Causal fp32 bshd batches run cpu_causal_attention instead: it keeps its softmax blocks (heads x ~seq / 2 fp32
    entries) and no logsumexp, and its output is the projection's input, kept once;
    selective recompute's checkpoint of core attention keeps its inputs, views of the fused QKV projection's output,
    which keep all of it alive: (h + k) e.
Where the planner was wrong for GPUs too it is fixed (megafin/plan/estimate.py): SDPA keeps no s x s scores (its
fused kernels, CPU's included, keep an fp32 logsumexp: measured), selective recompute drops that logsumexp, and the
embedding's output is the first layer's input (counted there once). The head: the planner's logits term is the
16-bit logits plus the fp32 softmax at their peak; kept for backward is the fp32 softmax alone (4 bytes x vocab).

Measured (MiB, one micro-batch, per layer = the last layer, which holds nothing shared; planned for a GPU layer):
  tiny fp32 seq 128  bshd    none 2.626 (planned 1.910) / selective 2.438 (1.906) / full 0.125 (0.125); head 0.877
                     packed  none 2.380 (1.910) / selective 2.438 (1.906) / full 0.125 (0.125)
  mid  bf16 seq 512  bshd    none 20.535 (14.781) / selective 20.754 (14.750) / full 1.000 (1.000); head 7.006
                     packed  none 20.535 (14.781) / selective 20.754 (14.750) / full 1.000 (1.000)
(Before megafin's RMSNorm each norm kept 4 h bytes more per token: tiny bshd none 2.876, mid 24.535. bshd without
recompute kept (h + k) e, 2.692 and 24.785 MiB, while SDPA got views of the fused QKV output; tiny kept 2.630 MiB
in SDPA before cpu_causal_attention.)
With the CPU terms added every per-layer figure is equal to the byte (selective recompute's checkpoint adds one 4-byte
tensor). Shared by all layers, kept by the first: RoPE's cos/sin, the THD plan's indices. Full recompute's working
set (one layer rerun during backward: the planner adds one layer at `none`) is not in a forward's figures.
"""
from __future__ import annotations

import collections

import pytest
import torch

pytestmark = pytest.mark.usefixtures("megatron_world")

VOCAB = 1000  # padded to 1024
TINY = (["model.num_layers=4", "model.hidden_size=256", "model.num_attention_heads=8", "model.num_query_groups=4",
         "model.ffn_hidden_size=704", "precision.dtype=fp32"], 128)
MID = (["model.num_layers=2", "model.hidden_size=1024", "model.num_attention_heads=16", "model.num_query_groups=4",
        "model.ffn_hidden_size=2816", "precision.dtype=bf16"], 512)
DOCUMENTS = 4  # a packed micro-batch: equal documents


def saved_bytes_by_module(model, wrapped, tokens, positions, packed_seq_params=None) -> dict[str, int]:
    """Bytes autograd keeps for backward during one forward, by the module that first saved each storage:
    'embedding', 'layer0'..'layerN', 'head' (final norm, output layer, loss)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where = ["embedding"]
    kept: dict[int, tuple[str, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in kept:
            kept[ptr] = (where[0], storage.nbytes())
        return t

    def entering(name: str):
        return lambda module, args: where.__setitem__(0, name)

    hooks = [layer.register_forward_pre_hook(entering(f"layer{i}")) for i, layer in enumerate(model.decoder.layers)]
    hooks.append(model.decoder.final_layernorm.register_forward_pre_hook(entering("head")))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            wrapped(tokens, positions, None, labels=tokens, loss_mask=torch.ones_like(tokens, dtype=torch.float),
                    packed_seq_params=packed_seq_params)
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, int] = collections.Counter()
    for name, nbytes in kept.values():
        out[name] += nbytes
    return dict(out)


def measure(overrides: list[str], seq: int, packed: bool, backend: str = "sdpa") -> tuple[dict[str, int], object]:
    """(bytes by module, the config) for one micro-batch of `seq` tokens."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.module import Float16Module

    from megafin.config import load_config
    from megafin.models.gpt import build_model

    cfg = load_config(None, [*overrides, f"model.attention_backend={backend}", "model.logprob_backend=megatron",
                             f"model.max_position_embeddings={seq}", f"data.seq_length={seq}",
                             f"data.format={'packed' if packed else 'pretrain'}", "parallel.micro_batch_size=1"])
    model = build_model(cfg, vocab_size=VOCAB, initialize=False)  # values do not change what is kept
    wrapped = Float16Module(model.config, model) if model.config.bf16 else model  # as megafin trains under bf16
    tokens = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(0))
    params = None
    if packed:
        n = seq // DOCUMENTS
        cu = torch.arange(0, seq + 1, n, dtype=torch.int32)
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=n, max_seqlen_kv=n)
        positions = torch.arange(n).repeat(DOCUMENTS).unsqueeze(0)
    else:
        positions = torch.arange(seq).unsqueeze(0)
    return saved_bytes_by_module(model, wrapped, tokens, positions, params), cfg


def blocked_softmax_per_token(seq: int) -> float:
    """Softmax entries cpu_causal_attention keeps per query token and head: block i's rows span the keys up to its
    end."""
    from megafin.models.cpu_causal_attention import query_blocks

    return sum((i1 - i0) * i1 for i0, i1 in query_blocks(seq)) / seq


def cpu_extra_per_token(cfg, recompute: str, seq: int, packed: bool) -> float:
    """What megafin's CPU layer keeps per token beyond the planner's GPU layer (the module docstring's list)."""
    m = cfg.model
    if recompute == "full":
        return 0.0
    h, f = m.hidden_size, m.ffn_hidden_size
    k = m.num_query_groups * (h // m.num_attention_heads)
    e = 4 if cfg.precision.dtype == "fp32" else 2
    norms = 2 * (4 * h + 4 - e * h)
    swiglu = f * e
    attention = h * e if recompute == "none" else (h + k) * e
    if recompute == "none" and not packed and e == 4:
        from megafin.models.cpu_causal_attention import MAX_SEQ

        assert seq <= MAX_SEQ
        # cpu_causal_attention: its fp32 softmax blocks instead of SDPA's logsumexp, and its output is the output
        # projection's input (kept once)
        attention = m.num_attention_heads * 4 * (blocked_softmax_per_token(seq) - 1)
    return norms + swiglu + attention


def planned(cfg, recompute: str):
    from megafin.plan import GPUS, Layout, Workload
    from megafin.plan.estimate import activation_bytes_per_layer, head_activation_bytes, logits_bytes

    w = Workload(cfg=cfg, vocab_size=VOCAB, gpus=1, gpu=GPUS["h100"], efficiency=0.4)
    lay = Layout(recompute=recompute)
    e = w.activation_bytes
    kept_logits = logits_bytes(w, lay) * 4 / (4 if e == 4 else e + 4)  # the fp32 softmax
    return activation_bytes_per_layer(w, lay, recompute), head_activation_bytes(w, lay), kept_logits


@pytest.mark.parametrize("packed", [False, True], ids=["bshd", "packed"])
@pytest.mark.parametrize("model", [TINY, MID], ids=["tiny-fp32", "mid-bf16"])
def test_planned_activations_match_what_megafin_keeps_on_cpu(model, packed):
    overrides, seq = model
    for recompute in ("none", "selective", "full"):
        measured, cfg = measure([*overrides, f"model.recompute={recompute}"], seq, packed)
        layer, head, logits = planned(cfg, recompute)
        last = measured[f"layer{cfg.model.num_layers - 1}"]
        want = layer + seq * cpu_extra_per_token(cfg, recompute, seq, packed)
        mib = f"{recompute}: measured {last / 2**20:.3f} MiB per layer, planned {layer / 2**20:.3f} (GPU) " \
              f"+ {(want - layer) / 2**20:.3f} (CPU)"
        assert last == pytest.approx(want, rel=0.005), mib
        # shared by every layer, saved by the first: RoPE's frequencies (at most fp32 [seq, head dim]) and the THD
        # plan's three int64 indices per token
        head_dim = cfg.model.hidden_size // cfg.model.num_attention_heads
        assert 0 <= measured["layer0"] - last <= seq * (4 * head_dim + 3 * 8), measured
        # the embedding keeps only the token ids: its output is the first layer's input
        assert measured.get("embedding", 0) <= 8 * seq
        head_cpu = seq * (8 * cfg.model.hidden_size + 4 - (4 if cfg.precision.dtype == "fp32" else 2)
                          * cfg.model.hidden_size)  # the final norm is torch's RMSNorm (GPTModel builds it)
        assert measured["head"] == pytest.approx(head + logits + head_cpu, rel=0.01), (measured["head"], head, logits)


def test_local_attention_keeps_the_softmax_and_per_head_k_v(megatron_world):
    """megatron's local core attention (tiny, seq 128): the planner's softmax, K and V repeated to every head, and
    the s x s causal mask per layer are what it keeps. Without the fused masked-softmax kernel (apex; never on CPU,
    and never past 4096 positions on a GPU) a bf16 run keeps the fp32 softmax beside its bf16 cast (4 + 2 bytes a
    score) unless model.attention_softmax_in_fp32=false (2). Measured 2.079 MiB per layer (planned 1.781 for a GPU;
    the rest is RMSNorm and SwiGLU, as above)."""
    tiny_bf16 = [o for o in TINY[0] if not o.startswith("precision")] + ["precision.dtype=bf16"]
    seq = 128
    for recompute, fp32_softmax in (("none", True), ("selective", True), ("none", False)):
        measured, cfg = measure([*tiny_bf16, f"model.recompute={recompute}",
                                 f"model.attention_softmax_in_fp32={str(fp32_softmax).lower()}"], seq, False,
                                backend="local")
        layer = planned(cfg, recompute)[0]
        h, f, k = cfg.model.hidden_size, cfg.model.ffn_hidden_size, cfg.model.num_query_groups * 32
        cpu = seq * (2 * (4 * h + 4 - 2 * h) + 2 * f)  # RMSNorm and SwiGLU as above
        # selective: the checkpoint keeps V as a view of the QKV output, as SDPA's bshd path does
        cpu += 0 if recompute == "none" else seq * (h + k) * 2
        last = measured[f"layer{cfg.model.num_layers - 1}"]
        assert last == pytest.approx(layer + cpu, rel=0.005), (recompute, fp32_softmax, last / 2**20, layer / 2**20)


class LiveStorages(torch.utils._python_dispatch.TorchDispatchMode):
    """The bytes of every storage an op creates while the mode is on, alive until it is freed: the live total and
    its peak (what an allocator without caching would hold; torch has no CPU allocator statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in self.seen:
                continue
            storage = t.untyped_storage()
            ptr, n = storage.data_ptr(), storage.nbytes()
            self.seen.add(ptr)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, ptr, n)
        return out

    def _freed(self, ptr: int, n: int) -> None:
        self.live -= n
        self.seen.discard(ptr)


@pytest.mark.parametrize("dtype,fp32_softmax", [("bf16", True), ("bf16", False), ("fp32", True)])
def test_local_attention_peak_is_kept_plus_buffer_plus_working_set(megatron_world, dtype, fp32_softmax):
    """One local core attention call, forward and backward (8 heads over 2 groups, seq 1024, head dim 16, so the
    s x s terms dominate): the peak of live storages is the planner's kept + buffer + working set (LocalAttention)
    within 3%. Measured 14.27 / 10.27 / 20.41 bytes per score, planned 14.125 / 10.125 / 20.125; the rest is Q, K, V,
    the output and their gradients."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megafin.config import load_config
    from megafin.models.gpt import transformer_config
    from megafin.plan import GPUS, Layout, Workload
    from megafin.plan.estimate import local_attention

    a, g, seq, d = 8, 2, 1024, 16
    cfg = load_config(None, [*TINY[0][:-1], f"precision.dtype={dtype}", f"model.hidden_size={a * d}",
                             f"model.num_attention_heads={a}", f"model.num_query_groups={g}",
                             "model.attention_backend=local",
                             f"model.attention_softmax_in_fp32={str(fp32_softmax).lower()}",
                             f"data.seq_length={seq}", f"model.max_position_embeddings={seq}",
                             "parallel.micro_batch_size=1"])
    core = DotProductAttention(transformer_config(cfg), layer_number=1, attn_mask_type=AttnMaskType.causal,
                               attention_type="self")
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    q, k, v = (torch.randn(seq, 1, heads, d, dtype=torch_dtype, requires_grad=True) for heads in (a, g, g))
    with LiveStorages() as live:
        core(q, k, v, None, attn_mask_type=AttnMaskType.causal).float().sum().backward()
    plan = local_attention(Workload(cfg=cfg, vocab_size=VOCAB, gpus=1, gpu=GPUS["h100"], efficiency=0.4), Layout())
    want = plan.kept + plan.buffer + plan.working_set
    assert live.peak == pytest.approx(want, rel=0.03), (live.peak / (a * seq * seq), want / (a * seq * seq))
