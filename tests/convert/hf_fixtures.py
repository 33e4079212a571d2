"""Tiny random Hugging Face Llama models on disk, and the megafin CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
# Shapes that divide by TP=2 and PP=2; vocab 1000 is padded to 1024 inside megafin.
TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def make_hf_llama(out: Path, tied: bool, seed: int = 0, dtype: str = "float32", max_shard_size: str = "40KB",
                  rope_scaling: bool = True, tokenizer_dir: Path | None = None) -> Path:
    """A random LlamaForCausalLM (GQA 4 heads / 2 groups, llama3 rope scaling) saved as sharded safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(TINY, tie_word_embeddings=tied)
    if rope_scaling:
        kwargs["rope_parameters"] = dict(LLAMA3_ROPE)
    else:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    cfg = LlamaConfig(**kwargs)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()
    with torch.no_grad():  # HF inits norms to 1: randomize them so a swapped norm cannot pass unnoticed
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(out)
    return out


def megafin(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run([PY, "-m", "megafin", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
