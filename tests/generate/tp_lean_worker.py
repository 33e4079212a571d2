"""One rank of the lean decoder's TP / PP tests (launched by torchrun from test_lean_decode.py, or run alone at
TP=PP=1).

argv: tokenizer_dir out.json tp [pp [virtual_pp [num_layers]]] (2 layers unless given). Builds the tiny Llama with
megafin's layout-independent init (the same full weights at any layout), decodes fixed prompts greedily through
MegafinEngine.on_live_model, and rank 0 writes the tokens."""
from __future__ import annotations

import json
import sys

import torch


def main() -> None:
    tokenizer, out, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pp = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    vp = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    layers = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    from megafin.config import load_config
    from megafin.generate.api import GenerationRequest, SamplingParams
    from megafin.generate.engines.megafin_engine import MegafinEngine
    from megafin.models.gpt import build_model
    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed
    from tests.helpers import TINY_MODEL, TINY_RECIPE

    torch.set_num_threads(1)
    cfg = load_config(TINY_RECIPE, [*TINY_MODEL, "model.max_position_embeddings=128", f"parallel.tp={tp}",
                                    f"parallel.pp={pp}", f"parallel.virtual_pp={vp}",
                                    f"model.num_layers={layers}"])
    init_distributed(detect_launch_env(), tp, pp, cfg.train.seed, virtual_pp=vp)
    try:
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(tokenizer))
        model = [build_model(cfg, vocab, vp_stage=v if vp > 1 else None).eval() for v in range(vp)]
        engine = MegafinEngine.on_live_model(model, tokenizer, vocab, cfg.model.max_position_embeddings)
        texts = ["Revenue", "The bank said net interest income", "Analysts expect the company to report higher",
                 "Shares of the"]
        prompts = [engine.prompt_ids(GenerationRequest(prompt=t)) for t in texts]
        seqs = engine.generate_ids(prompts, [SamplingParams(max_new_tokens=12)] * len(prompts))
        if torch.distributed.get_rank() == 0:
            with open(out, "w") as f:
                json.dump([s.tokens for s in seqs], f)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
