"""`make demo`: FinDAP's recipe end to end on the tiny model, on CPU.

raw text -> tokenizer -> indexed corpora and packed SFT/CPT+IT/preference data (data_prep) -> joint CPT+IT run
-> DPO-family (RPO) run starting from the CPT+IT checkpoint. Everything lands in demo_out/: data/ and
runs/{cpt_it,dpo}/ (metrics.jsonl, config.yaml, checkpoints/). Extra arguments are overrides for both runs.
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
    print("demo: [1/2] joint CPT+IT: megafin train recipes/tiny/cpt_it.yaml", flush=True)
    code = megafin_main(["train", str(recipes / "cpt_it.yaml"), *overrides])
    if code != 0:
        return code
    start = latest_checkpoint(OUT / "runs" / "cpt_it")
    print(f"demo: [2/2] RPO from {start}: megafin train recipes/tiny/dpo.yaml train.init_from={start}", flush=True)
    code = megafin_main(["train", str(recipes / "dpo.yaml"), f"train.init_from={start}", *overrides])
    if code == 0:
        for run in ("cpt_it", "dpo"):
            print(f"demo: {run}: metrics {OUT / 'runs' / run / 'metrics.jsonl'}, "
                  f"checkpoints {OUT / 'runs' / run / 'checkpoints'}/")
    return code


if __name__ == "__main__":
    sys.exit(main())
