#!/usr/bin/env bash
# FinDAP's stages on the tiny model with the real data in ../shared/data, end to end on CPU (~10 min on 2 cores):
#   SFT on FPB + FiQA-SA + gold-headline instructions -> FPB test accuracy (greedy answer, exact label) vs the
#   majority-class rate -> RPO on FPB pairs (chosen = gold label, rejected = a wrong label) -> held-out reward
#   accuracy and FPB accuracy again. Prints the two eval results; the runs stay in $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
"$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from finance_tasks import preference_records, sft_records, train_tokenizer, write_jsonl
from data_prep.packed_writer import preference, sft
work = Path(sys.argv[1])
rows = sft_records(100_000)
tok = train_tokenizer(rows, work / "tok")
sft([str(write_jsonl(rows, work / "sft.jsonl"))], str(tok), str(work / "sft"), seq_length=512, quiet=True)
preference([str(write_jsonl(preference_records(100_000), work / "pairs.jsonl"))], str(tok), str(work / "pref"),
           seq_length=512, quiet=True)
PYEOF
COMMON=(data.tokenizer="$WORK/tok" data.seq_length=512 checkpoint.interval=0 logging.wandb=false train.resume=none)
"$PY" -m megafin.train recipes/tiny/sft.yaml "${COMMON[@]}" run_dir="$WORK/sft_run" "data.blend=[{path: $WORK/sft, weight: 1}]" \
  parallel.global_batch_size=16 train.steps=150 scheduler.warmup_steps=10 optimizer.lr=1e-3 optimizer.min_lr=1e-4 \
  train.eval_interval=50 train.eval_iters=2 logging.interval=10 data.split=98,2,0
"$PY" -m megafin eval classification --ckpt "$WORK/sft_run/checkpoints/step_0000150" --task fpb \
  --data ../shared/data/fpb/test.jsonl --out "$WORK/fpb_sft.json"
"$PY" -m megafin.train recipes/tiny/dpo.yaml "${COMMON[@]}" run_dir="$WORK/dpo_run" "data.blend=[{path: $WORK/pref, weight: 1}]" \
  parallel.global_batch_size=8 train.steps=40 scheduler.warmup_steps=4 optimizer.lr=2e-4 optimizer.min_lr=2e-5 \
  train.eval_interval=20 train.eval_iters=4 logging.interval=5 data.split=90,10,0 dpo.loss=rpo dpo.share_prompt=true \
  train.init_from="$WORK/sft_run/checkpoints/step_0000150"
"$PY" -m megafin eval classification --ckpt "$WORK/dpo_run/checkpoints/step_0000040" --task fpb \
  --data ../shared/data/fpb/test.jsonl --out "$WORK/fpb_dpo.json"
echo "runs and results in $WORK"
