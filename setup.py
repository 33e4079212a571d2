"""megafin: FinDAP-style domain-adaptive post-training on megatron-core.

torch is deliberately left to the caller: `make` installs `torch==2.13.0` first (the CPU wheel on the dev
machines, the CUDA wheel on a cluster), because a bare `torch` requirement can pull a multi-GB build.
"""
from setuptools import find_packages, setup

setup(
    name="megafin",
    version="0.1.0",
    description="Financial domain-adaptive post-training (CPT+IT, SFT, DPO/RPO/IPO) on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["megafin*", "kernels*", "data_prep*"]),
    package_data={"megafin.distill.judge": ["templates/*.txt"],  # the judge's built-in prompt templates
                  "megafin.distill": ["templates/*.txt"],  # distill's default chain-of-thought prompt
                  "megafin.eval.lm_eval_tasks": ["*.yaml"]},  # lm_eval --include_path $(megafin eval lm-eval-path)
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.16.1,<0.20",
        "numpy",
        "packaging",
        "psutil",  # dist_checkpointing's async writer hangs without it
        "pyyaml",
        "safetensors",
        "tokenizers",
        "sentencepiece",
        "protobuf",
        "transformers>=4.45",
        "wandb",
        "tqdm",
        "openai",  # --engine openai: any OpenAI-compatible endpoint (vLLM / SGLang servers, hosted APIs)
        "fastapi",  # megafin serve
        "uvicorn",
        "matplotlib",  # megafin eval: the report's bar chart (PNG, Agg backend)
        "rouge-score",  # megafin eval: ROUGE-L of FiQA-QA, as lm-eval computes it
    ],
    extras_require={
        "test": [
            "pytest",
            "triton>=3.2",  # kernels run under TRITON_INTERPRET=1 on CPU
            "datasets",
            "pyarrow",
            "tiktoken>=0.9",  # encode_to_tiktoken_buffer (data_prep.encoder), tiktoken 0.9 changelog
            "tensorboard",
            "trl",  # the DPO/RPO/IPO parity tests and the TRL throughput benches
            "lm-eval==0.4.13",  # the agreement test of megafin eval run vs lm-eval, and its bench
        ],
        # lm-evaluation-harness for the shipped task YAMLs (megafin/eval/lm_eval_tasks, --include_path)
        "eval": ["lm-eval==0.4.13"],
        # GPU-only pieces: not installable on a CPU machine; see README "GPU" and "The named stack" (no apex: PyPI's
        # `apex` is an unrelated web toolkit; no nemo-toolkit: its current release has no LLM collections).
        "gpu": ["transformer-engine[pytorch]", "flash-attn", "triton"],
        # data_prep / eval sources saved by `datasets` (save_to_disk) or named on the hub, and parquet inputs
        "data": ["datasets", "pyarrow"],
        # megafin generate / serve --engine vllm (GPU only; pins its own CUDA torch)
        "vllm": ["vllm"],
    },
    entry_points={"console_scripts": ["megafin=megafin.cli:main"]},
)
