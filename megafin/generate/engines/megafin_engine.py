"""The `megafin` engine: a megafin checkpoint decoded in this process at TP=1 with a KV cache.

How: megatron-core's own static-batching KV cache. The GPTModel's `inference_context` argument, given a
`megatron.core.inference.contexts.StaticInferenceContext`, makes every attention layer keep its keys and values in
a [max_len, batch, ...] buffer and attend to it, the offset into it advancing by one per decode step. It runs on
CPU through cpu_compat. The layers above it (megatron's inference engine, text-generation controller and server)
are not used: they bring their own tokenizer abstraction, request objects and sampling, while the loop here is a
few lines (prefill, then one token per step) with megafin's own per-sample seeded sampling
(megafin/generate/sampling.py) and the interface of megafin/generate/api.py.

Batching: prompts of different lengths are LEFT-PADDED to the longest in a batch: each prompt is prefilled on its
own into its row of the cache, right-aligned (no compute on padding), then all rows decode together, one token per
step, an attention mask hiding each row's padding slots. megatron's static cache gives the whole batch one RoPE
position per slot, so a padded prompt's positions start at its padding length, not 0; RoPE scores depend only on
the distance between positions, so this changes nothing but float rounding. Prompts are sorted by length before
they are cut into batches of `max_batch_size`; finished sequences are dropped from the batch (and its cache) as
they end.

Keys are cached after RoPE (megafin/generate/rotated_key_cache.py: megatron's static path would rotate the whole
cached prefix again at every step). The model is built with the SDPA core attention (megafin/models/
sdpa_attention.py) whatever backend it trained with: the one that takes an explicit padding mask and a decode
step's single query against the cached keys.

Two paths run this loop. For a model whose layers are Llama/Qwen2-shaped (RMSNorm, fused QKV with GQA, plain RoPE,
SwiGLU; megafin/generate/lean_decode.py `unsupported` says which), prefill and decode steps run in plain torch ops
on the GPTModel's own parameters (`self.lean`), with the same cache layout and positions. Any other model runs
through megatron's GPTModel forward with the static context above (`self.lean` None; the tests compare the two).
Why (bench/generate_throughput.py, 16 chat prompts, 64 greedy tokens, 3.4M-param Llama, 2 CPU threads; cProfile of
one generate on megatron's path, 1.0 s under the profiler): megatron's module stack was half a decode step beyond
its matmuls (per layer: module calls, the parallel linears' autograd-function wrappers, process-group lookups,
RoPE through rope_utils, the context's bookkeeping; the cache permuted [len, batch, ...] for SDPA), and 16
one-prompt megatron prefills added ~2 ms each on top of their arithmetic. The lean path's step is ~3.8 ms: ~1.9 ms
matmuls, ~1.3 ms SDPA on the cache, the rest elementwise; sampling and stop checks are <1% (greedy is one argmax).

Options: `tokenizer=DIR` (else the checkpoint's `data.tokenizer`), `max_batch_size=N` (sequences per forward,
default 32).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from megafin.generate.api import (GenerationError, GenerationRequest, GenerationResult, Sample, SamplingParams,
                                  check_requests)
from megafin.generate.engines import GenerationEngine, register_engine
from megafin.generate.lean_decode import LeanDecoder, unsupported
from megafin.generate.rotated_key_cache import cache_rotated_keys
from megafin.generate.sampling import cut_at_stop_string, next_tokens, sample_generator, stop_token_ids



@dataclass
class _Sequence:
    """One sample being generated: its prompt ids, its parameters and generator, what it produced, how it ended."""
    prompt: list[int]
    params: SamplingParams
    generator: Optional[torch.Generator]
    stop_ids: frozenset[int]
    tokens: list[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    text: Optional[str] = None  # set when a stop string ended it: the text before the stop string


@register_engine("megafin")
class MegafinEngine(GenerationEngine):

    def __init__(self, model: str, tokenizer: Optional[str] = None, max_batch_size: int = 32,
                 **options: Any) -> None:
        super().__init__(model)
        unknown = sorted(k for k, v in options.items() if v is not None)
        if unknown:
            raise GenerationError(f"the megafin engine takes the options tokenizer and max_batch_size, got "
                                  f"{', '.join(unknown)}")
        if int(max_batch_size) < 1:
            raise GenerationError(f"max_batch_size: expected a positive integer, got {max_batch_size}")
        self.max_batch_size = int(max_batch_size)
        ckpt = Path(model)
        _check_checkpoint(ckpt)
        cfg, self.vocab_size = _checkpoint_config(ckpt)
        self.max_positions = cfg.model.max_position_embeddings
        self.tokenizer = _open_tokenizer(tokenizer, cfg.data.tokenizer, ckpt)
        self._session = contextlib.ExitStack()
        try:
            self.net = _load_model(ckpt, cfg, self.vocab_size, self._session)
            # Decode steps in plain torch ops where they reproduce megatron's layer (megafin/generate/
            # lean_decode.py), else megatron's own path. None: megatron's path (tests compare the two).
            self.lean: Optional[LeanDecoder] = None if unsupported(self.net) else LeanDecoder([self.net])
        except BaseException:
            self._session.close()
            raise

    @classmethod
    def on_live_model(cls, chunks: list[torch.nn.Module], tokenizer: str, vocab_size: int, max_positions: int,
                      max_batch_size: int = 32) -> "MegafinEngine":
        """An engine on a model already built in this process (the trainer's: megafin/eval/in_training.py; at TP>1
        or PP>1 every rank of the replica calls this and decodes in lockstep, lean_decode.py; `chunks`: this rank's
        model, one module, or its chunks with virtual pipeline stages).
        Decoded by the lean path only, which reads the parameters and patches nothing (megatron's path would need
        the rotated-key cache installed on the model); GenerationError when the model is not lean-decodable."""
        reason = next(filter(None, map(unsupported, chunks)), None)
        if reason is not None:
            raise GenerationError(f"the live model cannot be decoded in process: {reason}")
        engine = cls.__new__(cls)
        GenerationEngine.__init__(engine, "live")
        engine.max_batch_size, engine.vocab_size, engine.max_positions = max_batch_size, vocab_size, max_positions
        engine.tokenizer = _open_tokenizer(tokenizer, None, Path("live"))
        engine._session = contextlib.ExitStack()
        engine.net, engine.lean = chunks[0], LeanDecoder(chunks)
        return engine

    def close(self) -> None:
        self._session.close()

    # ----------------------------------------------------------------------------------------- text in, text out
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        check_requests(requests)
        prompts = [self.prompt_ids(req, i) for i, req in enumerate(requests)]
        seqs = self.generate_ids(prompts, [r.params for r in requests])
        results, k = [], 0
        for req, prompt in zip(requests, prompts):
            samples = [Sample(text=s.text if s.text is not None else self._decode(s.tokens),
                              finish_reason=s.finish_reason or "length", completion_tokens=len(s.tokens))
                       for s in seqs[k:k + req.params.n]]
            k += req.params.n
            results.append(GenerationResult(samples=samples, prompt_tokens=len(prompt)))
        return results

    def prompt_ids(self, req: GenerationRequest, index: int = 0) -> list[int]:
        """The request's prompt as token ids: chat `messages` through the tokenizer's chat template (generation
        prompt added), plain text with the tokenizer's special tokens (BOS), as vLLM and HF pipelines do."""
        tok = self.tokenizer
        if req.messages is not None:
            if not tok.chat_template:
                raise GenerationError(f"request {index}: 'messages' need a chat template and the tokenizer at "
                                      f"{tok.name_or_path} has none; send a 'prompt' instead")
            ids = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding (a UserDict)
                ids = ids["input_ids"]
        else:
            ids = tok(req.prompt, add_special_tokens=True)["input_ids"]
        ids = [int(i) for i in ids]
        if not ids:
            raise GenerationError(f"request {index}: the prompt is empty (no tokens)")
        if len(ids) >= self.max_positions:
            raise GenerationError(f"request {index}: the prompt has {len(ids)} tokens, the model takes at most "
                                  f"{self.max_positions - 1} before generating (max_position_embeddings)")
        return ids

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @functools.cached_property
    def _tokenizer_stops(self) -> frozenset[int]:
        """The tokenizer's stop ids, once per engine: finding its end-of-turn tokens builds the whole vocabulary
        dict (1.5 ms at 4K tokens, per request it was a third of a tiny model's evaluation)."""
        return stop_token_ids(self.tokenizer)

    # ------------------------------------------------------------------------------------------- ids in, ids out
    def generate_ids(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[_Sequence]:
        """`n` sequences per prompt, in order (prompt 0's samples, then prompt 1's, ...). A sequence's `tokens`
        include the stop token that ended it (counted as generated, as vLLM counts it) but its text does not."""
        seqs = []
        for prompt, p in zip(prompts, params):
            stops = self._tokenizer_stops.union(p.stop_token_ids)
            for j in range(p.n):
                gen = sample_generator(p.seed, j) if p.temperature > 0 else None
                seqs.append(_Sequence(list(prompt), p, gen, stops))
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].prompt))
        for start in range(0, len(order), self.max_batch_size):
            self._generate_batch([seqs[i] for i in order[start:start + self.max_batch_size]])
        return seqs

    @torch.no_grad()
    def _generate_batch(self, batch: list[_Sequence]) -> None:
        from megatron.core.inference.contexts import StaticInferenceContext

        device = next(self.net.parameters()).device
        longest = max(len(s.prompt) for s in batch)
        total = min(longest + max(s.params.max_new_tokens for s in batch), self.max_positions)
        pads = torch.tensor([longest - len(s.prompt) for s in batch], device=device)
        ctx = StaticInferenceContext(len(batch), total)
        lean = None
        if self.lean is not None:
            lean, logits = self.lean.prefill([s.prompt for s in batch], total)
        else:
            logits = self._prefill(batch, pads, longest, total, ctx)
        ctx.batch_size_offset, ctx.sequence_len_offset = 0, longest
        alive = list(range(len(batch)))
        room = total - longest
        while True:
            rows = [batch[i] for i in alive]
            nxt = next_tokens(logits[:, :self.vocab_size], [s.params for s in rows],
                              [s.generator for s in rows]).tolist()
            keep = [r for r, (seq, t) in enumerate(zip(rows, nxt)) if not self._append(seq, t, room)]
            if not keep:
                return
            if len(keep) < len(alive):  # drop finished rows from the batch and its cache
                alive = [alive[r] for r in keep]
                index = torch.tensor(keep, device=device)
                if lean is not None:
                    lean.keep(index)
                else:
                    for layer, (k, v) in ctx.key_value_memory_dict.items():
                        ctx.key_value_memory_dict[layer] = (k.index_select(1, index), v.index_select(1, index))
                pads = pads.index_select(0, index)
                nxt = [nxt[r] for r in keep]
            t = ctx.sequence_len_offset
            step = torch.tensor(nxt, device=device)
            if lean is not None:
                logits = lean.step(step, t)
            else:
                step = step.unsqueeze(1)
                positions = torch.full_like(step, t)
                # The new token sees every cached slot but its row's padding (megatron masks: True = hidden).
                hide = (torch.arange(t + 1, device=device).view(1, 1, 1, -1) < pads.view(-1, 1, 1, 1)
                        if int(pads.max()) else None)
                logits = self._forward(step, positions, hide, ctx)[:, -1]
            ctx.sequence_len_offset = t + 1

    def _prefill(self, batch: list[_Sequence], pads: torch.Tensor, longest: int, total: int,
                 ctx: Any) -> torch.Tensor:
        """megatron's path: the prompts written into the static context's cache; the logits after each."""
        device = pads.device
        ctx.key_value_memory_dict.update(self._zero_cache(len(batch), total, device))
        # Prefill one prompt at a time into its row of the cache, right-aligned at `longest`: no compute spent on
        # padding (a batch's prompts differ in length by 7x on FPB + TAT-QA); the cache's padding slots stay zero.
        last = []
        for row, seq in enumerate(batch):
            pad = int(pads[row])
            ctx.batch_size_offset, ctx.sequence_len_offset = row, pad
            tokens = torch.tensor([seq.prompt], device=device)
            positions = torch.arange(pad, longest, device=device).unsqueeze(0)
            hide = _prefill_mask(pad, longest, device) if pad else None
            last.append(self._forward(tokens, positions, hide, ctx)[:, -1])
        return torch.cat(last)

    def _zero_cache(self, batch: int, total: int, device: torch.device) -> dict[int, tuple[torch.Tensor, ...]]:
        """The static context's key/value buffers as megatron would allocate them ([total, batch, groups, dim] per
        layer), but zeroed: a padding slot is masked, and a masked slot must not hold NaN (0 * NaN in SDPA)."""
        out = {}
        dtype = next(self.net.parameters()).dtype
        for layer in self.net.decoder.layers:
            att = layer.self_attention
            shape = (total, batch, att.num_query_groups_per_partition)
            out[att.layer_number] = (torch.zeros(*shape, att.key_hidden_size, dtype=dtype, device=device),
                                     torch.zeros(*shape, att.val_hidden_size, dtype=dtype, device=device))
        return out

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, hide: Optional[torch.Tensor],
                 ctx: Any) -> torch.Tensor:
        # Prefill returns the last position's logits only (the context's materialize_only_last_token_logits).
        return self.net(tokens, positions, hide, inference_context=ctx, runtime_gather_output=True)

    def _append(self, seq: _Sequence, token: int, room: int) -> bool:
        """Add one generated token; True when the sequence has ended (its finish_reason set). `room`: how many
        tokens the batch's cache holds after the (padded) prompt."""
        seq.tokens.append(token)
        if token in seq.stop_ids:
            seq.finish_reason = "stop"
            seq.text = self._decode(seq.tokens[:-1])
        elif seq.params.stop and (cut := cut_at_stop_string(self._decode(seq.tokens), seq.params.stop)) is not None:
            seq.finish_reason, seq.text = "stop", cut
        elif len(seq.tokens) >= min(seq.params.max_new_tokens, room):
            seq.finish_reason = "length"
        return seq.finish_reason is not None


def _prefill_mask(pad: int, longest: int, device: torch.device) -> torch.Tensor:
    """megatron's attention mask (True = hidden) [1, 1, longest - pad, longest] of a prompt written at cache slots
    pad .. longest - 1: causal among its own tokens, the `pad` slots before it hidden."""
    query = torch.arange(pad, longest, device=device).view(-1, 1)
    key = torch.arange(longest, device=device).view(1, -1)
    return ((key > query) | (key < pad)).view(1, 1, longest - pad, longest)


def _check_checkpoint(ckpt: Path) -> None:
    """One line before any process group starts when `ckpt` is not a complete, readable megafin checkpoint (its
    metadata read through the restricted loader: nothing in it executes)."""
    from megafin.checkpoint.errors import CheckpointError
    from megafin.checkpoint.integrity import check_readable
    from megafin.checkpoint.meta import META

    if not ckpt.is_dir():
        raise GenerationError(f"{ckpt}: checkpoint directory not found")
    if not (ckpt / META).is_file():
        raise GenerationError(f"{ckpt}: not a megafin checkpoint ({META} missing; pass RUN/checkpoints/step_N)")
    try:
        check_readable(ckpt)
    except CheckpointError as err:
        raise GenerationError(str(err)) from None


def _checkpoint_config(ckpt: Path) -> tuple[Any, int]:
    """The checkpoint's config snapshot and real vocab size (read before any process group starts)."""
    from megafin.convert.convert import checkpoint_config
    from megafin.convert.errors import ConvertError

    try:
        return checkpoint_config(ckpt)
    except ConvertError as err:
        raise GenerationError(str(err)) from None


def _load_model(ckpt: Path, cfg: Any, vocab: int, session: contextlib.ExitStack) -> torch.nn.Module:
    """The checkpoint's model at TP=1, PP=1 in a megatron session of this process (closed with `session`), built
    with SDPA core attention (see the module docstring) and its trained weights."""
    from megafin.checkpoint.errors import CheckpointError
    from megafin.checkpoint.manager import load_checkpoint
    from megafin.convert.errors import ConvertError
    from megafin.models.gpt import build_model
    from megafin.runtime.model_session import megatron_session, model_build_config

    build = model_build_config(cfg, 1, 1)
    build.model.attention_backend = "sdpa"
    session.enter_context(megatron_session())
    model = build_model(build, vocab, initialize=False)  # every weight is loaded next
    try:
        load_checkpoint(ckpt, model, None, None)
    except (ConvertError, CheckpointError) as err:
        raise GenerationError(str(err)) from None
    cache_rotated_keys(model)
    return model.eval()


def _open_tokenizer(option: Optional[str], recorded: Optional[str], ckpt: Path) -> Any:
    """The tokenizer= option, else the checkpoint's config snapshot `data.tokenizer`; one line when neither is a
    tokenizer directory. No remote code runs (trust_remote_code stays off)."""
    from transformers import AutoTokenizer

    where = f"tokenizer={option}" if option else f"{ckpt}: config data.tokenizer={recorded or ''!r}"
    path = Path(option or recorded or "")
    if not (option or recorded) or not ((path / "tokenizer.json").is_file()
                                        or (path / "tokenizer_config.json").is_file()):
        raise GenerationError(f"{where}: not a tokenizer directory (pass the option tokenizer=DIR)")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise GenerationError(f"{where}: the tokenizer does not load ({str(err).splitlines()[0]})") from None
