#!/bin/bash
# Stands in for `python` (MEGAFIN_PYTHON) in the real-time-limit test, so that test costs no CPU: behaves like the
# trainer towards the launcher. First attempt: wait for SIGUSR1 and exit 75 (checkpointed). Requeued attempt:
# exit 0 if the launcher appended train.resume=auto, else 1.
trap 'echo "fake-trainer: received SIGUSR1 ${SECONDS}s after start"; exit 75' USR1
shift 2  # -m megafin.train
echo "fake-trainer: attempt ${SLURM_RESTART_COUNT:-0} args: $*"
if (( ${SLURM_RESTART_COUNT:-0} > 0 )); then
    if [[ "${!#}" == train.resume=auto ]]; then echo "fake-trainer: resuming (train.resume=auto)"; exit 0; fi
    echo "fake-trainer: requeued without train.resume=auto"; exit 1
fi
for _ in $(seq 1 110); do sleep 1; done
echo "fake-trainer: no SIGUSR1 within 110 s"
exit 1
