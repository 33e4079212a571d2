"""`python -m megafin.train RECIPE.yaml [key=value ...]`: the entry point torchrun and srun start."""
import sys

from megafin.cli import main

if __name__ == "__main__":  # dist_checkpointing starts spawn-mode workers: the guard is required
    sys.exit(main(["train", *sys.argv[1:]]))
