"""Packed log-prob kernel vs log_softmax(...).gather(...) in float64, incl. TP=2 vocab-parallel; segment_sum."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernels_testutil import TOL, assert_close, make_cu_seqlens

import kernels
from kernels.reference import logprobs_from_logits_ref, packed_logprobs_ref, segment_sum_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _labels(T, V):
    labels = torch.randint(0, V, (T,), device=DEVICE)
    labels[torch.rand(T, device=DEVICE) < 0.2] = -100
    labels[0] = -100
    labels[1] = V - 1  # the last vocab row (a partial block)
    return labels


def _check_ignored(labels, logp, *grads_per_token):
    ign = labels == -100
    assert torch.equal(logp[ign], torch.zeros_like(logp[ign])), "ignored labels must give logp 0"
    for gr in grads_per_token:
        assert torch.equal(gr[ign], torch.zeros_like(gr[ign])), "ignored labels must get no gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_packed_logprobs_matches_reference(dtype, seed):
    T, H, V = 45, 40, 100  # nothing a multiple of the blocks; H > BLOCK_K so the K loop runs twice
    hidden = torch.randn(T, H, device=DEVICE).to(dtype)
    weight = (torch.randn(V, H, device=DEVICE) * 0.4).to(dtype)
    labels = _labels(T, V)
    grad = torch.randn(T, device=DEVICE)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with kernels.debug_poison():
        logp = kernels.packed_logprobs(h, w, labels, chunk_size=48)  # 3 vocab chunks, the last partial
        logp.backward(grad)
    hr, wr = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref = packed_logprobs_ref(hr, wr, labels)
    ref.backward(grad.double())
    assert logp.dtype == torch.float32 and h.grad.dtype == dtype and w.grad.dtype == dtype
    # logp is accumulated in fp32 from the exact (bf16/fp16-valued) inputs, so it is held to the fp32 tolerance
    assert_close(f"logp {dtype}", logp, ref, TOL[torch.float32], seed)
    assert_close(f"dhidden {dtype}", h.grad, hr.grad, TOL[dtype], seed)
    assert_close(f"dweight {dtype}", w.grad, wr.grad, TOL[dtype], seed)
    _check_ignored(labels, logp, h.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_logprobs_from_logits_matches_reference(dtype, seed):
    T, V = 37, 150
    logits = (torch.randn(T, V, device=DEVICE) * 4).to(dtype)
    labels = _labels(T, V)
    grad = torch.randn(T, device=DEVICE)
    x = logits.clone().requires_grad_()
    with kernels.debug_poison():
        logp = kernels.logprobs_from_logits(x, labels)
        logp.backward(grad)
    xr = logits.double().requires_grad_()
    ref = logprobs_from_logits_ref(xr, labels)
    ref.backward(grad.double())
    assert_close(f"logp {dtype}", logp, ref, TOL[torch.float32], seed)
    assert_close(f"dlogits {dtype}", x.grad, xr.grad, TOL[dtype], seed)
    _check_ignored(labels, logp, x.grad)
    # the plain torch path the kernel replaces, for the record
    plain = torch.log_softmax(logits.float(), -1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
    assert_close("vs torch fp32 log_softmax.gather", logp[labels != -100], plain[labels != -100].double(), 1e-5, seed)


def test_leading_dims_and_no_weight_grad(seed):
    hidden = torch.randn(2, 9, 32, device=DEVICE, requires_grad=True)
    weight = torch.randn(70, 32, device=DEVICE)
    labels = torch.randint(0, 70, (2, 9), device=DEVICE)
    logp = kernels.packed_logprobs(hidden, weight, labels)
    assert logp.shape == (2, 9)
    logp.sum().backward()
    hr = hidden.detach().double().requires_grad_()
    ref = packed_logprobs_ref(hr.view(18, 32), weight, labels.view(18))
    ref.sum().backward()
    assert_close("logp", logp.view(18), ref, 1e-5, seed)
    assert_close("dhidden", hidden.grad, hr.grad, 1e-5, seed)


def test_segment_sum(seed):
    lengths = [3, 0, 1, 16, 7]
    cu = make_cu_seqlens(lengths).to(DEVICE)
    vals = torch.randn(sum(lengths) + 2, device=DEVICE, requires_grad=True)  # 2 padding tokens at the end
    out = kernels.segment_sum(vals, cu)
    ref = segment_sum_ref(vals.detach(), cu)
    assert out.shape == (len(lengths),)
    assert_close("segment_sum", out, ref, 1e-6, seed)
    assert out[1].item() == 0.0
    w = torch.randn(len(lengths), device=DEVICE)
    (out * w).sum().backward()
    expect = torch.cat([w[i].expand(n) for i, n in enumerate(lengths)] + [torch.zeros(2, device=DEVICE)])
    assert torch.equal(vals.grad, expect)
    # DPO-style: per-document sums of masked token log-probs over [T, 2] values work too
    two = torch.randn(sum(lengths), 2, device=DEVICE)
    assert_close("segment_sum 2-d", kernels.segment_sum(two, cu), segment_sum_ref(two, cu), 1e-6, seed)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_tp2_vocab_parallel(tmp_path, seed):
    """2 gloo processes, each with half the vocab: logp and gradients equal the single-process float64 reference."""
    T, H, V, world = 40, 32, 100, 2  # V_local = 50: not a multiple of the vocab blocks
    labels = torch.randint(0, V, (T,))
    labels[torch.rand(T) < 0.2] = -100
    labels[0], labels[1], labels[2] = 0, V // 2 - 1, V // 2  # both sides of the shard boundary
    data = {"labels": labels, "grad": torch.randn(T), "chunk_size": 32, "cases": ["fp32", "bf16"],
            "logits": torch.randn(T, V) * 3}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        data[f"{name}/hidden"] = torch.randn(T, H).to(dt)
        data[f"{name}/weight"] = (torch.randn(V, H) * 0.4).to(dt)
    torch.save(data, tmp_path / "inputs.pt")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    # On a GPU both ranks run the compiled kernels on the one device, over gloo (which reduces CUDA tensors too):
    # the first CUDA run kept CPU tensors under the interpreter, and Triton 3.6's interpreter fails with numpy 2.4.
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "tp_logprobs_worker.py"), str(r), str(world), str(port),
                          str(tmp_path / "inputs.pt"), str(tmp_path), DEVICE], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=150)
            logs.append(out)
    finally:
        for p in procs:  # reap: never leave a rank behind (e.g. after a timeout)
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hr = data[f"{name}/hidden"].double().requires_grad_()
        wr = data[f"{name}/weight"].double().requires_grad_()
        ref = packed_logprobs_ref(hr, wr, labels)
        ref.backward(data["grad"].double())
        for r in range(world):
            assert_close(f"TP{world} rank{r} {name} logp", res[r][f"{name}/logp"], ref, TOL[torch.float32], seed)
            assert_close(f"TP{world} rank{r} {name} dhidden", res[r][f"{name}/dhidden"], hr.grad, TOL[dt], seed)
        dw = torch.cat([res[r][f"{name}/dweight"] for r in range(world)])
        assert_close(f"TP{world} {name} dweight", dw, wr.grad, TOL[dt], seed)
        _check_ignored(labels, res[0][f"{name}/logp"], res[0][f"{name}/dhidden"])

    xr = data["logits"].double().requires_grad_()
    ref = logprobs_from_logits_ref(xr, labels)
    ref.backward(data["grad"].double())
    for r in range(world):
        assert_close(f"TP{world} rank{r} logits logp", res[r]["logits/logp"], ref, TOL[torch.float32], seed)
    dx = torch.cat([res[r]["logits/dlogits"] for r in range(world)], dim=1)
    assert_close(f"TP{world} dlogits", dx, xr.grad, TOL[torch.float32], seed)
