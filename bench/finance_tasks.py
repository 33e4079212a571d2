"""Shared set-up of the SFT and DPO throughput benches: real financial instruction data from ../shared/data,
a tokenizer trained on it, and the same tiny Llama shape for megafin and for the TRL peer."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
LABELS = ("negative", "neutral", "positive")
# The tiny recipes' shape (recipes/tiny/*.yaml).
SHAPE = dict(num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=704)


def require_shared() -> None:
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: the benches read the real data in ../shared/data")


def sft_records(limit: int) -> list[dict]:
    """FPB, FiQA-SA and gold-headline instruction examples (megafin.eval.tasks.sft_records), interleaved, first
    `limit`."""
    from megafin.eval.tasks.sft_records import convert

    sets = [list(convert("fpb", str(SHARED / "fpb/train.jsonl"))),
            list(convert("fiqa_sa", str(SHARED / "fiqa_sa/train.jsonl"))),
            list(convert("headline", str(SHARED / "headline/train.jsonl")))]
    out = []
    for i in range(max(len(s) for s in sets)):
        out.extend(s[i] for s in sets if i < len(s))
    return out[:limit]


def preference_records(limit: int, seed: int = 0) -> list[dict]:
    """FPB sentiment pairs: chosen = the gold label, rejected = another label."""
    from megafin.eval.tasks.sft_records import convert

    rng = random.Random(seed)
    out = []
    for rec in convert("fpb", str(SHARED / "fpb/train.jsonl")):
        wrong = rng.choice([lab for lab in LABELS if lab != rec["response"]])
        out.append({"prompt": rec["prompt"], "chosen": rec["response"], "rejected": wrong})
        if len(out) == limit:
            break
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_tokenizer(rows: list[dict], out: Path) -> Path:
    from data_prep.tokenizer import train_tokenizer as train

    texts = [r["prompt"] + " " + r.get("response", r.get("chosen", "")) for r in rows]
    return train(texts, vocab_size=2048, out_dir=out)


def hf_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPE
    cfg = LlamaConfig(hidden_size=s["hidden_size"], intermediate_size=s["ffn_hidden_size"],
                      num_hidden_layers=s["num_layers"], num_attention_heads=s["num_attention_heads"],
                      num_key_value_heads=s["num_query_groups"], vocab_size=vocab_size, max_position_embeddings=1024,
                      rope_theta=500000.0, tie_word_embeddings=False, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def megafin_model_overrides(vocab_size: int) -> list[str]:
    return [f"model.{k}={v}" for k, v in SHAPE.items()] + [f"model.vocab_size={vocab_size}",
                                                           "model.max_position_embeddings=1024"]


def padded_vocab(tokenizer_dir: Path) -> int:
    """The tokenizer's size rounded up to megafin's padding (128), used for both engines' models."""
    from transformers import AutoTokenizer

    return (len(AutoTokenizer.from_pretrained(tokenizer_dir)) + 127) // 128 * 128


def step_timer(times: list[float]):
    """A transformers TrainerCallback appending each optimizer step's wall time to `times`."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            times.append(time.perf_counter() - self.t0)

    return StepTimer()
