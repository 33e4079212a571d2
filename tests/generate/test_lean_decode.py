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


@pytest.fixture(scope="module")
def one_process_tokens(tiny_data: Path, tmp_path_factory):
    """Greedy tokens of the tiny Llama (2 or 4 layers) decoded by one process: the reference for the parallel
    layouts."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    cache: dict[int, list] = {}

    def tokens(layers: int) -> list:
        if layers not in cache:
            out = tmp_path_factory.mktemp("lean_one") / "one.json"
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
            one = subprocess.run([sys.executable, str(REPO / "tests/generate/tp_lean_worker.py"),
                                  str(tiny_data / "tokenizer"), str(out), "1", "1", "1", str(layers)], env=env,
                                 capture_output=True, text=True, timeout=300)
            assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
            cache[layers] = json.loads(out.read_text())
        return cache[layers]

    return tokens


@pytest.mark.parametrize("tp,pp,vp,layers", [(2, 1, 1, 2), (1, 2, 1, 2), (1, 2, 2, 4)], ids=["tp2", "pp2", "pp2vp2"])
def test_parallel_lean_decode_equals_one_process(tiny_data: Path, tmp_path: Path, one_process_tokens, tp, pp, vp,
                                                 layers):
    """Two gloo ranks decode the tiny Llama together (the trainer's live model under train.eval_tasks): at TP=2 on
    their shards, at PP=2 each on its stage (hidden states handed on point to point, the logits broadcast from the
    last stage), with virtual stages chunk by chunk (stage 1's first chunk hands on to stage 0's second). The same
    greedy tokens as one process with the same full weights (layout-independent init)."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import REPO, free_port

    worker = REPO / "tests/generate/tp_lean_worker.py"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(free_port()), str(worker), str(tiny_data / "tokenizer"), str(tmp_path / "two.json"),
                          str(tp), str(pp), str(vp), str(layers)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    got, want = json.loads((tmp_path / "two.json").read_text()), one_process_tokens(layers)
    assert got == want
    assert len({tuple(t) for t in want}) >= 2 and all(len(t) > 1 for t in want)  # the prompts matter
