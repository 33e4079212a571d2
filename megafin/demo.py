"""`make demo`: raw text -> tokenizer -> indexed corpora -> a CPT run of the tiny recipe, on CPU.

Everything lands in demo_out/: data/ (tokenizer, .bin/.idx, stats) and runs/cpt/ (metrics.jsonl, checkpoints).
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
    from data_prep.packed import mix, preference, sft

    sft([str(SAMPLES / "sft_sample.jsonl")], str(tokenizer), str(out / "sft"), seq_length=256, quiet=True)
    mix([str(corpora["finance"]), str(corpora["general"])], [str(SAMPLES / "sft_sample.jsonl")], str(tokenizer),
        str(out / "cpt_it"), seq_length=256, cpt_ratio=0.5, quiet=True)
    preference([str(SAMPLES / "preference_sample.jsonl")], str(tokenizer), str(out / "preference"), seq_length=256,
               quiet=True)
    print(f"demo: tokenizer and indexed corpora in {out}/", flush=True)
    return out


def main() -> int:
    from megafin.cli import main as megafin_main, quiet_third_party

    quiet_third_party()

    prepare_data()
    recipe = REPO / "recipes" / "tiny" / "cpt.yaml"
    print(f"demo: megafin train {recipe.relative_to(REPO)}", flush=True)
    code = megafin_main(["train", str(recipe), *sys.argv[1:]])
    if code == 0:
        print(f"demo: metrics in {OUT / 'runs/cpt/metrics.jsonl'}, checkpoints in {OUT / 'runs/cpt/checkpoints'}/")
    return code


if __name__ == "__main__":
    sys.exit(main())
