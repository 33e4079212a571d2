"""The ranks of the lean decoder's TP / PP tests (launched by torchrun from test_lean_decode.py, or run alone for the
one-process references).

argv: tokenizer_dir out_dir LAYOUT [LAYOUT ...], a LAYOUT being "tp,pp,virtual_pp,num_layers". For each layout in
turn: build the tiny Llama with megafin's layout-independent init (the same full weights at any layout), decode fixed
prompts greedily through MegafinEngine.on_live_model, and rank 0 writes the tokens to out_dir/LAYOUT.json. Under
torchrun the default process group is this script's, made once (megafin's init_distributed joins it and its
shutdown leaves it), so several layouts cost one launch."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def decode(tokenizer: str, tp: int, pp: int, vp: int, layers: int) -> list:
    from megafin.config import load_config
    from megafin.generate.api import GenerationRequest, SamplingParams
    from megafin.generate.engines.megafin_engine import MegafinEngine
    from megafin.models.gpt import build_model
    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed
    from tests.helpers import TINY_MODEL, TINY_RECIPE

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
        return [s.tokens for s in engine.generate_ids(prompts, [SamplingParams(max_new_tokens=12)] * len(prompts))]
    finally:
        shutdown_distributed()


def main() -> None:
    tokenizer, out_dir, layouts = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    for layout in layouts:
        tokens = decode(tokenizer, *(int(x) for x in layout.split(",")))
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            (out_dir / f"{layout}.json").write_text(json.dumps(tokens))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
