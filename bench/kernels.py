"""Kernel benchmarks: `python bench/kernels.py [--seq-length 2048] [--tokenizer DIR | --packed PREFIX]`.

On CUDA:
  1. varlen causal attention TFLOP/s (forward, forward+backward): megafin's Triton kernel vs flash-attn's
     `flash_attn_varlen_func`, Transformer Engine's THD `DotProductAttention`, and PyTorch SDPA run per document
     (each only if importable);
  2. peak memory of `kernels.packed_logprobs` vs the unfused path (logits -> fp32 log_softmax -> gather).
Without CUDA it says so, skips 1-2, and exits 0.

Always (CPU): the attention FLOPs that packing with varlen attention saves over padding, on the length
distribution of the SFT mix (fpb, fiqa_sa, headline, instruct/xbrl_terms from ../shared/data). Token counts
come from, in order of preference: `--packed PREFIX` (doc_lens written by `python -m data_prep sft`), or
`--tokenizer DIR` (an HF tokenizer dir; Llama-3 chat-format overhead added), or a regex stand-in for a
Llama-3-like BPE (default; says so in the output). Packing uses data_prep's best-fit-decreasing when importable.

The real distribution through data_prep (tokenizer + chat template + packing):
  python bench/kernels.py --export-sft /tmp/sft.jsonl
  python -m data_prep sft --input /tmp/sft.jsonl --tokenizer TOKDIR --output-prefix /tmp/sft/mix --seq-length 2048
  python bench/kernels.py --packed /tmp/sft/mix
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.cuda_timing import time_cuda  # noqa: E402  (not `kernels`: that is the top-level Triton package)

SHARED = REPO.parent / "shared" / "data"

# Prompt templates for the classification sets (FinGPT-style instructions; the answer is the label word).
SFT_SETS = {
    "fpb": ("fpb/train.jsonl", lambda r: (
        "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\n"
        f"Input: {r['text']}\nAnswer:", r["label"])),
    "fiqa_sa": ("fiqa_sa/train.jsonl", lambda r: (
        "What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.\n"
        f"Input: {r['text']}\nAnswer:", r["label"])),
    "headline": ("headline/train.jsonl", lambda r: (
        "Does the news headline talk about price going down? Please choose an answer from {Yes/No}.\n"
        f"Input: {r['text']}\nAnswer:", "Yes" if r.get("labels", {}).get("price_down") else "No")),
    "xbrl_terms": ("instruct/xbrl_terms_train.jsonl", lambda r: (
        r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else ""), r["output"])),
}
# <|begin_of_text|> <|start_header_id|>user<|end_header_id|>\n\n ... <|eot_id|>
# <|start_header_id|>assistant<|end_header_id|>\n\n ... <|eot_id|>
CHAT_OVERHEAD = 11
_PIECE = re.compile(r"""'(?:[sdmt]|ll|ve|re)|[^\r\n\w]?[A-Za-z]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+""")


def standin_count(text: str) -> int:
    """A Llama-3-like token count without a tokenizer: Llama-3's pre-tokenizer pieces (words with a leading
    space, digits in groups of 3, punctuation runs); words longer than 7 letters cost one token per 6 more."""
    n = 0
    for p in _PIECE.findall(text):
        letters = sum(c.isalpha() for c in p)
        n += 1 + max(0, math.ceil((letters - 7) / 6))
    return n


def sft_lengths(args) -> tuple[np.ndarray, str]:
    if args.packed:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        ds = IndexedDataset(f"{args.packed}_doc_lens")
        lens = np.concatenate([np.asarray(ds[i]) for i in range(len(ds))])
        return lens.astype(np.int64), f"data_prep doc_lens at {args.packed}"
    count, how = standin_count, "regex stand-in for a Llama-3-like BPE (no tokenizer given)"
    if args.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
        count = lambda s: len(tok.encode(s, add_special_tokens=False).ids)  # noqa: E731
        how = f"tokenizer {args.tokenizer} (+{CHAT_OVERHEAD} chat-format tokens)"
    lens = []
    for name, (rel, fmt) in SFT_SETS.items():
        path = SHARED / rel
        if not path.exists():
            print(f"  (missing {path}: skipped)")
            continue
        n0 = len(lens)
        with open(path) as f:
            for line in f:
                prompt, answer = fmt(json.loads(line))
                lens.append(count(prompt) + count(answer) + CHAT_OVERHEAD)
        a = np.asarray(lens[n0:])
        print(f"  {name:<11} {a.size:6d} examples, tokens: mean {a.mean():6.1f}  p50 {np.median(a):5.0f}  "
              f"p99 {np.percentile(a, 99):5.0f}  max {a.max():5d}")
    return np.asarray(lens, dtype=np.int64), how


def pack(lens: np.ndarray, capacity: int) -> list[list[int]]:
    try:
        from data_prep.packing import best_fit_decreasing

        return best_fit_decreasing(lens, capacity)
    except ImportError:  # data_prep absent: first fit decreasing
        bins, free = [], []
        for i in np.argsort(-lens, kind="stable").tolist():
            for b, f in enumerate(free):
                if f >= lens[i]:
                    bins[b].append(i)
                    free[b] -= lens[i]
                    break
            else:
                bins.append([i])
                free.append(capacity - lens[i])
        return bins


def packing_flops(args) -> None:
    print("== attention FLOPs: packing + varlen vs padding (CPU, SFT mix) ==")
    if not SHARED.is_dir() and not args.packed:
        print(f"no {SHARED}: skipped")
        return
    lens, how = sft_lengths(args)
    print(f"  token counts from: {how}")
    S = args.seq_length
    lens = np.minimum(lens, S)  # truncate the (rare) over-long example, as --on-overflow truncate would
    heads, d = args.heads, args.head_dim
    pair = 4 * heads * d  # forward FLOPs per (query, key) pair per layer: QK^T and PV, 2 each

    def causal_pairs(n):
        n = np.asarray(n, dtype=np.float64)
        return float((n * (n + 1) / 2).sum())

    rng = np.random.default_rng(0)
    order = rng.permutation(lens.size)
    rows = []
    rows.append(("pad every example to seq_length", lens.size * S * (S + 1) / 2, lens.size * S))
    for b in (8, 32):  # dynamic padding: shuffled micro-batches of b examples padded to their longest
        tot, toks = 0.0, 0
        for i in range(0, lens.size, b):
            m = int(lens[order[i:i + b]].max())
            n = len(order[i:i + b])
            tot += n * m * (m + 1) / 2
            toks += n * m
        rows.append((f"pad to longest in batch of {b}", tot, toks))
    bins = pack(lens, S)
    fills = np.asarray([int(lens[b].sum()) for b in bins])
    rows.append(("packed, causal over whole pack (no doc mask)", causal_pairs(fills), int(fills.sum())))
    rows.append(("packed + varlen (this kernel)", causal_pairs(lens), int(lens.sum())))
    varlen = rows[-1][1]
    print(f"  {lens.size} examples, {int(lens.sum())} tokens, mean {lens.mean():.1f}; seq_length {S}: "
          f"{len(bins)} packs, fill {fills.sum() / (len(bins) * S):.1%}")
    print(f"  per layer, forward, {heads} heads x head_dim {d} (backward adds 2.5x the same ratios):")
    print(f"  {'layout':<46} {'attn GFLOP':>11} {'tokens':>10} {'x varlen':>9}")
    for name, pairs, toks in rows:
        print(f"  {name:<46} {pairs * pair / 1e9:11.2f} {toks:10d} {pairs / varlen:9.1f}")
    print(f"  varlen saves {1 - varlen / rows[0][1]:.2%} of the attention FLOPs of padding to {S}, "
          f"{1 - varlen / rows[2][1]:.1%} vs padding to the longest of 32, "
          f"{1 - varlen / rows[3][1]:.1%} vs causal attention over whole packs")


# ------------------------------------------------------------------------------------------- CUDA only
def bench_attention_cuda(args) -> None:
    import torch
    import torch.nn.functional as F

    import kernels

    print("== varlen causal attention, TFLOP/s (CUDA) ==")
    torch.manual_seed(0)
    hq, hkv, d = args.heads, args.kv_heads, args.head_dim
    lens = torch.randint(args.seq_length // 8, args.seq_length // 2, (64,))
    lens = lens[: int((lens.cumsum(0) <= args.total_tokens).sum())]
    cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    cu = cu.cuda()
    T, maxlen = int(cu[-1]), int(lens.max())
    flops_fwd = 4 * hq * d * float((lens.double() * (lens.double() + 1) / 2).sum())
    for dtype in (torch.bfloat16, torch.float16):
        q = torch.randn(T, hq, d, device="cuda", dtype=dtype, requires_grad=True)
        k = torch.randn(T, hkv, d, device="cuda", dtype=dtype, requires_grad=True)
        v = torch.randn(T, hkv, d, device="cuda", dtype=dtype, requires_grad=True)
        do = torch.randn_like(q)
        impls = {"megafin triton": lambda: kernels.varlen_attention(q, k, v, cu, maxlen)}
        try:
            from flash_attn import flash_attn_varlen_func

            impls["flash-attn varlen"] = lambda: flash_attn_varlen_func(q, k, v, cu, cu, maxlen, maxlen, causal=True)
        except ImportError:
            print("  flash-attn not installed: skipped")
        try:
            from transformer_engine.pytorch import DotProductAttention as TEDPA

            te = TEDPA(hq, d, num_gqa_groups=hkv, qkv_format="thd", attn_mask_type="padding_causal").cuda()
            impls["TE thd"] = lambda: te(q, k, v, cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=maxlen,
                                         max_seqlen_kv=maxlen)
        except Exception as e:  # noqa: BLE001 - TE import fails in many ways without its CUDA build
            print(f"  Transformer Engine unavailable ({type(e).__name__}): skipped")
        bounds = cu.tolist()

        def sdpa():
            outs = []
            for s, e in zip(bounds[:-1], bounds[1:]):
                o = F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1) for x in (q, k, v)), is_causal=True,
                                                   enable_gqa=hq != hkv)
                outs.append(o.transpose(0, 1))
            return torch.cat(outs)

        impls["SDPA per document"] = sdpa
        print(f"  {dtype}, T={T}, {lens.numel()} docs (max {maxlen}), Hq={hq}, Hkv={hkv}, D={d}")
        for name, fn in impls.items():
            try:
                tf = time_cuda(lambda: fn())
                tb = time_cuda(lambda: torch.autograd.grad(fn().reshape(T, hq, d), (q, k, v), do))
                print(f"    {name:<20} fwd {flops_fwd / tf / 1e12:7.1f} TFLOP/s   "
                      f"fwd+bwd {3.5 * flops_fwd / tb / 1e12:7.1f} TFLOP/s")
            except Exception as e:  # noqa: BLE001
                print(f"    {name:<20} failed: {type(e).__name__}: {e}")


def bench_logprobs_cuda(args) -> None:
    import torch

    import kernels

    print("== packed log-probs: peak memory, fwd+bwd (CUDA) ==")
    T, H, V = args.lp_tokens, args.lp_hidden, args.lp_vocab
    dtype = torch.bfloat16
    hidden = torch.randn(T, H, device="cuda", dtype=dtype, requires_grad=True)
    weight = (torch.randn(V, H, device="cuda", dtype=dtype) * 0.02).requires_grad_()
    labels = torch.randint(0, V, (T,), device="cuda")

    def fused():
        kernels.packed_logprobs(hidden, weight, labels).sum().backward()

    def unfused():
        logits = hidden @ weight.t()
        torch.log_softmax(logits.float(), -1).gather(1, labels[:, None]).sum().backward()

    for name, fn in (("kernels.packed_logprobs", fused), ("unfused log_softmax.gather", unfused)):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        try:
            t = time_cuda(fn, reps=3)
            peak = torch.cuda.max_memory_allocated() - base
            print(f"  {name:<28} T={T} H={H} V={V} bf16: peak +{peak / 2**30:6.2f} GiB, {t * 1e3:7.1f} ms")
        except torch.cuda.OutOfMemoryError:
            print(f"  {name:<28} out of memory")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-length", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--total-tokens", type=int, default=16384, help="CUDA attention bench: tokens per pack")
    ap.add_argument("--lp-tokens", type=int, default=8192)
    ap.add_argument("--lp-hidden", type=int, default=4096)
    ap.add_argument("--lp-vocab", type=int, default=128256)
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir for the SFT length distribution")
    ap.add_argument("--packed", default=None, help="data_prep output PREFIX (reads PREFIX_doc_lens)")
    ap.add_argument("--export-sft", default=None, metavar="JSONL",
                    help="write the SFT mix as prompt/response JSONL (input for `python -m data_prep sft`) and exit")
    args = ap.parse_args(argv)
    if args.export_sft:
        n = 0
        with open(args.export_sft, "w") as out:
            for rel, fmt in SFT_SETS.values():
                with open(SHARED / rel) as f:
                    for line in f:
                        prompt, answer = fmt(json.loads(line))
                        out.write(json.dumps({"prompt": prompt, "response": answer}) + "\n")
                        n += 1
        print(f"wrote {n} examples to {args.export_sft}")
        return 0

    import torch

    if torch.cuda.is_available():
        bench_attention_cuda(args)
        bench_logprobs_cuda(args)
    else:
        print("CUDA not available: GPU kernel benchmarks (TFLOP/s vs flash-attn/TE/SDPA, log-prob memory) skipped.")
    packing_flops(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
