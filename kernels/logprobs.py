"""Packed per-token log-probabilities, chunked over the vocabulary, vocab-parallel aware.

``packed_logprobs(hidden [T, H], weight [V_local, H], labels [T])`` -> ``log softmax(hidden @ weight_full.T)[t, label]``
as fp32 ``[T]`` without ever holding a ``[T, vocab]`` tensor in the forward:

- forward: one Triton kernel computes ``hidden @ weight.T`` tile by tile (fp32 accumulation) and keeps, per token
  and per vocab split, only the running max, the sum of exponentials and the label's logit (``[splits, T]``);
  torch combines the splits, and under tensor parallelism the max and the sum-exp are all-reduced over the TP
  group (MAX, then SUM of rescaled sums) and the label logit (non-zero only on the owning rank) is SUM-reduced.
- backward: per vocab chunk of ``chunk_size`` rows, a Triton kernel recomputes the logits tile and writes
  ``dlogits = g * (onehot(label) - softmax)`` for that chunk only (``[T, chunk_size]``); then
  ``d_hidden += dlogits @ W_chunk`` and ``d_weight[chunk] = dlogits.T @ hidden`` (cuBLAS on GPU). Under TP,
  ``d_hidden`` is all-reduced over the TP group, so it is the full gradient on every rank: do NOT also route
  ``hidden`` through megatron's ``copy_to_tensor_model_parallel_region`` (that would reduce it twice).

``labels == -100`` gives logp 0 and no gradient. Labels are global vocab ids; rank ``r`` of the TP group owns
rows ``[r * V_local, (r + 1) * V_local)`` (megatron-core's vocab-parallel output layer).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from kernels._common import autotuning, check_device, empty, interpreting, require_triton

triton, tl = require_triton()

IGNORE_INDEX = -100


def _configs():
    if interpreting():
        return [triton.Config({"BLOCK_T": 16, "BLOCK_V": 32, "BLOCK_K": 32}, num_warps=1, num_stages=1)]
    shapes = [(64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 64, 64, 4, 3),
              (64, 64, 64, 4, 4), (32, 128, 64, 4, 3), (64, 256, 32, 8, 3)]
    if not autotuning():
        shapes = shapes[:1]
    return [triton.Config({"BLOCK_T": bt, "BLOCK_V": bv, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bt, bv, bk, w, s in shapes]


_KEY = ["HID", "HAS_WEIGHT", "NATIVE_DOT"]


@triton.jit
def _logits_tile(Hid, W, Logits, offs_t, t_mask, offs_v, v_mask, HID, stride_ht, stride_wv, stride_lt,
                 HAS_WEIGHT: tl.constexpr, NATIVE_DOT: tl.constexpr, DOT_PREC: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 ``[BLOCK_T, BLOCK_V]`` logits: ``hidden[offs_t] @ W[offs_v].T`` or a tile loaded from ``Logits``."""
    rows_t = offs_t.to(tl.int64)
    rows_v = offs_v.to(tl.int64)
    if HAS_WEIGHT:
        acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for k0 in range(0, HID, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < HID
            h = tl.load(Hid + rows_t[:, None] * stride_ht + offs_k[None, :],
                        mask=t_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(W + rows_v[None, :] * stride_wv + offs_k[:, None],
                        mask=v_mask[None, :] & k_mask[:, None], other=0.0)
            if not NATIVE_DOT:
                h = h.to(tl.float32)  # interpreter: bf16 must be upcast right after the load
                w = w.to(tl.float32)
            acc += tl.dot(h, w, input_precision=DOT_PREC)
    else:
        acc = tl.load(Logits + rows_t[:, None] * stride_lt + rows_v[None, :],
                      mask=t_mask[:, None] & v_mask[None, :], other=0.0).to(tl.float32)
    return acc


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _lse_partial_kernel(
    Hid, W, Logits, Labels, PartM, PartS, PartL,
    T, V, HID, split, label_offset,
    stride_ht, stride_wv, stride_lt,
    HAS_WEIGHT: tl.constexpr, NATIVE_DOT: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per (token block, vocab split): running max, sum of exp(logit - max) and the label's logit."""
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    label = tl.load(Labels + offs_t, mask=t_mask, other=-1).to(tl.int64) - label_offset
    m_i = tl.full([BLOCK_T], float("-inf"), tl.float32)
    s_i = tl.zeros([BLOCK_T], tl.float32)
    lab = tl.zeros([BLOCK_T], tl.float32)
    v_lo = pid_s * split
    v_hi = tl.minimum(V, v_lo + split)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_mask = offs_v < v_hi
        x = _logits_tile(Hid, W, Logits, offs_t, t_mask, offs_v, v_mask, HID, stride_ht, stride_wv, stride_lt,
                         HAS_WEIGHT, NATIVE_DOT, DOT_PREC, BLOCK_T, BLOCK_V, BLOCK_K)
        x = tl.where(v_mask[None, :], x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1))  # finite: every tile has at least one valid column
        s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
        m_i = m_new
        hit = (offs_v[None, :].to(tl.int64) == label[:, None]) & v_mask[None, :]  # a label past this shard's
        lab += tl.sum(tl.where(hit, x, 0.0), 1)  # end must not hit a masked (-inf) column
    tl.store(PartM + pid_s * T + offs_t, m_i, mask=t_mask)
    tl.store(PartS + pid_s * T + offs_t, s_i, mask=t_mask)
    tl.store(PartL + pid_s * T + offs_t, lab, mask=t_mask)


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _dlogits_kernel(
    Hid, W, Logits, Labels, Lse, G, DL,
    T, V, HID, label_offset,
    stride_ht, stride_wv, stride_lt, stride_dlt,
    HAS_WEIGHT: tl.constexpr, NATIVE_DOT: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``DL[t, v] = G[t] * (1[v == label_t] - exp(logit[t, v] - lse[t]))`` for one ``[BLOCK_T, BLOCK_V]`` tile."""
    pid_t = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    t_mask = offs_t < T
    v_mask = offs_v < V
    label = tl.load(Labels + offs_t, mask=t_mask, other=-1).to(tl.int64) - label_offset
    lse = tl.load(Lse + offs_t, mask=t_mask, other=0.0)
    g = tl.load(G + offs_t, mask=t_mask, other=0.0)
    x = _logits_tile(Hid, W, Logits, offs_t, t_mask, offs_v, v_mask, HID, stride_ht, stride_wv, stride_lt,
                     HAS_WEIGHT, NATIVE_DOT, DOT_PREC, BLOCK_T, BLOCK_V, BLOCK_K)
    p = tl.exp(x - lse[:, None])
    hit = (offs_v[None, :].to(tl.int64) == label[:, None]) & v_mask[None, :]
    dl = g[:, None] * (tl.where(hit, 1.0, 0.0) - p)
    tl.store(DL + offs_t.to(tl.int64)[:, None] * stride_dlt + offs_v[None, :], dl.to(DL.dtype.element_ty),
             mask=t_mask[:, None] & v_mask[None, :])


# ----------------------------------------------------------------------------------------------------------
def _tp(tp_group):
    if tp_group is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(tp_group), dist.get_world_size(tp_group)


def _flags(dtype):
    native = (not interpreting()) and dtype in (torch.float16, torch.bfloat16)
    return native, ("tf32" if native else "ieee")


def _default_split(v_local: int) -> int:
    return 64 if interpreting() else 4096


def _lse_and_label(hid, w, logits, labels, v_local, tp_group, dtype):
    """Returns (lse [T] fp32, label logit [T] fp32), reduced over the TP group."""
    rank, world = _tp(tp_group)
    T = labels.shape[0]
    device = labels.device
    split = _default_split(v_local)
    n_split = triton.cdiv(v_local, split)
    part_m = empty((n_split, T), torch.float32, device)
    part_s = empty((n_split, T), torch.float32, device)
    part_l = empty((n_split, T), torch.float32, device)
    native, prec = _flags(dtype)
    has_w = w is not None
    dummy = hid if has_w else logits
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_T"]), n_split)  # noqa: E731
    _lse_partial_kernel[grid](
        hid if has_w else dummy, w if has_w else dummy, logits if not has_w else dummy, labels,
        part_m, part_s, part_l, T, v_local, hid.shape[1] if has_w else 0, split, rank * v_local,
        hid.stride(0) if has_w else 0, w.stride(0) if has_w else 0, logits.stride(0) if not has_w else 0,
        HAS_WEIGHT=has_w, NATIVE_DOT=native, DOT_PREC=prec,
    )
    m_loc = part_m.max(0).values
    s_loc = (part_s * torch.exp(part_m - m_loc)).sum(0)
    lab = part_l.sum(0)
    if world > 1:
        m = m_loc.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
        s = s_loc * torch.exp(m_loc - m)
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=tp_group)
        dist.all_reduce(lab, op=dist.ReduceOp.SUM, group=tp_group)
    else:
        m, s = m_loc, s_loc
    return m + torch.log(s), lab


def _check(labels, T, what):
    if labels.dim() != 1 or labels.shape[0] != T:
        raise ValueError(f"{what}: labels must be [T={T}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise TypeError(f"{what}: labels must be integer, got {labels.dtype}")


class PackedLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, tp_group):
        check_device(hidden)
        if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
            raise ValueError(f"packed_logprobs: hidden [T, H] and weight [V_local, H]; got {tuple(hidden.shape)}, "
                             f"{tuple(weight.shape)}")
        if hidden.dtype != weight.dtype:
            raise TypeError(f"packed_logprobs: hidden {hidden.dtype} != weight {weight.dtype}")
        _check(labels, hidden.shape[0], "packed_logprobs")
        hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
        weight = weight if weight.stride(-1) == 1 else weight.contiguous()
        labels = labels.contiguous()
        lse, lab = _lse_and_label(hidden, weight, None, labels, weight.shape[0], tp_group, hidden.dtype)
        valid = labels != IGNORE_INDEX
        logp = torch.where(valid, lab - lse, torch.zeros_like(lse))
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_size, ctx.tp_group = chunk_size, tp_group
        return logp

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, labels, lse = ctx.saved_tensors
        rank, world = _tp(ctx.tp_group)
        T, H = hidden.shape
        v_local = weight.shape[0]
        g = torch.where(labels != IGNORE_INDEX, grad.float(), torch.zeros_like(lse)).contiguous()
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cdt = torch.float32 if hidden.dtype == torch.float32 else hidden.dtype  # dtype of the dlogits chunk
        native, prec = _flags(hidden.dtype)
        chunk = int(ctx.chunk_size or v_local)
        dh = torch.zeros((T, H), dtype=torch.float32, device=hidden.device) if need_h else None
        dw = empty(weight.shape, weight.dtype, weight.device) if need_w else None
        dl_buf = empty((T, min(chunk, v_local)), cdt, hidden.device)
        for c in range(0, v_local, chunk):
            cw = min(chunk, v_local - c)
            w_c = weight[c:c + cw]
            dl = dl_buf[:, :cw]
            grid = lambda meta: (triton.cdiv(T, meta["BLOCK_T"]), triton.cdiv(cw, meta["BLOCK_V"]))  # noqa: E731
            _dlogits_kernel[grid](
                hidden, w_c, hidden, labels, lse, g, dl, T, cw, H, rank * v_local + c,
                hidden.stride(0), w_c.stride(0), 0, dl.stride(0),
                HAS_WEIGHT=True, NATIVE_DOT=native, DOT_PREC=prec,
            )
            if need_h:
                if cdt == torch.float32:
                    dh.addmm_(dl, w_c)
                else:
                    dh += (dl @ w_c).float()
            if need_w:
                torch.mm(dl.t(), hidden, out=dw[c:c + cw])
        if need_h and world > 1:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=ctx.tp_group)
        return (dh.to(hidden.dtype) if need_h else None), dw, None, None, None


class LogprobsFromLogitsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, tp_group):
        check_device(logits)
        if logits.dim() != 2:
            raise ValueError(f"logprobs_from_logits: logits must be [T, V_local], got {tuple(logits.shape)}")
        _check(labels, logits.shape[0], "logprobs_from_logits")
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        labels = labels.contiguous()
        lse, lab = _lse_and_label(None, None, logits, labels, logits.shape[1], tp_group, logits.dtype)
        logp = torch.where(labels != IGNORE_INDEX, lab - lse, torch.zeros_like(lse))
        ctx.save_for_backward(logits, labels, lse)
        ctx.tp_group = tp_group
        return logp

    @staticmethod
    def backward(ctx, grad):
        logits, labels, lse = ctx.saved_tensors
        rank, _ = _tp(ctx.tp_group)
        T, v_local = logits.shape
        g = torch.where(labels != IGNORE_INDEX, grad.float(), torch.zeros_like(lse)).contiguous()
        dlogits = empty((T, v_local), logits.dtype, logits.device)
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_T"]), triton.cdiv(v_local, meta["BLOCK_V"]))  # noqa: E731
        _dlogits_kernel[grid](
            logits, logits, logits, labels, lse, g, dlogits, T, v_local, 0, rank * v_local,
            0, 0, logits.stride(0), dlogits.stride(0),
            HAS_WEIGHT=False, NATIVE_DOT=False, DOT_PREC="ieee",
        )
        return dlogits, None, None


def packed_logprobs(hidden, weight, labels, chunk_size=None, tp_group=None):
    """See the module docstring. ``hidden [..., H]``, ``labels [...]`` -> fp32 logp shaped like ``labels``."""
    shape = labels.shape
    logp = PackedLogprobsFunction.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
                                        chunk_size or (256 if interpreting() else 8192), tp_group)
    return logp.view(shape)


def logprobs_from_logits(logits, labels, tp_group=None):
    """log_softmax(logits).gather(labels) in fp32 without a ``[T, V]`` fp32 copy; vocab-parallel with ``tp_group``."""
    shape = labels.shape
    logp = LogprobsFromLogitsFunction.apply(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), tp_group)
    return logp.view(shape)


def num_autotune_configs() -> int:
    return len(_lse_partial_kernel.configs)
