"""Conversion speed and memory: a Llama-3.2-1B-shaped random bf16 HF checkpoint (made on disk here), converted
from-hf and back to-hf by the `megafin convert` CLI in child processes; seconds and peak RSS of each, against
copying the same bytes. Targets (issue 5): peak RSS under 1.5 GB, time within 2x of the copy. The last line is
the ratio of the slower direction to the copy (medians over --rounds).

    python bench/convert.py [--workdir DIR] [--layers 16] [--rounds 3] [--keep]

--layers shrinks the model for a quick run (the full 1B shape is 16 layers, ~2.5 GB in bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                   rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
TARGET_RSS_GB = 1.5


def make_tokenizer(out: Path) -> None:
    """A small byte-level tokenizer with Llama-3-like special tokens (the conversion only copies its files)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, **{chr(c): i + 2 for i, c in enumerate(range(33, 127))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|end_of_text|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"}))


def make_hf_checkpoint(out: Path, layers: int) -> int:
    """Random bf16 weights written tensor by tensor (the megafin writer), ~5 GB shards as HF ships them."""
    import torch

    from megafin.models.llama.state_dict_adapter import LlamaAdapter
    from megafin.convert.safetensors_io import parse_size, write_sharded

    out.mkdir(parents=True)
    cfg = dict(LLAMA_32_1B, num_hidden_layers=layers, architectures=["LlamaForCausalLM"], model_type="llama",
               torch_dtype="bfloat16", bos_token_id=0, eos_token_id=1)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    adapter = LlamaAdapter()
    m = adapter.model_config(cfg, "bench")
    shapes = adapter.hf_shapes(m, m.vocab_size)
    gen = torch.Generator().manual_seed(0)

    def tensors():
        for key, shape in shapes.items():
            yield key, (torch.randn(shape, generator=gen, dtype=torch.bfloat16) * 0.02)

    index = write_sharded(out, shapes, tensors(), torch.bfloat16, parse_size("5GB"))
    make_tokenizer(out)
    return index["metadata"]["total_size"]


# The child reports its own high-water RSS (VmHWM, reset at exec). wait4's ru_maxrss would not do: on Linux a child
# inherits, through fork+exec, the parent's RSS at fork time as a floor of its maxrss (here: the bench itself, which
# just generated the random checkpoint).
_CHILD = """import resource, sys
from megafin.cli import main
code = main(sys.argv[2:])
try:
    hwm_kb = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])
except (OSError, StopIteration):
    hwm_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
open(sys.argv[1], 'w').write(str(hwm_kb))
sys.exit(code)
"""


def run_measured(args: list[str], work: Path) -> tuple[float, float]:
    """Wall seconds (including the final sync) and peak RSS (GB) of `megafin convert ARGS` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rss_file = work / "rss.txt"
    os.sync()  # start clean and count the final flush, as the copy baseline does
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(rss_file), *args], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL)
    os.sync()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: megafin {' '.join(args)} exited {proc.returncode}")
    return seconds, int(rss_file.read_text()) * 1024 / 1e9


def copy_seconds(src: Path, dst: Path, userspace: bool) -> float:
    """Copy the shards and sync. userspace=False: shutil.copyfile (sendfile, the bytes never leave the kernel);
    True: read into a 64 MB buffer and write it out, as any converter that looks at the bytes must."""
    dst.mkdir()
    start = time.perf_counter()
    buf = memoryview(bytearray(64 << 20))
    for f in sorted(p for p in src.iterdir() if p.is_file()):
        if not userspace:
            shutil.copyfile(f, dst / f.name)
            continue
        with open(f, "rb", buffering=0) as r, open(dst / f.name, "wb", buffering=0) as w:
            while n := r.readinto(buf):
                w.write(buf[:n])
    os.sync()
    seconds = time.perf_counter() - start
    shutil.rmtree(dst)
    return seconds


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (copy, from-hf, to-hf); medians are reported. Writes into the page cache of "
                             "a VM vary by 3x or more from one run to the next, so one round proves little")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait before each timed step: a VM's disk absorbs a burst of writes fast "
                             "after idling and slowly right after another burst, so whichever step ran second "
                             "would pay for the one before")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="megafin-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        hf = work / "hf"
        t0 = time.perf_counter()
        nbytes = make_hf_checkpoint(hf, args.layers)
        print(f"made {hf}: {nbytes / 1e9:.2f} GB bf16 ({args.layers} layers) in {time.perf_counter() - t0:.1f} s",
              flush=True)
        os.sync()
        times: dict[str, list[float]] = {"sendfile": [], "copy hf": [], "from-hf": [], "copy ckpt": [], "to-hf": []}
        rss: dict[str, list[float]] = {"from-hf": [], "to-hf": []}
        same = True
        for r in range(args.rounds):
            times["sendfile"].append(copy_seconds(hf, work / "copy", userspace=False))
            for name, src, args_ in (("from-hf", hf, ["--hf", str(hf), "--out", str(work / "ckpt")]),
                                     ("to-hf", work / "ckpt", ["--ckpt", str(work / "ckpt"), "--out", str(work / "back")])):
                # Each conversion is compared with a copy of its own input made right before it: the same bytes, the
                # same files in the page cache, and the memory that copy frees is what the conversion writes into next
                # (writes into a VM's fresh pages are several times slower than into recycled ones).
                time.sleep(args.settle)
                times[f"copy {src.name}"].append(copy_seconds(src, work / "copy", userspace=True))
                time.sleep(args.settle)
                s, peak = run_measured(["convert", name, *args_, "--dtype", "bf16"], work)
                times[name].append(s)
                rss[name].append(peak)
            same = same and _same_tensors(hf, work / "back")
            shutil.rmtree(work / "ckpt")
            shutil.rmtree(work / "back")
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
        print(f"\n{nbytes / 1e9:.2f} GB each way; medians of {args.rounds} rounds; a copy is read/write through a 64 MB "
              f"buffer + sync (sendfile: {_median(times['sendfile']):.1f} s)")
        print(f"{'direction':<10}{'seconds':>10}{'copy s':>10}{'x copy':>10}{'peak RSS GB':>13}{'RSS target':>12}")
        ratios = {}
        for name, copy_key in (("from-hf", "copy hf"), ("to-hf", "copy ckpt")):
            s, c, peak = _median(times[name]), _median(times[copy_key]), max(rss[name])
            ratios[name] = s / c
            print(f"{name:<10}{s:>10.1f}{c:>10.1f}{s / c:>10.2f}{peak:>13.2f}"
                  f"{'ok' if peak < TARGET_RSS_GB else 'MISSED':>12}")
        print(f"round trip bit-exact: {same}")
        print(json.dumps({"bytes": nbytes, "layers": args.layers, "rounds": times, "peak_rss_gb": rss,
                          "bit_exact": same}))
        worst = max(ratios, key=ratios.get)
        print(f"slowest direction ({worst}) / copy of its input: {ratios[worst]:.2f}x (target <= 2x)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _same_tensors(a: Path, b: Path) -> bool:
    """Compare every tensor of the two checkpoints, one at a time."""
    import torch

    from megafin.convert.safetensors_io import HFWeights

    wa, wb = HFWeights(a), HFWeights(b)
    if sorted(wa.keys()) != sorted(wb.keys()):
        return False
    return all(torch.equal(wa.get(k), wb.get(k)) for k in wa.keys())


if __name__ == "__main__":
    sys.exit(main())
