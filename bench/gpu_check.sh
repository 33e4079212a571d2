#!/usr/bin/env bash
# The GPU check: what megafin can only check on a CUDA machine, as one short script (~8 min on one H200) that
# prints ONE table (check | result | detail). From the repo root:
#
#   bash bench/gpu_check.sh [--parts env,configs,kernels,kernel_tests,nccl,generate,stages,te,width8b,peer]
#                           [--seq-length 8192] [--layers 2] [--width8b-runs auto,local]
#   GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh   # on a CPU: the parts that run there (env, configs, a gloo step,
#                                                 # the generate chain with the CPU in both places)
#
# The parts are bench/gpu_check.py's (its docstring says what each checks). The exit status counts FAIL rows.
#
# The wheelhouse: GPU machines without a package registry get what megafin needs beyond torch, Triton and
# transformers from .whl/ (or $GPU_CHECK_WHEELS): a cp312 megatron-core wheel, psutil (dist_checkpointing's
# saver needs it), and for the peer part what Megatron-LM's trainer imports beyond the image (pydantic, which
# megatron.training imports through megatron.rl, with its dependencies, at 2.11: newer ones need a newer
# typing_extensions than an image may have, and a wheel whose distribution is installed is never upgraded; six), and
# for the generate part's `megafin serve` + openai client what the image lacks of them (fastapi 0.119 and starlette
# 0.48, which take that pydantic; uvicorn; openai 1.109, the last to ask typing_extensions for no more than 4.11, with
# jiter, distro and sniffio; the image has anyio, httpx, h11 and click). 6.6 MB in all.
# Only wheels whose distribution is not installed already are installed, into a --target directory put first on
# PYTHONPATH, so nothing the image has is shadowed. Refill it on a machine with a registry:
#   pip download megatron-core==0.16.1 psutil pydantic==2.11.10 pydantic_core==2.33.2 typing_inspection==0.4.1 \
#       annotated_types six fastapi==0.119.1 starlette==0.48.0 uvicorn==0.54.0 openai==1.109.1 jiter==0.19.0 \
#       distro sniffio --python-version 3.12 --only-binary=:all: --no-deps --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 -d .whl
# The peer part also needs Megatron-LM's trainer in .megatron-lm/ (1.8 MB, ignored; bench/gpu_check.py says how to
# fill it). Both folders travel with the checkout to a GPU machine that cannot fetch them.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/megafin-site}

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  missing=$($PY - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = whl.name.split("-")[0]
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        print(whl)
EOF
)
  if [ -n "$missing" ]; then
    echo "gpu_check: installing from the wheelhouse into $SITE: $(echo $missing | xargs -n1 basename | tr '\n' ' ')"
    # shellcheck disable=SC2086
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $missing \
      || echo "gpu_check: wheelhouse install failed (the env row will say what is missing)"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_LIMIT_S:-560}" $PY bench/gpu_check.py "$@"
