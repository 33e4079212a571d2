"""The lean path (megafin/generate/lean_decode.py) on model shapes test_megafin_engine.py's Llama does not cover (a
Llama with tied embeddings, a Qwen2 with q/k/v biases), against megatron's own path and HF greedy generate."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megafin.generate.api import GenerationRequest, SamplingParams


@pytest.fixture(scope="module", params=["llama_tied", "qwen2_bias"])
def hf_and_engine(request, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from megafin.convert.convert import from_hf
    from megafin.generate.engines import open_engine
    from tests.convert.hf_fixtures import make_hf_llama, make_hf_qwen2

    root = tmp_path_factory.mktemp(request.param)
    if request.param == "llama_tied":
        hf = make_hf_llama(root / "hf", tied=True, seed=5, tokenizer_dir=tiny_data / "tokenizer")
    else:
        hf = make_hf_qwen2(root / "hf", tied=False, seed=5, tokenizer_dir=tiny_data / "tokenizer")
    with open_engine("megafin", str(from_hf(hf, root / "megafin")), max_batch_size=8) as eng:
        yield hf, eng


def test_lean_path_equals_megatrons_path_and_hf(hf_and_engine):
    from transformers import AutoModelForCausalLM

    hf_dir, engine = hf_and_engine
    assert engine.lean is not None
    assert engine.net.share_embeddings_and_output_weights == (engine.net.decoder.layers[0].self_attention
                                                              .linear_qkv.bias is None)  # tied xor biases
    texts = ["Revenue", "The bank said net interest income", "Analysts expect the company to report higher"]
    prompts = [engine.prompt_ids(GenerationRequest(prompt=t)) for t in texts]
    params = [SamplingParams(max_new_tokens=10)] * len(prompts)
    lean_seqs = engine.generate_ids(prompts, params)
    lean, engine.lean = engine.lean, None
    try:
        megatron_seqs = engine.generate_ids(prompts, params)
    finally:
        engine.lean = lean
    assert [s.tokens for s in lean_seqs] == [s.tokens for s in megatron_seqs]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    stops = sorted(lean_seqs[0].stop_ids)
    for prompt, seq in zip(prompts, lean_seqs):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=10, do_sample=False, eos_token_id=stops, pad_token_id=0)
        assert seq.tokens == out[0, len(prompt):].tolist(), prompt
    assert len({tuple(s.tokens) for s in lean_seqs}) >= 2  # the prompts matter (tiny random models repeat tokens)


# tp, pp, virtual_pp, layers of the parallel layouts
LAYOUTS = {"tp2": (2, 1, 1, 2), "pp2": (1, 2, 1, 2), "pp2vp2": (1, 2, 2, 4)}


def _lean_worker(args: list[str], tokenizer: Path, out_dir: Path, layouts: list[tuple]) -> dict[tuple, list]:
    """tests/generate/tp_lean_worker.py's greedy tokens of each layout, all from one launch."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    names = [",".join(map(str, layout)) for layout in layouts]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args, str(REPO / "tests/generate/tp_lean_worker.py"), str(tokenizer),
                           str(out_dir), *names], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {layout: json.loads((out_dir / f"{name}.json").read_text()) for layout, name in zip(layouts, names)}


@pytest.fixture(scope="module")
def decoded(tiny_data: Path, tmp_path_factory):
    """Greedy tokens of every layout in LAYOUTS (one 2-rank launch) and of one process with 2 and 4 layers (the
    references, one more process), computed at the first request: layout -> tokens."""
    tokens: dict[tuple, list] = {}

    def get(layout: tuple) -> list:
        if not tokens:
            out = tmp_path_factory.mktemp("lean_decode")
            tokens.update(_lean_worker([], tiny_data / "tokenizer", out, [(1, 1, 1, 2), (1, 1, 1, 4)]))
            tokens.update(_lean_worker(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                                       tiny_data / "tokenizer", out, list(LAYOUTS.values())))
        return tokens[layout]

    return get


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_lean_decode_equals_one_process(layout, decoded):
    """Two gloo ranks decode the tiny Llama together (the trainer's live model under train.eval_tasks): at TP=2 on
    their shards, at PP=2 each on its stage (hidden states handed on point to point, the logits broadcast from the
    last stage), with virtual stages chunk by chunk (stage 1's first chunk hands on to stage 0's second). The same
    greedy tokens as one process with the same full weights (layout-independent init)."""
    layers = LAYOUTS[layout][3]
    got, want = decoded(LAYOUTS[layout]), decoded((1, 1, 1, layers))
    assert got == want
    assert len({tuple(t) for t in want}) >= 2 and all(len(t) > 1 for t in want)  # the prompts matter
