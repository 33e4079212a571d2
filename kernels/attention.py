"""Varlen (packed, THD) causal flash attention in Triton: forward and backward, GQA, fp32/fp16/bf16.

Layout as flash-attn's ``flash_attn_varlen_func`` and Transformer Engine's THD format:
q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` with ``Hq % Hkv == 0`` (q head ``h`` reads kv head ``h // (Hq // Hkv)``),
int32 ``cu_seqlens`` ``[num_docs + 1]`` (``cu_seqlens[0] == 0``), ``max_seqlen`` the longest document.
Attention never crosses a document boundary; with ``causal=True`` a token sees only earlier tokens of its document.
Tokens at or after ``cu_seqlens[-1]`` (padding at the end of a pack) get output 0 and gradients 0.

Algorithm: FlashAttention-2. Softmax statistics and all accumulators are fp32; the log-sum-exp is kept (in
log2 units) for the backward, which recomputes P block by block: one kernel per key block for dK/dV (looping
over the q heads of its GQA group, so no atomics and a deterministic result) and one per query block for dQ.
"""
from __future__ import annotations

import math

import torch

from kernels._common import autotuning, check_device, empty, interpreting, next_pow2, require_triton

triton, tl = require_triton()

_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------
# Block sizes: several configs on GPU (pruned per head_dim, then autotuned); exactly one in the interpreter.
# ----------------------------------------------------------------------------------------------------------
def _configs():
    if interpreting():
        # The interpreter runs programs one after another on numpy: one config, small blocks (tests use short docs).
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    shapes = [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3),
              (64, 64, 4, 2), (128, 32, 4, 3), (64, 32, 4, 2), (32, 32, 4, 2)]
    if not autotuning():
        shapes = [(64, 64, 4, 2)]  # fits every head_dim's budget below (64*64, <= 2 stages)
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in shapes]


def _prune_for_head_dim(configs, named_args, **kwargs):
    """Keep the block shapes whose tiles fit in registers/shared memory for this head_dim."""
    if interpreting():
        return configs
    d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    if d <= 64:
        budget = 128 * 128
    elif d <= 128:
        budget = 128 * 64
    else:  # 256
        budget = 64 * 64
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= budget]
    if d > 128:
        kept = [c for c in kept if c.num_stages <= 2] or kept
    return kept or configs[-1:]


_AUTOTUNE_KEY = ["BLOCK_D", "GROUP", "IS_CAUSAL", "NATIVE_DOT"]


@triton.autotune(configs=_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_for_head_dim})
@triton.jit
def _fwd_kernel(
    Q, K, V, Out, Lse, CuSeqlens,
    sm_scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lt, stride_lh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr, IS_CAUSAL: tl.constexpr,
    NATIVE_DOT: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    doc = tl.program_id(1)
    h = tl.program_id(2)
    start = tl.load(CuSeqlens + doc)
    seqlen = tl.load(CuSeqlens + doc + 1) - start
    start_m = pid_m * BLOCK_M
    if start_m < seqlen:
        kvh = h // GROUP
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < seqlen
        d_mask = offs_d < HEAD_DIM
        rows = (start + offs_m).to(tl.int64)
        q = tl.load(Q + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        if not NATIVE_DOT:
            q = q.to(tl.float32)  # also the interpreter's bf16 workaround: upcast right after the load
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        if IS_CAUSAL:
            hi = tl.minimum(seqlen, start_m + BLOCK_M)
        else:
            hi = seqlen
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            n_mask = cols < seqlen
            kv_rows = (start + cols).to(tl.int64)
            kt = tl.load(K + kv_rows[None, :] * stride_kt + kvh * stride_kh + offs_d[:, None],
                         mask=n_mask[None, :] & d_mask[:, None], other=0.0)
            v = tl.load(V + kv_rows[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :],
                        mask=n_mask[:, None] & d_mask[None, :], other=0.0)
            if not NATIVE_DOT:
                kt = kt.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, kt, input_precision=DOT_PREC) * sm_scale_log2
            valid = n_mask[None, :]
            if IS_CAUSAL:
                valid = valid & (offs_m[:, None] >= cols[None, :])
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: column 0 of the document is in the first block
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(Out + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                 acc.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
        tl.store(Lse + rows * stride_lt + h * stride_lh, m_i + tl.log2(l_i), mask=m_mask)


@triton.autotune(configs=_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_for_head_dim})
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, CuSeqlens,
    sm_scale, sm_scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_lt, stride_lh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr, IS_CAUSAL: tl.constexpr,
    NATIVE_DOT: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    doc = tl.program_id(1)
    kvh = tl.program_id(2)
    start = tl.load(CuSeqlens + doc)
    seqlen = tl.load(CuSeqlens + doc + 1) - start
    start_n = pid_n * BLOCK_N
    if start_n < seqlen:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        n_mask = offs_n < seqlen
        d_mask = offs_d < HEAD_DIM
        kv_rows = (start + offs_n).to(tl.int64)
        k = tl.load(K + kv_rows[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        v = tl.load(V + kv_rows[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        if not NATIVE_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        if IS_CAUSAL:
            lo = (start_n // BLOCK_M) * BLOCK_M  # query blocks before this key block see none of its keys
        else:
            lo = 0
        for g in range(GROUP):
            h = kvh * GROUP + g
            for start_m in range(lo, seqlen, BLOCK_M):
                offs_m = start_m + offs_m0
                m_mask = offs_m < seqlen
                rows = (start + offs_m).to(tl.int64)
                q = tl.load(Q + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                            mask=m_mask[:, None] & d_mask[None, :], other=0.0)
                do = tl.load(DO + rows[:, None] * stride_dot + h * stride_doh + offs_d[None, :],
                             mask=m_mask[:, None] & d_mask[None, :], other=0.0)
                if not NATIVE_DOT:
                    q = q.to(tl.float32)
                    do = do.to(tl.float32)
                lse = tl.load(Lse + rows * stride_lt + h * stride_lh, mask=m_mask, other=0.0)
                delta = tl.load(Delta + rows * stride_lt + h * stride_lh, mask=m_mask, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * sm_scale_log2
                valid = m_mask[:, None] & n_mask[None, :]
                if IS_CAUSAL:
                    valid = valid & (offs_m[:, None] >= offs_n[None, :])
                p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
                dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=DOT_PREC)
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PREC)
        dk = dk * sm_scale
        tl.store(DK + kv_rows[:, None] * stride_dkt + kvh * stride_dkh + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=n_mask[:, None] & d_mask[None, :])
        tl.store(DV + kv_rows[:, None] * stride_dvt + kvh * stride_dvh + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=n_mask[:, None] & d_mask[None, :])


@triton.autotune(configs=_configs(), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_for_head_dim})
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, CuSeqlens,
    sm_scale, sm_scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_lt, stride_lh, stride_dqt, stride_dqh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr, IS_CAUSAL: tl.constexpr,
    NATIVE_DOT: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    doc = tl.program_id(1)
    h = tl.program_id(2)
    start = tl.load(CuSeqlens + doc)
    seqlen = tl.load(CuSeqlens + doc + 1) - start
    start_m = pid_m * BLOCK_M
    if start_m < seqlen:
        kvh = h // GROUP
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < seqlen
        d_mask = offs_d < HEAD_DIM
        rows = (start + offs_m).to(tl.int64)
        q = tl.load(Q + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        do = tl.load(DO + rows[:, None] * stride_dot + h * stride_doh + offs_d[None, :],
                     mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        if not NATIVE_DOT:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(Lse + rows * stride_lt + h * stride_lh, mask=m_mask, other=0.0)
        delta = tl.load(Delta + rows * stride_lt + h * stride_lh, mask=m_mask, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        if IS_CAUSAL:
            hi = tl.minimum(seqlen, start_m + BLOCK_M)
        else:
            hi = seqlen
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            n_mask = offs_n < seqlen
            kv_rows = (start + offs_n).to(tl.int64)
            k = tl.load(K + kv_rows[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :],
                        mask=n_mask[:, None] & d_mask[None, :], other=0.0)
            vt = tl.load(V + kv_rows[None, :] * stride_vt + kvh * stride_vh + offs_d[:, None],
                         mask=n_mask[None, :] & d_mask[:, None], other=0.0)
            if not NATIVE_DOT:
                k = k.to(tl.float32)
                vt = vt.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * sm_scale_log2
            valid = m_mask[:, None] & n_mask[None, :]
            if IS_CAUSAL:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, vt, input_precision=DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
        dq = dq * sm_scale
        tl.store(DQ + rows[:, None] * stride_dqt + h * stride_dqh + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


# ----------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------
def _kernel_flags(dtype: torch.dtype):
    # On GPU, fp16/bf16 tiles go to tensor cores as they are (fp32 accumulation); fp32 uses exact IEEE dots
    # (not TF32), so fp32 results match a float64 reference to ~1e-6. The interpreter cannot do bf16
    # arithmetic at all, so there every tile is upcast to fp32 right after its load.
    native = (not interpreting()) and dtype in (torch.float16, torch.bfloat16)
    return native, ("tf32" if native else "ieee")  # 16-bit operands: the precision flag is Triton's default


def _zero_tail(x: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    """Zero rows at/after cu_seqlens[-1] (padding after the last document) without a host sync."""
    if x.shape[0] == 0:
        return
    tail = torch.arange(x.shape[0], device=x.device) >= cu_seqlens[-1]
    x.masked_fill_(tail.view(-1, *([1] * (x.dim() - 1))), 0)


def _check_inputs(q, k, v, cu_seqlens, max_seqlen):
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"varlen_attention: q/k/v must be [T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"varlen_attention: shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"varlen_attention: Hq={q.shape[1]} is not a multiple of Hkv={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"varlen_attention: q/k/v must share one of fp32/fp16/bf16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise TypeError("varlen_attention: cu_seqlens must be a 1-D int32 tensor [num_docs + 1]")
    if cu_seqlens.device != q.device:
        raise ValueError(f"varlen_attention: cu_seqlens on {cu_seqlens.device}, q on {q.device}")
    if q.shape[2] > 256:
        raise ValueError(f"varlen_attention: head_dim {q.shape[2]} > 256 is not supported")
    max_seqlen = int(max_seqlen)
    if cu_seqlens.device.type == "cpu" and cu_seqlens.numel() > 1:  # free to check without a GPU sync
        lens = cu_seqlens[1:] - cu_seqlens[:-1]
        if int(cu_seqlens[0]) != 0 or bool((lens < 0).any()) or int(cu_seqlens[-1]) > q.shape[0]:
            raise ValueError(f"varlen_attention: bad cu_seqlens {cu_seqlens.tolist()} for T={q.shape[0]}")
        if int(lens.max()) > max_seqlen:
            raise ValueError(f"varlen_attention: max_seqlen={max_seqlen} < longest document {int(lens.max())}")
    return max_seqlen


def _lastdim_contig(x):
    return x if x.stride(-1) == 1 else x.contiguous()


class VarlenAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, softmax_scale, causal):
        max_seqlen = _check_inputs(q, k, v, cu_seqlens, max_seqlen)
        check_device(q)
        q, k, v = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v)
        T, Hq, D = q.shape
        Hkv = k.shape[1]
        scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)
        num_docs = cu_seqlens.numel() - 1
        out = empty((T, Hq, D), q.dtype, q.device)
        lse = empty((T, Hq), torch.float32, q.device)  # log2 units of the scaled scores
        native, prec = _kernel_flags(q.dtype)
        if num_docs > 0 and max_seqlen > 0 and T > 0:
            grid = lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_M"]), num_docs, Hq)  # noqa: E731
            _fwd_kernel[grid](
                q, k, v, out, lse, cu_seqlens, scale * _LOG2E,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
                HEAD_DIM=D, BLOCK_D=max(16, next_pow2(D)), GROUP=Hq // Hkv, IS_CAUSAL=bool(causal),
                NATIVE_DOT=native, DOT_PREC=prec,
            )
        _zero_tail(out, cu_seqlens)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.max_seqlen, ctx.scale, ctx.causal = max_seqlen, scale, bool(causal)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        dout = dout.contiguous()
        T, Hq, D = q.shape
        Hkv = k.shape[1]
        num_docs = cu_seqlens.numel() - 1
        max_seqlen, scale = ctx.max_seqlen, ctx.scale
        delta = (dout.float() * out.float()).sum(-1)  # [T, Hq], same strides as lse
        dq = empty(q.shape, q.dtype, q.device)
        dk = empty(k.shape, k.dtype, k.device)
        dv = empty(v.shape, v.dtype, v.device)
        native, prec = _kernel_flags(q.dtype)
        common = dict(HEAD_DIM=D, BLOCK_D=max(16, next_pow2(D)), GROUP=Hq // Hkv, IS_CAUSAL=ctx.causal,
                      NATIVE_DOT=native, DOT_PREC=prec)
        if num_docs > 0 and max_seqlen > 0 and T > 0:
            grid_kv = lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_N"]), num_docs, Hkv)  # noqa: E731
            _bwd_dkdv_kernel[grid_kv](
                q, k, v, dout, lse, delta, dk, dv, cu_seqlens, scale, scale * _LOG2E,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                dout.stride(0), dout.stride(1), lse.stride(0), lse.stride(1),
                dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), **common,
            )
            grid_q = lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_M"]), num_docs, Hq)  # noqa: E731
            _bwd_dq_kernel[grid_q](
                q, k, v, dout, lse, delta, dq, cu_seqlens, scale, scale * _LOG2E,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                dout.stride(0), dout.stride(1), lse.stride(0), lse.stride(1),
                dq.stride(0), dq.stride(1), **common,
            )
        for g in (dq, dk, dv):
            _zero_tail(g, cu_seqlens)
        return dq, dk, dv, None, None, None, None


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None, causal=True):
    """Packed-sequence attention. See the module docstring for layouts; returns ``[T, Hq, D]`` in q's dtype."""
    return VarlenAttentionFunction.apply(q, k, v, cu_seqlens, max_seqlen, softmax_scale, causal)


def num_autotune_configs() -> int:
    return len(_fwd_kernel.configs)
