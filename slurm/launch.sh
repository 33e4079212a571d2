#!/bin/bash
# megafin's shared Slurm launcher. The stage scripts (cpt.sbatch, sft.sbatch, dpo.sbatch) set MEGAFIN_STAGE and a
# default recipe, then run this file inside the batch job. Users never edit it: everything is set by environment
# (`sbatch --export=ALL,VAR=value`) or by arguments after the script name:
#
#     sbatch slurm/cpt.sbatch [RECIPE.yaml] [key=value ...]
#
# Environment (all optional):
#   MEGAFIN_HOME       repo checkout (default: the directory sbatch was called from, $SLURM_SUBMIT_DIR)
#   MEGAFIN_RECIPE     recipe when no RECIPE argument is given (default: the stage script's)
#   MEGAFIN_OVERRIDES  extra key=value overrides, whitespace-separated (values with spaces: pass them as arguments)
#   RUN_DIR            output directory; passed as run_dir=... (default: the recipe's run_dir)
#   MEGAFIN_PROFILE    gpu (default: one process per GPU, NCCL) | cpu (one process per task, gloo, threads =
#                      --cpus-per-task): the same script on a laptop-sized Slurm without GPUs
#   MEGAFIN_LAUNCHER   srun (default: srun starts every rank) | torchrun (srun starts one torchrun per node with a
#                      c10d rendezvous on the first node)
#   MEGAFIN_PYTHON     interpreter (default: $MEGAFIN_HOME/.venv/bin/python if present, else python3)
#   MEGAFIN_SETUP      OPTIONAL HOOK: a shell file sourced before launching (module load, conda activate, ...)
#   MEGAFIN_SRUN_ARGS  OPTIONAL HOOK: extra srun flags, e.g. a container (--container-image=... for pyxis)
#   MEGAFIN_MAX_REQUEUES  stop requeueing after this many restarts (default 50)
#   MASTER_ADDR / MASTER_PORT  rendezvous (default: first node's NodeAddr, 20000 + job id % 20000)
#
# Exit codes (the trainer's, see megafin/runtime/exit_codes.py): 0 done; 2 config error (never requeued);
# 3 diverged (never requeued); 75 checkpoint written on SIGUSR1/SIGTERM -> `scontrol requeue` and the next
# attempt resumes from RUN_DIR/checkpoints/latest (train.resume=auto).
set -uo pipefail

EXIT_CONFIG_ERROR=2
EXIT_SIGNAL_CHECKPOINTED=75

say() { echo "megafin-slurm: $*"; }

# Signals first, so that one arriving while this script sets up cannot kill the batch shell. `--signal=B:USR1@N`
# signals only this shell: forward() passes it to srun, which passes it to every rank.
STEP_PID=
SIGNALLED=
INTERRUPTED=
forward() {
    SIGNALLED="$1"
    INTERRUPTED=1
    say "received SIG$1; forwarding to the ranks (they checkpoint at the end of the step and exit 75)"
    [[ -n "$STEP_PID" ]] && kill -s "$1" "$STEP_PID" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
die() { echo "megafin-slurm: error: $*" >&2; exit "$EXIT_CONFIG_ERROR"; }

[[ -n "${SLURM_JOB_ID:-}" ]] || die "run this through sbatch (no SLURM_JOB_ID): sbatch slurm/${MEGAFIN_STAGE:-cpt}.sbatch"
STAGE="${MEGAFIN_STAGE:-cpt}"
RESTART="${SLURM_RESTART_COUNT:-0}"
MEGAFIN_HOME="${MEGAFIN_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
[[ -d "$MEGAFIN_HOME/megafin" ]] || die "MEGAFIN_HOME=$MEGAFIN_HOME is not a megafin checkout (submit from the repo root or set MEGAFIN_HOME)"
export PYTHONPATH="$MEGAFIN_HOME${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------- OPTIONAL HOOK: containers / modules
# Source a site file (module load cuda nccl; conda activate megafin; ...). Keep site set-up out of this script.
if [[ -n "${MEGAFIN_SETUP:-}" ]]; then
    [[ -f "$MEGAFIN_SETUP" ]] || die "MEGAFIN_SETUP=$MEGAFIN_SETUP does not exist"
    # shellcheck disable=SC1090
    source "$MEGAFIN_SETUP"
fi
# ---------------------------------------------------------------- end of hook

if [[ -z "${MEGAFIN_PYTHON:-}" ]]; then
    if [[ -x "$MEGAFIN_HOME/.venv/bin/python" ]]; then MEGAFIN_PYTHON="$MEGAFIN_HOME/.venv/bin/python"; else MEGAFIN_PYTHON=python3; fi
fi

# ---------------------------------------------------------------- recipe and overrides
ARGS=("$@")
RECIPE="${MEGAFIN_RECIPE:-}"
if (( ${#ARGS[@]} )) && [[ "${ARGS[0]}" != *=* ]]; then RECIPE="${ARGS[0]}"; ARGS=("${ARGS[@]:1}"); fi
[[ -n "$RECIPE" ]] || die "no recipe: sbatch slurm/$STAGE.sbatch RECIPE.yaml [key=value ...]"
OVERRIDES=()
PROFILE="${MEGAFIN_PROFILE:-gpu}"
NTASKS="${SLURM_NTASKS:-1}"
NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
TASKS_PER_NODE=$(( NTASKS / NNODES ))
CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"
case "$PROFILE" in
    gpu)
        GPUS_ON_NODE="${SLURM_GPUS_ON_NODE:-}"
        if [[ -z "$GPUS_ON_NODE" ]]; then  # a site that does not manage GPUs as a Slurm resource
            GPUS_ON_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        fi
        (( ${GPUS_ON_NODE:-0} > 0 )) || die "MEGAFIN_PROFILE=gpu but the job has no GPUs (add --gpus-per-node=N, or use MEGAFIN_PROFILE=cpu with --gpus-per-node=0)"
        (( TASKS_PER_NODE <= GPUS_ON_NODE )) || die "$TASKS_PER_NODE tasks per node but $GPUS_ON_NODE GPUs: use --ntasks-per-node=$GPUS_ON_NODE"
        # NCCL: defaults that are safe on most clusters; override any of them with --export.
        export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"     # Megatron TP/SP comm overlap
        export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # a dead rank fails the job
        export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
        # Site specific, left unset: NCCL_SOCKET_IFNAME (e.g. ib0 or ^lo,docker), NCCL_IB_HCA (e.g. mlx5),
        # NCCL_NET_GDR_LEVEL, NCCL_CROSS_NIC; see docs/slurm.md.
        ;;
    cpu)
        # gloo (the trainer picks it when CUDA is absent); each rank uses its --cpus-per-task cores.
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$CPUS_PER_TASK}"
        OVERRIDES+=("train.threads=$CPUS_PER_TASK")
        ;;
    *) die "MEGAFIN_PROFILE must be gpu or cpu, got '$PROFILE'" ;;
esac
[[ -n "${RUN_DIR:-}" ]] && OVERRIDES+=("run_dir=$RUN_DIR")
# Split on whitespace only (read -a: no glob expansion of values such as data.blend=[...]).
read -r -a EXTRA_OVERRIDES <<< "${MEGAFIN_OVERRIDES:-}"
OVERRIDES+=("${EXTRA_OVERRIDES[@]}")
OVERRIDES+=("${ARGS[@]}")
# A requeued attempt always continues from the last checkpoint, whatever the submission said (last wins).
(( RESTART > 0 )) && OVERRIDES+=("train.resume=auto")

# ---------------------------------------------------------------- rendezvous
if [[ -z "${MASTER_ADDR:-}" ]]; then
    # The first node, by the address Slurm itself uses to reach it (NodeAddr; usually its host name).
    FIRST_NODE=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n 1)
    MASTER_ADDR=$(scontrol -o show node "$FIRST_NODE" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    MASTER_ADDR="${MASTER_ADDR:-${FIRST_NODE:-127.0.0.1}}"
fi
export MASTER_ADDR
export MASTER_PORT="${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}"

LAUNCHER="${MEGAFIN_LAUNCHER:-srun}"
read -r -a SRUN_EXTRA <<< "${MEGAFIN_SRUN_ARGS:-}"
# --wait: once one rank has exited, give the others this long, then end the step (a crashed rank must not leave
# the rest blocked in a collective until the process-group timeout). Survivors of a dead rank usually end sooner by
# themselves: gloo fails their next collective at once, NCCL after train.collective_timeout_s. Not
# --kill-on-bad-exit=1: every rank exits 75 after a signal-checkpoint, and the first one out would have srun kill
# the others while they exit, so the step's code could differ from the 75 that requeueing depends on.
SRUN=(srun --wait="${MEGAFIN_SRUN_WAIT:-120}" --kill-on-bad-exit=0 "${SRUN_EXTRA[@]}")
case "$LAUNCHER" in
    srun)
        CMD=("${SRUN[@]}" --ntasks="$NTASKS" "$MEGAFIN_PYTHON" -m megafin.train "$RECIPE" "${OVERRIDES[@]}") ;;
    torchrun)
        CMD=("${SRUN[@]}" --ntasks="$NNODES" --ntasks-per-node=1 bash "$MEGAFIN_HOME/slurm/torchrun_node.sh"
             "$MEGAFIN_PYTHON" -m torch.distributed.run
             --nnodes="$NNODES" --nproc-per-node="$TASKS_PER_NODE" --rdzv-backend=c10d
             --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"
             -m megafin.train "$RECIPE" "${OVERRIDES[@]}") ;;
    *) die "MEGAFIN_LAUNCHER must be srun or torchrun, got '$LAUNCHER'" ;;
esac

say "job $SLURM_JOB_ID attempt $RESTART: stage $STAGE, $NNODES node(s) x $TASKS_PER_NODE task(s), profile $PROFILE, launcher $LAUNCHER, rendezvous $MASTER_ADDR:$MASTER_PORT"
say "$(printf '%q ' "${CMD[@]}")"

# ---------------------------------------------------------------- run, forward USR1/TERM, requeue on 75
# srun runs in the background so the trap fires at once; each rank saves at the end of its step and exits 75.
if [[ -n "$SIGNALLED" ]]; then
    say "SIG$SIGNALLED arrived before training started"
    [[ "$SIGNALLED" == USR1 ]] && (( RESTART < ${MEGAFIN_MAX_REQUEUES:-50} )) && scontrol requeue "$SLURM_JOB_ID" && exit 0
    exit 1
fi
"${CMD[@]}" &
STEP_PID=$!
while :; do
    INTERRUPTED=
    wait "$STEP_PID"
    CODE=$?
    # A trapped signal makes `wait` return early (>128) while the step still runs: wait again for its real code.
    [[ -n "$INTERRUPTED" ]] || break
done
trap - USR1 TERM

case "$CODE" in
    0) say "done (exit 0)" ;;
    "$EXIT_SIGNAL_CHECKPOINTED")
        if [[ "$SIGNALLED" == TERM ]]; then
            # scancel, or the time limit itself: the job is ending; a user's cancel must not come back.
            say "checkpointed (exit 75) after SIGTERM: not requeueing; resubmit the same command to resume"
        elif (( RESTART >= ${MEGAFIN_MAX_REQUEUES:-50} )); then
            say "checkpointed (exit 75) but already restarted $RESTART times (MEGAFIN_MAX_REQUEUES): not requeueing"
        else
            say "checkpointed (exit 75) after SIG${SIGNALLED:-?}; requeueing job $SLURM_JOB_ID (attempt $(( RESTART + 1 )) resumes from latest)"
            if scontrol requeue "$SLURM_JOB_ID"; then
                exit 0  # requeue ends this attempt; the job goes back to PENDING
            fi
            say "scontrol requeue failed (was the job submitted with --requeue?); resubmit to resume"
        fi ;;
    $(( 128 + 10 )))
        if [[ "$SIGNALLED" == USR1 ]] && (( RESTART < ${MEGAFIN_MAX_REQUEUES:-50} )); then
            # USR1 reached the ranks before the trainer installed its handler (still starting up): nothing since
            # the last checkpoint was saved, but requeueing still resumes from it.
            say "ranks ended by SIGUSR1 during start-up (exit 138, no new checkpoint); requeueing job $SLURM_JOB_ID to resume from the last one"
            scontrol requeue "$SLURM_JOB_ID" && exit 0
        fi
        say "training exited with $CODE: not requeueing" ;;
    "$EXIT_CONFIG_ERROR") say "config error (exit 2): not requeueing; the trainer's message is above" ;;
    *) say "training exited with $CODE: not requeueing" ;;
esac
exit "$CODE"
