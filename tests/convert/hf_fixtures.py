"""Tiny random Hugging Face Llama and Qwen2 models on disk, and the megafin CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

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
    return _save(model, out, max_shard_size, tokenizer_dir)


def make_hf_qwen2(out: Path, tied: bool, seed: int = 0, max_shard_size: str = "40KB",
                  tokenizer_dir: Path | None = None) -> Path:
    """A random Qwen2ForCausalLM (GQA 4 heads / 2 groups) with nonzero q/k/v biases, saved as sharded safetensors.
    config.json keeps a `sliding_window` size with `use_sliding_window: false`, as released Qwen2.5 configs do."""
    import json

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(**TINY, tie_word_embeddings=tied, use_sliding_window=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # HF inits biases to 0: large random ones, so a dropped or misordered bias shows
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_(0, 0.5)
    _save(model, out, max_shard_size, tokenizer_dir)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "sliding_window": 131072, "max_window_layers": 2}))
    return out


def _save(model: torch.nn.Module, out: Path, max_shard_size: str, tokenizer_dir: Path | None) -> Path:
    import torch

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


# The session's HF models (tests/convert/conftest.py): name -> (maker, its arguments). Llama untied/tied/bf16,
# Qwen2 untied/tied; the fp32 ones have reference logits.
VARIANTS = {"untied": (make_hf_llama, dict(tied=False)), "tied": (make_hf_llama, dict(tied=True)),
            "untied_bf16": (make_hf_llama, dict(tied=False, dtype="bfloat16")),
            "qwen2": (make_hf_qwen2, dict(tied=False)), "qwen2_tied": (make_hf_qwen2, dict(tied=True))}
FP32_VARIANTS = ("untied", "tied", "qwen2", "qwen2_tied")


def megafin(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run([PY, "-m", "megafin", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def read_hf_tensors(d: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory, sharded (model.safetensors.index.json) or a single model.safetensors."""
    import json

    from safetensors import safe_open

    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
        ["model.safetensors"]
    out = {}
    for name in files:
        with safe_open(str(d / name), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out
