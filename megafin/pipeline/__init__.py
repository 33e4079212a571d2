"""`megafin pipeline PIPELINE.yaml`: FinDAP's stages from raw corpora to an evaluated HF model, each stage stamped
with its inputs so that a rerun skips what is done, resumes what was interrupted and reruns what a change
invalidated. spec.py reads the YAML, registry.py holds the stage kinds (kinds/), stamps.py the stamps, runner.py runs
the stages here, slurm.py submits them as dependent sbatch jobs."""
