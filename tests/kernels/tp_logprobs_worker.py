"""One rank of the TP=2 vocab-parallel log-prob test (launched twice by test_logprobs.py).

argv: rank world_size port inputs.pt outdir device. Each rank holds vocab rows [rank*V_local, (rank+1)*V_local) of
the weight (and the same columns of the logits), computes logp and gradients, and saves them for the parent.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def main() -> None:
    rank, world, port, inputs, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    device = sys.argv[6]  # cpu (the interpreter) or cuda: gloo all-reduces either
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        import kernels

        group = dist.new_group(list(range(world)))
        data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in torch.load(inputs).items()}
        labels, g = data["labels"], data["grad"]
        results = {}
        for name in data["cases"]:
            hidden, weight = data[f"{name}/hidden"], data[f"{name}/weight"]
            v_local = weight.shape[0] // world
            h = hidden.clone().requires_grad_()
            w = weight[rank * v_local:(rank + 1) * v_local].clone().requires_grad_()
            with kernels.debug_poison():
                logp = kernels.packed_logprobs(h, w, labels, chunk_size=data["chunk_size"], tp_group=group)
                logp.backward(g)
            results[f"{name}/logp"] = logp.detach().cpu()
            results[f"{name}/dhidden"] = h.grad.cpu()
            results[f"{name}/dweight"] = w.grad.cpu()
        logits = data["logits"]
        v_local = logits.shape[1] // world
        x = logits[:, rank * v_local:(rank + 1) * v_local].clone().requires_grad_()
        with kernels.debug_poison():
            logp = kernels.logprobs_from_logits(x, labels, tp_group=group)
            logp.backward(g)
        results["logits/logp"] = logp.detach().cpu()
        results["logits/dlogits"] = x.grad.cpu()
        torch.save(results, f"{outdir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
