#!/usr/bin/env bash
# The GPU check: everything megafin can only check on a CUDA machine, as one short script (~6 min on one H100).
#
#   bash bench/gpu_check.sh [PART ...]   # on a CUDA machine, from the repo root; PART: kernels bench model demo
#                                        # (default: all; the kernels' tests autotune for ~5 min on an H100)
#
# 1. the Triton kernels' tests, compiled (on CPU they run under TRITON_INTERPRET=1);
# 2. bench/kernels.py: varlen attention TFLOP/s against SDPA / flash-attn / TE where importable, and the
#    packed log-prob kernel's peak memory against the unfused path;
# 3. with megatron-core importable: the model-level packed-attention and log-prob tests, then `make demo`'s job
#    (tokenizer -> data_prep -> joint CPT+IT -> RPO) on the GPU with the Triton backends (model.*_backend=auto).
# Wheels in .whl/ (e.g. megatron-core for a machine without a package registry) are installed into /tmp/site first.
# Each part has its own time limit, and a failing part does not stop the next; the exit status counts failures.
set -u
PY=${PYTHON:-python3}
PARTS=" ${*:-kernels bench model demo} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
fails=0
part() { echo; echo "== $1"; }
run() {  # run LIMIT_S CMD...: one part under its own limit
  local limit=$1; shift
  local t0=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "-- exit $rc after $((SECONDS - t0)) s: $*"
  [ "$rc" -eq 0 ] || fails=$((fails + 1))
  return "$rc"
}

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

part "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  || { echo "no torch/triton with CUDA here"; exit 2; }
$PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 2

if want kernels; then
  part "1. Triton kernels' tests on CUDA"
  run 420 $PY -m pytest tests/kernels -q -p no:cacheprovider
fi
if want bench; then
  part "2. kernel benchmarks (seq 4096)"
  run 180 $PY bench/kernels.py --seq-length 4096
fi

if ! $PY -c "import megatron.core" 2>/dev/null; then
  part "3. skipped: megatron-core is not importable (put its wheel in .whl/)"
fi
if want model && $PY -c "import megatron.core" 2>/dev/null; then
  part "3a. model-level packed attention and log-prob tests on CUDA"
  run 180 $PY -m pytest tests/unit/test_packed_attention_backends.py tests/unit/test_logprob_backend.py -q \
    -p no:cacheprovider
fi
if want demo && $PY -c "import megatron.core" 2>/dev/null; then
  part "3b. make demo's job on the GPU"
  work=$(mktemp -d)
  here=$PWD
  (cd "$work" && run 300 env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" $PY -m megafin.demo logging.wandb=false \
     && $PY - <<'EOF'
import json
for run in ("cpt_it", "dpo"):
    rows = [json.loads(l) for l in open(f"demo_out/runs/{run}/metrics.jsonl")]
    train = [r for r in rows if "loss" in r and r.get("split", "train") == "train"]
    print(run, "first", {k: train[0][k] for k in sorted(train[0]) if not isinstance(train[0][k], (dict, list))})
    print(run, "last ", {k: train[-1][k] for k in sorted(train[-1]) if not isinstance(train[-1][k], (dict, list))})
EOF
  ) || fails=$((fails + 1))
fi

echo
echo "gpu_check: $fails part(s) failed"
exit "$fails"
