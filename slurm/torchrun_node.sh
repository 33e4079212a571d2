#!/bin/bash
# Used by slurm/launch.sh when MEGAFIN_LAUNCHER=torchrun: srun starts this once per node, it starts torchrun.
# torchrun has no SIGUSR1 handler (it would die and orphan its ranks) and turns SIGTERM into "kill the ranks, exit 1".
# So torchrun starts with USR1 and TERM ignored, and this wrapper passes them to torchrun's children (the ranks;
# the trainer installs its own handlers): they checkpoint at the end of the step and exit 75, torchrun reports a
# failed child, and this wrapper reports 75 so the launcher requeues. Without a signal, torchrun's exit code passes
# through (a config error is exit 1 here, not 2: torchrun does not forward its children's codes).
trap '' USR1 TERM
"$@" &
PID=$!
SIG=
INTERRUPTED=
forward() {
    SIG="$1"
    INTERRUPTED=1
    pkill -"$1" -P "$PID"
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while :; do
    INTERRUPTED=
    wait "$PID"
    CODE=$?
    [[ -n "$INTERRUPTED" ]] || break
done
if [[ -n "$SIG" && "$CODE" != 0 ]]; then
    echo "megafin-slurm: $(hostname -s): ranks stopped on SIG$SIG (torchrun exit $CODE); reporting 75" >&2
    exit 75
fi
exit "$CODE"
