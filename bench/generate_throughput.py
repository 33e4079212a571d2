"""Generation speed: the megafin engine (its lean plain-torch path on the GPTModel's parameters, KV cache) against HF
`generate` on the same tiny model and the same prompts, batch 16, greedy, one timed run each (after a two-token
warm-up of each).

The model: a random HF Llama of a few M parameters with the project's demo tokenizer (megafin.demo), converted
to a megafin checkpoint by from-hf. The prompts: 8 FPB sentences and 8 TAT-QA questions from ../shared/data, as
chat messages (skipped, with the reason, when the data is absent). Both sides generate up to --new-tokens tokens
per prompt and stop at the tokenizer's end tokens; tokens/s counts the tokens each side generated (wall clock; the
CPU seconds are shown too, steadier on a shared machine). The target (issue 13) is 2x or more; the last line is the
ratio.

    python bench/generate_throughput.py [--new-tokens 64] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
BATCH = 16
# A few M parameters: 4 layers of width 256 (GQA 8 heads / 4 groups) over the demo tokenizer's ~1k vocabulary.
SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def questions() -> list[str]:
    """8 FPB sentiment questions and 8 TAT-QA questions (the first rows of their test files)."""
    fpb, tatqa = DATA / "fpb" / "test.jsonl", DATA / "tatqa" / "test.jsonl"
    for path in (fpb, tatqa):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (the real data lives in ../shared/data)")
    rows = [json.loads(line) for line in fpb.read_text().splitlines()[:BATCH // 2]]
    out = [f"What is the sentiment of this news? Answer positive, negative or neutral.\n{r['text']}" for r in rows]
    out += [json.loads(line)["question"] for line in tatqa.read_text().splitlines()[:BATCH // 2]]
    return out


def make_models(work: Path) -> tuple[Path, Path]:
    """(HF directory, megafin checkpoint) of one random Llama with the demo tokenizer and a chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from megafin.convert.convert import from_hf
    from megafin.demo import prepare_data

    tok_dir = prepare_data(work / "demo_data") / "tokenizer"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPE)
    hf = work / "hf"
    LlamaForCausalLM(cfg).eval().save_pretrained(hf)
    tok.save_pretrained(hf)
    return hf, from_hf(hf, work / "megafin")


def run_hf(hf: Path, messages: list[list[dict]], new_tokens: int) -> tuple[int, float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def generate(n: int, rows: int) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(batch["input_ids"][:rows], attention_mask=batch["attention_mask"][:rows],
                                  max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                                  pad_token_id=pad)

    generate(2, 1)
    start, cpu = time.perf_counter(), time.process_time()
    out = generate(new_tokens, len(texts))[:, batch["input_ids"].shape[1]:]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = 0
    for row in out.tolist():  # up to and including the first eos, as the megafin engine counts
        tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return tokens, seconds, cpu


def run_megafin(ckpt: Path, messages: list[list[dict]], new_tokens: int) -> tuple[int, float, float]:
    from megafin.generate.api import GenerationRequest, SamplingParams
    from megafin.generate.engines import open_engine

    with open_engine("megafin", str(ckpt), max_batch_size=BATCH) as engine:
        engine.generate([GenerationRequest(messages=messages[0], params=SamplingParams(max_new_tokens=2))])
        requests = [GenerationRequest(messages=m, params=SamplingParams(max_new_tokens=new_tokens))
                    for m in messages]
        start, cpu = time.perf_counter(), time.process_time()
        results = engine.generate(requests)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return sum(r.samples[0].completion_tokens for r in results), seconds, cpu


def main() -> int:
    import torch
    from safetensors.torch import load_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=None, help="an empty directory for the models (default: a "
                    "temporary one)")
    args = ap.parse_args()
    try:
        qs = questions()
    except FileNotFoundError as err:
        print(f"skipped: {err}")
        return 0
    messages = [[{"role": "user", "content": q}] for q in qs]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        hf_dir, ckpt = make_models(work)
        params = sum(t.numel() for t in load_file(str(hf_dir / "model.safetensors")).values())
        hf = run_hf(hf_dir, messages, args.new_tokens)
        mf = run_megafin(ckpt, messages, args.new_tokens)

    print(f"model: random Llama, {params / 1e6:.1f}M parameters; {len(qs)} prompts (FPB + TAT-QA) in one batch, "
          f"greedy, up to {args.new_tokens} new tokens; torch threads {torch.get_num_threads()}")
    print(f"{'engine':<10} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'CPU s':>7}")
    for name, (tokens, seconds, cpu) in (("hf", hf), ("megafin", mf)):
        print(f"{name:<10} {tokens:>7} {seconds:>8.2f} {tokens / seconds:>9.1f} {cpu:>7.2f}")
    ratio, cpu_ratio = (mf[0] / mf[1]) / (hf[0] / hf[1]), (mf[0] / mf[2]) / (hf[0] / hf[2])
    print(f"megafin / hf tokens/s: {ratio:.2f}x (target 2x; per CPU second {cpu_ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
