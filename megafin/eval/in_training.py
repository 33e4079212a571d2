"""Task scores during training: `train.eval_tasks` / `train.eval_every` / `train.eval_limit` / `train.eval_data_dir`.

Every eval_every steps, the first data-parallel replica answers the first eval_limit examples of each task with the
LIVE model (no checkpoint round trip): the megafin engine's plain-torch decoder (megafin/generate/lean_decode.py)
reads the training model's own parameters, greedy, every task's examples batched; at TP>1 the replica's TP ranks
decode in lockstep on their shards (the recipes for 8B models train at TP=2), at PP>1 its stages hand the hidden
states on (chunk by chunk with virtual stages) and the last broadcasts the logits (the 70B recipes train at PP>1);
under context parallelism its first CP rank decodes (CP splits sequences, not weights). The scores go into that
step's metrics record as `eval/<task>/<metric>` (metrics.jsonl, wandb, tensorboard), written by rank 0. Bounded in
time by eval_limit; the other replicas wait at the next collective. The live model is usable at any layout with a
Llama/Qwen2-shaped model (what lean_decode covers); `check` refuses unknown or judged tasks and missing data files
before any process group starts."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional



def check(cfg: Any) -> list[str]:
    """Config problems of the train.eval_* keys, one line each (empty: none or fine)."""
    t = cfg.train
    if not t.eval_tasks:
        return [] if t.eval_every == 0 else [f"train.eval_tasks: expected task names when train.eval_every is set, "
                                             f"got {t.eval_tasks!r}"]
    from megafin.eval.tasks.registry import EVAL_TASKS

    problems = []
    if t.eval_every < 1:
        problems.append(f"train.eval_every: expected a positive number of steps with train.eval_tasks, "
                        f"got {t.eval_every!r}")
    if t.eval_limit < 1:
        problems.append(f"train.eval_limit: expected a positive integer, got {t.eval_limit!r}")
    data_dir = Path(t.eval_data_dir) if t.eval_data_dir else None
    if data_dir is None or not data_dir.is_dir():
        problems.append(f"train.eval_data_dir: expected the directory of the task files (layout of "
                        f"../shared/data), got {t.eval_data_dir!r}")
    for name in t.eval_tasks:
        task = EVAL_TASKS.get(name)
        if task is None:
            problems.append(f"train.eval_tasks: expected names of {', '.join(EVAL_TASKS)}, got {name!r}")
        elif task.needs_judge:
            problems.append(f"train.eval_tasks: {name} needs a judge; expected tasks scored without one")
        elif data_dir is not None and data_dir.is_dir() and not (data_dir / task.data_file).is_file():
            problems.append(f"train.eval_data_dir: expected {task.data_file} in {data_dir} for task {name}")
    return problems


class TrainingEval:
    """Built on rank 0 before the loop (the examples read once); `scores(step, model)` at the due steps."""

    def __init__(self, cfg: Any, vocab_size: int) -> None:
        from megafin.eval.run import prepare, resolve_tasks

        t = cfg.train
        self.every = t.eval_every
        self.prepared = prepare(resolve_tasks(",".join(t.eval_tasks)), Path(t.eval_data_dir), t.eval_limit)
        self.tokenizer_dir = cfg.data.tokenizer
        self.vocab_size = vocab_size
        self.max_positions = cfg.model.max_position_embeddings
        self.reason: Optional[str] = None  # why the live model could not be evaluated (said once)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def scores(self, chunks: list) -> dict[str, float]:
        """{"eval/<task>/<metric>": value, ..., "eval/seconds": s} of this rank's model `chunks` (one module, or its
        chunks with virtual pipeline stages); empty when it cannot be decoded live (the reason in self.reason)."""
        from megafin.eval.run import evaluate_prepared
        from megafin.generate.api import GenerationError
        from megafin.generate.engines.megafin_engine import MegafinEngine

        t0 = time.perf_counter()
        try:
            engine = MegafinEngine.on_live_model(chunks, self.tokenizer_dir, self.vocab_size, self.max_positions)
        except GenerationError as err:
            self.reason = str(err)
            return {}
        was_training = [chunk.training for chunk in chunks]
        for chunk in chunks:
            chunk.eval()
        try:
            entries, _ = evaluate_prepared(engine, self.prepared, resamples=0)
        finally:
            for chunk, mode in zip(chunks, was_training):
                chunk.train(mode)
        out = {}
        for e in entries:
            for metric, value in e["metrics"].items():
                out[f"eval/{e['task']}/{metric}"] = value
        out["eval/seconds"] = round(time.perf_counter() - t0, 3)
        return out
