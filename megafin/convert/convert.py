"""`from_hf` and `to_hf`: the two conversions, each checking all input before writing, writing into a temporary
sibling of the output and renaming it into place at the end (never a partial output)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from megafin.checkpoint.errors import CheckpointError
from megafin.checkpoint.meta import META, CheckpointMeta
from megafin.config.schema import Config, ModelConfig
from megafin.convert.errors import ConvertError
from megafin.convert.prefetch import prefetched
from megafin.convert.safetensors_io import DTYPE_NAMES, TORCH_DTYPE_JSON, HFWeights, parse_size, write_sharded
from megafin.models import megatron_keys
from megafin.models.layout import layout_problems, padded_vocab_size
from megafin.models.registry import adapter_for_hf_config, adapter_for_model

TOKENIZER_SUBDIR = "tokenizer"
# Files of a Hugging Face tokenizer directory (the chat template lives in tokenizer_config.json or its own file).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
_ST_DTYPE_NAMES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}


# ---------------------------------------------------------------------------------------------- output handling
def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ConvertError(f"{out}: already exists (pass --force to replace it)")
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: parent directory of the output does not exist")


@contextlib.contextmanager
def _staging(out: Path, force: bool) -> Iterator[Path]:
    """A temporary directory next to `out`; renamed to `out` if the block succeeds, removed otherwise."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if not force:  # appeared meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConvertError(f"{out}: already exists (pass --force to replace it)")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()


# ---------------------------------------------------------------------------------------------- checks
def check_layout(m: ModelConfig, tp: int, pp: int) -> None:
    """TP/PP must divide the model as the trainer's validation requires."""
    if tp < 1 or pp < 1:
        raise ConvertError(f"--tp {tp} --pp {pp}: must be positive integers")
    misfits = layout_problems(m, tp, pp)
    if misfits:  # the first one, as validation reports it
        f = misfits[0]
        raise ConvertError(f"--{f.axis} {f.size}: does not divide model.{f.key}={f.value}")


def read_hf_input(hf_dir: Path, tp: int, pp: int) -> tuple[Any, ModelConfig, HFWeights, dict[str, Any]]:
    """Everything from-hf checks before it builds anything: config, architecture, layout, shards, shapes."""
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{cfg_path}: missing (not a Hugging Face model directory)")
    try:
        hf_cfg = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise ConvertError(f"{cfg_path}: not valid JSON ({err})") from None
    adapter = adapter_for_hf_config(hf_cfg, str(cfg_path))
    m = adapter.model_config(hf_cfg, str(cfg_path))
    check_layout(m, tp, pp)
    weights = HFWeights(hf_dir)
    expected = adapter.hf_shapes(m, m.vocab_size)
    present = set(weights.keys())
    for key, shape in expected.items():
        if key not in present:
            raise ConvertError(f"{hf_dir}: tensor {key} is missing from the checkpoint (config.json expects it)")
        got = weights.shape(key)
        if got != shape:
            raise ConvertError(f"{weights.file_of(key)}: tensor {key} has shape {list(got)}, but config.json "
                               f"implies {list(shape)}")
    allowed = set(expected) | adapter.optional_hf_keys(m)
    for key in sorted(present - allowed):
        if not key.endswith("rotary_emb.inv_freq"):
            raise ConvertError(f"{weights.file_of(key)}: unexpected tensor {key} for {adapter.architecture} "
                               f"with this config.json")
    return adapter, m, weights, hf_cfg


def read_checkpoint_meta(ckpt: Path) -> CheckpointMeta:
    """A megafin checkpoint's megafin.json; a ConvertError line when it is missing or malformed."""
    if not (ckpt / META).is_file():
        raise ConvertError(f"{ckpt / META}: missing (not a megafin checkpoint directory)")
    try:
        return CheckpointMeta.read(ckpt)
    except CheckpointError as err:
        raise ConvertError(str(err)) from None


def checkpoint_config(ckpt: Path) -> tuple[Config, int]:
    """The config snapshot and real vocab size a megafin checkpoint records in megafin.json."""
    from megafin.config.errors import ConfigError
    from megafin.config.load import config_from_snapshot

    meta_path = ckpt / META
    meta = read_checkpoint_meta(ckpt)
    if meta.config is None:
        raise ConvertError(f"{meta_path}: no usable config snapshot (no key 'config')")
    try:
        cfg = config_from_snapshot(meta.config)
    except (ValueError, KeyError) as err:
        raise ConvertError(f"{meta_path}: no usable config snapshot ({err})") from None
    except ConfigError as err:
        raise ConvertError(f"{meta_path}: config snapshot: {'; '.join(err.lines)}") from None
    vocab = int(meta.vocab_size or cfg.model.vocab_size)
    if vocab <= 0:
        raise ConvertError(f"{meta_path}: no vocab_size recorded")
    return cfg, vocab


# ---------------------------------------------------------------------------------------------- from-hf
def finite_tensors(weights: HFWeights) -> Callable[[str], torch.Tensor]:
    """`weights.get` that refuses a tensor holding NaN or inf (a corrupt or diverged source), naming it."""

    def get(key: str) -> torch.Tensor:
        t = weights.get(key)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ConvertError(f"{weights.file_of(key)}: tensor {key} has {bad} NaN/inf values of {t.numel()} "
                               f"(pass --allow-nonfinite to convert it anyway)")
        return t

    return get


def from_hf(hf_dir: str | Path, out: str | Path, tp: int = 1, pp: int = 1, dtype: str = "fp32",
            force: bool = False, allow_nonfinite: bool = False) -> Path:
    """HF checkpoint -> a megafin training checkpoint (dist_checkpointing torch_dist, TP/PP-free on disk) at `out`.

    Streams: each HF tensor is read, fused into megatron's layout and written before the next is read. A tensor with
    NaN/inf values stops the conversion (nothing is written) unless allow_nonfinite."""
    from megafin.config.load import config_to_dict
    from megafin.convert.dcp_writer import write_model_checkpoint

    hf_dir, out = Path(hf_dir), Path(out)
    _check_output(out, force)
    if dtype not in ("fp32", "bf16"):
        raise ConvertError(f"--dtype {dtype}: must be fp32 or bf16")
    adapter, m, weights, hf_cfg = read_hf_input(hf_dir, tp, pp)
    cfg = Config()
    cfg.model = m
    cfg.parallel.tp, cfg.parallel.pp = tp, pp
    cfg.precision.dtype = dtype
    src_dtype = _ST_DTYPE_NAMES.get(weights.dtype("model.embed_tokens.weight"), "fp32")
    padded = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by)
    with _staging(out, force) as tmp:
        if _has_tokenizer(hf_dir):
            cfg.data.tokenizer = str((out / TOKENIZER_SUBDIR).resolve())
            _copy_tokenizer(hf_dir, tmp / TOKENIZER_SUBDIR)
        get = weights.get if allow_nonfinite else finite_tensors(weights)
        write_model_checkpoint(tmp, cfg, padded, prefetched(adapter.to_megatron(m, padded, get)), DTYPE_NAMES[dtype])
        if (hf_dir / "generation_config.json").is_file():
            shutil.copy2(hf_dir / "generation_config.json", tmp / "hf_generation_config.json")
        # What the trainer's save_checkpoint records, for a model saved by one process.
        CheckpointMeta(step=0, consumed_samples=0, consumed_tokens=0, layout={"tp": 1, "pp": 1, "dp": 1},
                       vocab_size=m.vocab_size, config=config_to_dict(cfg),
                       converted_from={"hf_dir": str(hf_dir.resolve()), "architecture": adapter.architecture,
                                       "hf_dtype": src_dtype, "requested_layout": {"tp": tp, "pp": pp}}).write(tmp)
    return out


# ---------------------------------------------------------------------------------------------- to-hf
def _special_token_id(tok_dir: Path, name: str) -> Any:
    """bos/eos id from tokenizer_config.json + tokenizer.json without importing transformers; None if absent."""
    try:
        cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
        token = cfg.get(name)
        if isinstance(token, dict):
            token = token.get("content")
        if token is None:
            return None
        for entry in (cfg.get("added_tokens_decoder") or {}).items():
            if entry[1].get("content") == token:
                return int(entry[0])
        tok = json.loads((tok_dir / "tokenizer.json").read_text())
        for added in tok.get("added_tokens", []):
            if added.get("content") == token:
                return int(added["id"])
        vocab = (tok.get("model") or {}).get("vocab")
        if isinstance(vocab, dict) and token in vocab:
            return int(vocab[token])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise LookupError(name)


def _tokenizer_ids(tok_dir: Path) -> tuple[Any, Any]:
    try:
        return _special_token_id(tok_dir, "bos_token"), _special_token_id(tok_dir, "eos_token")
    except LookupError:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        return tok.bos_token_id, tok.eos_token_id


def to_hf(ckpt: str | Path, out: str | Path, dtype: Optional[str] = None, max_shard_size: str = "5GB",
          tokenizer: Optional[str | Path] = None, force: bool = False) -> Path:
    """A megafin checkpoint saved at any TP/PP -> a Hugging Face directory at `out` (LlamaForCausalLM or
    Qwen2ForCausalLM, by the checkpoint's model.family)."""
    from megafin.convert.dcp_reader import DistCheckpointReader

    ckpt, out = Path(ckpt), Path(out)
    _check_output(out, force)
    max_bytes = parse_size(max_shard_size)
    cfg, vocab = checkpoint_config(ckpt)
    adapter = adapter_for_model(cfg.model, str(ckpt / META))
    if dtype is None:
        dtype = (read_checkpoint_meta(ckpt).converted_from or {}).get("hf_dtype") or \
            ("fp32" if cfg.precision.dtype == "fp32" else "bf16")
    if dtype not in DTYPE_NAMES:
        raise ConvertError(f"--dtype {dtype}: must be bf16 or fp32")
    tok_dir = Path(tokenizer) if tokenizer else (Path(cfg.data.tokenizer) if cfg.data.tokenizer else None)
    if tok_dir is None or not _has_tokenizer(tok_dir):
        where = f"--tokenizer {tok_dir}" if tokenizer else f"{ckpt / META}: config.data.tokenizer={str(tok_dir or '')!r}"
        raise ConvertError(f"{where}: not a tokenizer directory (pass --tokenizer DIR)")
    torch_dtype = DTYPE_NAMES[dtype]
    m = cfg.model
    shapes = adapter.hf_shapes(m, vocab)
    reader = DistCheckpointReader(ckpt)
    try:
        reader.check_files()
        padded = padded_vocab_size(vocab, m.make_vocab_size_divisible_by)
        for key, want in megatron_keys.sharded_shapes(m, padded).items():
            got = reader.shape(key)
            if got is None:
                raise ConvertError(f"{ckpt}: tensor {key} is not in the checkpoint (the config in {META} expects it)")
            if got != want:
                raise ConvertError(f"{ckpt}: tensor {key} has shape {list(got)}, but the config in {META} implies "
                                   f"{list(want)}")
        with _staging(out, force) as tmp:
            hf_tensors = adapter.to_hf(m, vocab, lambda k: reader.read(*megatron_keys.sharded_location(k)))
            write_sharded(tmp, shapes, prefetched(hf_tensors), torch_dtype, max_bytes)
            _write_hf_metadata(tmp, adapter, m, vocab, torch_dtype, ckpt, tok_dir)
    finally:
        reader.close()
    return out


def _write_hf_metadata(tmp: Path, adapter: Any, m: ModelConfig, vocab: int, torch_dtype: Any, ckpt: Path,
                       tok_dir: Path) -> None:
    bos, eos = _tokenizer_ids(tok_dir)
    hf_cfg = adapter.hf_config(m, vocab, TORCH_DTYPE_JSON[torch_dtype], bos, eos)
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    gen = {"bos_token_id": bos, "eos_token_id": eos, "do_sample": False}
    if (ckpt / "hf_generation_config.json").is_file():
        gen = json.loads((ckpt / "hf_generation_config.json").read_text())
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    _copy_tokenizer(tok_dir, tmp)
