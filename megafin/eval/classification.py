"""Financial classification tasks (FPB, FiQA-SA, TFNS, headlines) scored as FinDAP scores them: the model's greedy
answer to the chat-formatted question, exact match with the gold label (case and surrounding space ignored).

    megafin eval classification --ckpt RUN/checkpoints/step_N --task fpb --data ../shared/data/fpb/test.jsonl
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from transformers import AutoTokenizer


def evaluate(ckpt: str | Path, task: str, data: str | Path, limit: Optional[int] = None,
             max_new_tokens: int = 6) -> dict[str, Any]:
    """Accuracy of greedy answers, the majority-class rate of the same examples, and a few predictions."""
    from data_prep.fintasks import convert
    from megafin.convert.runtime import greedy_decode, load_model, megatron_session

    rows = list(convert(task, str(data)))[:limit]
    if not rows:
        raise ValueError(f"{data}: no {task} examples")
    with megatron_session():
        model, cfg, vocab = load_model(Path(ckpt))
        tok = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
        stop = tok.convert_tokens_to_ids("<|eot_id|>") if "<|eot_id|>" in tok.get_vocab() else tok.eos_token_id
        correct, predictions = 0, []
        for row in rows:
            prompt = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                             tokenize=True)
            if hasattr(prompt, "keys"):  # transformers 5 returns a BatchEncoding (a UserDict)
                prompt = prompt["input_ids"]
            out = greedy_decode(model, list(prompt), vocab, max_new_tokens, eos_token_id=stop)
            answer = tok.decode(out, skip_special_tokens=True).strip().lower()
            gold = row["response"].strip().lower()
            correct += answer == gold
            predictions.append(answer)
    labels = Counter(r["response"].strip().lower() for r in rows)
    majority_label, majority_count = labels.most_common(1)[0]
    return {"task": task, "checkpoint": str(ckpt), "examples": len(rows), "accuracy": correct / len(rows),
            "majority_label": majority_label, "majority_rate": majority_count / len(rows),
            "predicted": dict(Counter(predictions).most_common(8))}


def main(args: Any) -> int:
    result = evaluate(args.ckpt, args.task, args.data, args.limit)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0
