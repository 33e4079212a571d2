"""`make demo`: FinDAP's recipe end to end on the tiny model, on CPU.

raw text -> tokenizer -> indexed corpora and packed SFT/CPT+IT/preference data (data_prep) -> joint CPT+IT run
-> DPO-family (RPO) run starting from the CPT+IT checkpoint -> answers from the RPO checkpoint (megafin generate).
Everything lands in demo_out/: data/, runs/{cpt_it,dpo}/ (metrics.jsonl, config.yaml, checkpoints/) and
answers.jsonl. Extra arguments are overrides for both runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "recipes" / "tiny" / "data"
OUT = Path("demo_out")


def prepare_data(out: Path = OUT / "data") -> Path:
    from data_prep.pretrain import pretrain
    from data_prep.tokenizer import iter_training_texts, train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    corpora = {"finance": SAMPLES / "finance_corpus.jsonl", "general": SAMPLES / "general_corpus.jsonl"}
    texts = [t for path in corpora.values() for t in iter_training_texts(path)]
    tokenizer = train_tokenizer(texts, vocab_size=1000, out_dir=out / "tokenizer")
    for name, path in corpora.items():
        pretrain([str(path)], str(tokenizer), str(out / name), quiet=True)
    # Packed outputs for the post-training stages (docs/formats.md).
    from data_prep.packed_writer import mix, preference, sft

    sft([str(SAMPLES / "sft_sample.jsonl")], str(tokenizer), str(out / "sft"), seq_length=256, quiet=True)
    mix([str(corpora["finance"]), str(corpora["general"])], [str(SAMPLES / "sft_sample.jsonl")], str(tokenizer),
        str(out / "cpt_it"), seq_length=256, cpt_ratio=0.5, quiet=True)
    preference([str(SAMPLES / "preference_sample.jsonl")], str(tokenizer), str(out / "preference"), seq_length=256,
               quiet=True)
    print(f"demo: tokenizer and indexed corpora in {out}/", flush=True)
    return out


def main() -> int:
    from megafin.checkpoint.manager import latest_checkpoint
    from megafin.cli import main as megafin_main, quiet_third_party

    quiet_third_party()
    prepare_data()
    overrides = sys.argv[1:]
    recipes = REPO / "recipes" / "tiny"
    print("demo: [1/3] joint CPT+IT: megafin train recipes/tiny/cpt_it.yaml", flush=True)
    code = megafin_main(["train", str(recipes / "cpt_it.yaml"), *overrides])
    if code != 0:
        return code
    start = latest_checkpoint(OUT / "runs" / "cpt_it")
    print(f"demo: [2/3] RPO from {start}: megafin train recipes/tiny/dpo.yaml train.init_from={start}", flush=True)
    code = megafin_main(["train", str(recipes / "dpo.yaml"), f"train.init_from={start}", *overrides])
    if code != 0:
        return code
    code = answer_questions(latest_checkpoint(OUT / "runs" / "dpo"))
    for run in ("cpt_it", "dpo"):
        print(f"demo: {run}: metrics {OUT / 'runs' / run / 'metrics.jsonl'}, "
              f"checkpoints {OUT / 'runs' / run / 'checkpoints'}/")
    return code


def answer_questions(ckpt: Path) -> int:
    """The trained model answers the sample's first questions (greedy, chat template), as `megafin generate` runs."""
    import json

    from megafin.cli import main as megafin_main

    rows = [json.loads(line) for line in (SAMPLES / "sft_sample.jsonl").read_text().splitlines()[:2]]
    questions = [{"messages": [{"role": "user", "content": r.get("query") or r.get("prompt")}]} for r in rows]
    src, out = OUT / "questions.jsonl", OUT / "answers.jsonl"
    src.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out.unlink(missing_ok=True)  # answers of this run's checkpoint, not a resumed earlier file
    print(f"demo: [3/3] answers from {ckpt}: megafin generate --model {ckpt} --input {src} --output {out}",
          flush=True)
    code = megafin_main(["generate", "--model", str(ckpt), "--input", str(src), "--output", str(out),
                         "--max-new-tokens", "24"])
    if code == 0:
        for row in map(json.loads, out.read_text().splitlines()):
            print(f"demo:   Q: {row['messages'][0]['content']}\ndemo:   A: {row['samples'][0]['text']!r}")
    return code


if __name__ == "__main__":
    sys.exit(main())
