"""The exit codes of every megafin command, in one place: what a launcher or a Slurm script can act on (README)."""
EXIT_OK = 0
EXIT_CONFIG_ERROR = 2  # bad recipe/override/input: one line, rejected before any process group started
EXIT_DIVERGED = 3  # train.max_bad_steps consecutive non-finite losses
EXIT_SIGNAL_CHECKPOINTED = 75  # EX_TEMPFAIL: a checkpoint was written on SIGTERM/SIGUSR1; resume to continue
