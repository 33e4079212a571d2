"""`make demo`: the tiny FinDAP pipeline on CPU (recipes/pipeline/tiny.yaml, `megafin pipeline`): real data from
../shared/data -> tokenizer, instruction records, held-out splits, packed data -> a tiny instruct base -> joint
CPT+IT -> preference distillation -> RPO -> IT-only / CPT+IT / CPT+IT+RPO evaluated side by side (held-out training
rows, then the test splits) -> HF export; it ends by printing both tables and where the HF model is. Everything
lands in demo_out/pipeline/; a rerun skips what is done. Extra arguments go to `megafin pipeline` (--from, --until).

`python -m megafin.demo --recipes [key=value ...]` is the one-minute chain of the tiny recipes instead (also what
any key=value argument selects): the sample texts in recipes/tiny/data -> data_prep -> joint CPT+IT -> RPO ->
answers (megafin generate) in demo_out/: data/, runs/{cpt_it,dpo}/, answers.jsonl; the arguments are overrides for
both runs. prepare_data() is also the tests' tiny data set.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "recipes" / "tiny" / "data"
OUT = Path("demo_out")
PIPELINE = REPO / "recipes" / "pipeline" / "tiny.yaml"


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--recipes"] or any("=" in a and not a.startswith("-") for a in argv):
        return recipes_demo([a for a in argv if a != "--recipes"])
    return pipeline_demo(argv)


def pipeline_demo(flags: list[str]) -> int:
    """The tiny pipeline, then its two evaluation tables and the HF export's place."""
    import time

    from megafin.cli import main as megafin_main, quiet_third_party
    from megafin.pipeline.spec import load_spec
    from megafin.pipeline.errors import PipelineError

    quiet_third_party()
    t0 = time.perf_counter()
    code = megafin_main(["pipeline", str(PIPELINE.relative_to(REPO) if Path.cwd() == REPO else PIPELINE), *flags])
    if code != 0:
        return code
    try:
        out = load_spec(PIPELINE, deep=False).out
    except PipelineError:
        return 2
    for stage, what in (("heldout_eval", "held-out 10% of the TRAINING splits (what every choice was made by)"),
                        ("eval", "TEST splits (../shared/data; never used for a choice)")):
        table = out / stage / "compare" / "compare.md"
        if table.is_file():
            print(f"\ndemo: {what}: {table}\n")
            print(table.read_text().split("\n", 2)[-1].strip())
    print(f"\ndemo: the final model (CPT+IT+RPO) as an HF model: {out / 'export' / 'hf'}")
    print(f"demo: every stage's outputs and stamps under {out}/ ({time.perf_counter() - t0:.0f} s)")
    return 0


def recipes_demo(overrides: list[str]) -> int:
    from megafin.checkpoint.manager import latest_checkpoint
    from megafin.cli import main as megafin_main, quiet_third_party

    quiet_third_party()
    prepare_data()
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
