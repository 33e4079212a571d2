"""Varlen causal flash attention (Triton; under TRITON_INTERPRET=1 when there is no CUDA) vs a float64 reference.

Fresh random inputs each run (the seed is printed on failure). Kernel outputs and gradients start as NaN
(``kernels.debug_poison``), so an element the kernels never write fails the comparison.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernels_testutil import TOL, assert_close, doc_lengths, make_cu_seqlens

import kernels
from kernels.reference import attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO = Path(__file__).resolve().parents[2]


def _inputs(lengths, hq, hkv, d, dtype, tail=0):
    T = sum(lengths) + tail
    q = torch.randn(T, hq, d, device=DEVICE).to(dtype)
    k = torch.randn(T, hkv, d, device=DEVICE).to(dtype)
    v = torch.randn(T, hkv, d, device=DEVICE).to(dtype)
    return q, k, v, make_cu_seqlens(lengths).to(DEVICE)


def _run(q, k, v, cu, max_seqlen, dout, **kw):
    """Triton forward + backward with poisoned outputs; returns (out, dq, dk, dv)."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    with kernels.debug_poison():
        out = kernels.varlen_attention(q, k, v, cu, max_seqlen, **kw)
        out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def _reference(q, k, v, cu, dout, **kw):
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = attention_ref(q, k, v, cu, **kw)
    out.backward(dout.double())
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("group", [1, 2, 4], ids=lambda g: f"gqa{g}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_float64_reference(dtype, group, seed):
    lengths = doc_lengths(16)  # length 1, exactly one 16-block, longer than a block, a partial block
    q, k, v, cu = _inputs(lengths, hq=4, hkv=4 // group, d=16, dtype=dtype)
    dout = torch.randn(q.shape, device=DEVICE).to(dtype)
    got = _run(q, k, v, cu, max(lengths), dout)
    ref = _reference(q, k, v, cu, dout)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    for name, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert_close(f"{name} {dtype} lengths={lengths}", x, r, TOL[dtype], seed)


def test_head_dim_32_noncausal_scale_empty_doc_and_tail(seed):
    """head_dim 32, causal=False, an explicit scale, an empty document, and 5 padding tokens after the last doc."""
    lengths = [7, 0, 33, 16]
    q, k, v, cu = _inputs(lengths, hq=4, hkv=2, d=32, dtype=torch.float32, tail=5)
    dout = torch.randn(q.shape, device=DEVICE)
    for causal in (False, True):
        got = _run(q, k, v, cu, 33, dout, softmax_scale=0.3, causal=causal)
        ref = _reference(q, k, v, cu, dout, softmax_scale=0.3, causal=causal)
        for name, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
            assert_close(f"{name} causal={causal}", x, r, TOL[torch.float32], seed)
            assert torch.equal(x[-5:], torch.zeros_like(x[-5:])), f"{name}: padding tokens after the last doc != 0"


def test_head_dim_not_power_of_two(seed):
    lengths = [20, 3]
    q, k, v, cu = _inputs(lengths, hq=2, hkv=1, d=24, dtype=torch.float32)
    dout = torch.randn(q.shape, device=DEVICE)
    for name, x, r in zip(("out", "dq", "dk", "dv"), _run(q, k, v, cu, 20, dout), _reference(q, k, v, cu, dout)):
        assert_close(name, x, r, TOL[torch.float32], seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_document_isolation(dtype, seed):
    """Perturbing document j leaves every other document's outputs and gradients exactly unchanged."""
    lengths = doc_lengths(16)
    q, k, v, cu = _inputs(lengths, hq=4, hkv=2, d=16, dtype=dtype)
    dout = torch.randn(q.shape, device=DEVICE).to(dtype)
    base = _run(q, k, v, cu, max(lengths), dout)
    j = int(torch.randint(len(lengths), ()).item())
    s, e = int(cu[j]), int(cu[j + 1])
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[s:e] += torch.randn(x[s:e].shape, device=DEVICE).to(dtype)
    pert = _run(q2, k2, v2, cu, max(lengths), dout)
    others = torch.ones(q.shape[0], dtype=torch.bool, device=DEVICE)
    others[s:e] = False
    for name, a, b in zip(("out", "dq", "dk", "dv"), base, pert):
        assert torch.equal(a[others], b[others]), f"{name}: doc {j} leaked into other documents (seed={seed})"
        assert not torch.isnan(b).any()
    assert not torch.equal(base[0][s:e], pert[0][s:e]), "the perturbation did not change doc j: test is vacuous"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_causality(dtype, seed):
    """Perturbing the last token of a document leaves all earlier outputs (and other docs) exactly unchanged."""
    lengths = doc_lengths(16)
    q, k, v, cu = _inputs(lengths, hq=4, hkv=1, d=16, dtype=dtype)
    with kernels.debug_poison():
        base = kernels.varlen_attention(q, k, v, cu, max(lengths))
    for j, n in enumerate(lengths):
        if n < 2:
            continue
        last = int(cu[j + 1]) - 1
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[last] += torch.randn(x[last].shape, device=DEVICE).to(dtype)
        with kernels.debug_poison():
            pert = kernels.varlen_attention(q2, k2, v2, cu, max(lengths))
        keep = torch.ones(q.shape[0], dtype=torch.bool, device=DEVICE)
        keep[last] = False
        assert torch.equal(base[keep], pert[keep]), f"doc {j}: the last token changed earlier outputs (seed={seed})"
        assert not torch.equal(base[last], pert[last]), "perturbation had no effect: test is vacuous"


def test_comparison_can_fail(seed):
    """The reference comparison is sharp: a 1% wrong softmax scale is caught, as is an unwritten (NaN) element."""
    lengths = [17, 5]
    q, k, v, cu = _inputs(lengths, hq=2, hkv=2, d=16, dtype=torch.float32)
    out = kernels.varlen_attention(q, k, v, cu, 17, softmax_scale=1.01 / 4)
    with pytest.raises(AssertionError):
        assert_close("out", out, attention_ref(q, k, v, cu), TOL[torch.float32], seed)
    out = out.clone()
    out[3, 1, 2] = float("nan")
    with pytest.raises(AssertionError):
        assert_close("out", out, attention_ref(q, k, v, cu, softmax_scale=1.01 / 4), TOL[torch.float32], seed)
    with kernels.debug_poison():
        assert torch.isnan(kernels._common.empty((2,), torch.float32, DEVICE)).all()


def test_bad_inputs_are_rejected():
    q, k, v, cu = _inputs([4, 4], hq=4, hkv=3, d=16, dtype=torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        kernels.varlen_attention(q, k, v, cu, 4)
    q, k, v, cu = _inputs([4, 4], hq=4, hkv=2, d=16, dtype=torch.float32)
    with pytest.raises(TypeError, match="int32"):
        kernels.varlen_attention(q, k, v, cu.long(), 4)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="max_seqlen"):
            kernels.varlen_attention(q, k, v, cu, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only check")
def test_one_autotune_config_under_interpreter():
    from kernels import attention, logprobs

    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert attention.num_autotune_configs() == 1
    assert logprobs.num_autotune_configs() == 1


def test_gpu_configs_autotune_unless_switched_off(monkeypatch):
    """On a GPU (no interpreter) every config is autotuned; MEGAFIN_KERNELS_AUTOTUNE=0 keeps one that every head_dim's
    pruning keeps (the CUDA tests run with it)."""
    from kernels import attention, logprobs

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MEGAFIN_KERNELS_AUTOTUNE", raising=False)
    assert len(attention._configs()) == 8 and len(logprobs._configs()) == 6
    monkeypatch.setenv("MEGAFIN_KERNELS_AUTOTUNE", "0")
    (one,) = attention._configs()
    assert len(logprobs._configs()) == 1
    for d in (32, 64, 128, 256):
        assert attention._prune_for_head_dim([one], {"BLOCK_D": d}) == [one]


def test_import_without_triton():
    """``import kernels`` works without triton; calling a kernel raises a clear ImportError."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "cu = torch.tensor([0, 2, 3], dtype=torch.int32)\n"
        "assert kernels.segment_sum(torch.ones(3), cu).tolist() == [2.0, 1.0]\n"
        "try:\n"
        "    kernels.varlen_attention(torch.zeros(3, 1, 16), torch.zeros(3, 1, 16), torch.zeros(3, 1, 16), cu, 2)\n"
        "except ImportError as e:\n"
        "    assert 'Triton' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout


def test_megatron_core_attention_layouts(seed):
    """kernels.core_attention with megatron-core's PackedSeqParams (THD) and with sbhd batches."""
    from megatron.core.packed_seq_params import PackedSeqParams

    lengths = doc_lengths(16)
    q, k, v, cu = _inputs(lengths, hq=4, hkv=2, d=16, dtype=torch.float32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lengths),
                             max_seqlen_kv=max(lengths))
    out = kernels.core_attention(q, k, v, params, softmax_scale=0.2)  # [t, np, hn]
    assert_close("thd", out, attention_ref(q, k, v, cu, softmax_scale=0.2), TOL[torch.float32], seed)
    out4 = kernels.core_attention(q[:, None], k[:, None], v[:, None], params, softmax_scale=0.2)  # [t, 1, np, hn]
    assert torch.equal(out4, out)

    s, b = 19, 3
    qs = torch.randn(s, b, 4, 16, device=DEVICE, requires_grad=True)
    ks = torch.randn(s, b, 1, 16, device=DEVICE, requires_grad=True)
    vs = torch.randn(s, b, 1, 16, device=DEVICE, requires_grad=True)
    out = kernels.core_attention(qs, ks, vs)
    assert out.shape == (s, b, 4 * 16)
    out.sum().backward()
    for i in range(b):
        one = make_cu_seqlens([s]).to(DEVICE)
        ref = attention_ref(qs[:, i].detach(), ks[:, i].detach(), vs[:, i].detach(), one)
        assert_close(f"sbhd row {i}", out[:, i].view(s, 4, 16), ref, TOL[torch.float32], seed)
    assert qs.grad is not None and not torch.isnan(ks.grad).any()
