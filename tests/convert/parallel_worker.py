"""Run under torchrun with N processes: load converted checkpoints at TP/PP layouts, save the full logits.

usage: torchrun --nproc-per-node N parallel_worker.py TOKENS.pt OUT_DIR NAME=CKPT:TP:PP[@SAVE_RUN_DIR] ...
Rank 0 writes OUT_DIR/NAME.pt with logits [b, s, vocab] for each job; with @SAVE_RUN_DIR the loaded model is also
saved there at this layout by the trainer's save_checkpoint (a checkpoint saved at that TP/PP, for to-hf). One
process group for all jobs (start-up dominates); megatron's model-parallel state is rebuilt per layout, and a layout
smaller than the world runs data-parallel replicas. `launch` runs it from a test.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def job(name: str, ckpt: Path, tp: int, pp: int, save_to: Optional[Path] = None) -> str:
    """One job argument: load `ckpt` at TP x PP, record its logits as `name`, optionally save it to `save_to`."""
    return f"{name}={ckpt}:{tp}:{pp}" + (f"@{save_to}" if save_to else "")


def launch(nproc: int, tokens: torch.Tensor, out_dir: Path, jobs: Sequence[str],
           timeout: float = 300) -> dict[str, torch.Tensor]:
    """The jobs in one torchrun of `nproc` gloo processes; the logits of each job by name."""
    from tests.helpers import REPO

    torch.save(tokens, out_dir / "tokens.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
           str(Path(__file__)), str(out_dir / "tokens.pt"), str(out_dir), *jobs]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = [arg.split("=", 1)[0] for arg in jobs]
    return {name: torch.load(out_dir / f"{name}.pt") for name in names}


def main() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megafin.generate.forward import forward_logits
    from megafin.runtime.model_session import load_model
    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        # Tied embeddings at PP>1: megatron's LanguageModule.setup_embeddings_and_output_layer calls
        # `weight.data.cuda()` (language_module.py:244) before its all-reduce, which megafin's cpu_compat does not
        # cover yet (reported to the trainer owner). Test-only shim so the converted checkpoint can be checked.
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    tokens = torch.load(sys.argv[1])
    out_dir = Path(sys.argv[2])
    jobs = [arg.split("=", 1) for arg in sys.argv[3:]]
    first = True
    for name, spec in jobs:
        spec, _, save_to = spec.partition("@")
        ckpt, tp, pp = spec.rsplit(":", 2)
        if first:
            init_distributed(detect_launch_env(), int(tp), int(pp), 1234)
            first = False
        else:
            parallel_state.destroy_model_parallel()
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=int(tp),
                                                     pipeline_model_parallel_size=int(pp))
        model, _, vocab = load_model(Path(ckpt), int(tp), int(pp))
        logits = forward_logits(model, tokens, vocab)
        if dist.get_rank() == 0:
            torch.save(logits, out_dir / f"{name}.pt")
        if save_to:
            from megafin.checkpoint.manager import Progress, read_meta, save_checkpoint

            meta = read_meta(ckpt)
            save_checkpoint(save_to, model, None, None, Progress(), keep_last=1,
                            extra_meta={k: meta[k] for k in ("vocab_size", "config")})
        dist.barrier()
    shutdown_distributed()


if __name__ == "__main__":
    main()
