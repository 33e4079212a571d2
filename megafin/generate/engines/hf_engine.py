"""`--engine hf`: a Hugging Face model directory through `transformers` `generate`.

Safetensors weights only and no `trust_remote_code`: nothing in a downloaded directory executes. Prompts are
batched with left padding; requests with the same sampling parameters share one `generate` call."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from megafin.generate.api import (GenerationError, GenerationRequest, GenerationResult, Sample, SamplingParams,
                                  check_requests)
from megafin.generate.engines import GenerationEngine, register_engine
from megafin.generate.sampling import stop_token_ids

def render_prompt(tokenizer: Any, request: GenerationRequest) -> tuple[str, bool]:
    """The prompt text and whether tokenizing it should add the tokenizer's special tokens (BOS): a chat template
    writes its own, a plain prompt gets them as the tokenizer would add them in training."""
    if request.messages is None:
        return request.prompt, True
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError("messages: this model's tokenizer has no chat template; send a plain 'prompt' instead")
    return tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True), False


def cut_at_stop(tokenizer: Any, tokens: list[int], end_ids: set[int], stop: tuple[str, ...]) -> Sample:
    """One sample from its generated tokens: ended by an end token or a stop string ("stop", the text cut before
    it) or by the length limit ("length"). completion_tokens counts what was generated up to the stop."""
    for i, t in enumerate(tokens):
        if t in end_ids:
            tokens, ended = tokens[:i + 1], True
            break
    else:
        ended = False
    body = tokens[:-1] if ended else tokens
    text = tokenizer.decode(body, skip_special_tokens=True)
    cuts = [(text.find(s), s) for s in stop if s and s in text]
    if cuts:
        at, first = min(cuts)
        # The shortest token prefix whose text holds the stop string: what generation needed to see it.
        lo, hi = 1, len(body)
        while lo < hi:
            mid = (lo + hi) // 2
            if first in tokenizer.decode(body[:mid], skip_special_tokens=True):
                hi = mid
            else:
                lo = mid + 1
        return Sample(text=text[:at], finish_reason="stop", completion_tokens=lo)
    return Sample(text=text, finish_reason="stop" if ended else "length", completion_tokens=len(tokens))


class StopOnStrings:
    """A per-row StoppingCriteria: a row is done once the text of its last tokens holds a stop string."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], prompt_length: int) -> None:
        self.tokenizer, self.stop, self.prompt_length = tokenizer, [s for s in stop if s], prompt_length
        # A stop string of L characters lies within the last L tokens (a token is at least one character) plus a
        # few for tokens that decode to partial characters.
        self.window = max((len(s) for s in self.stop), default=0) + 4

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stop:
            return done
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        for row, tail in enumerate(input_ids[:, start:].tolist()):
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            done[row] = any(s in text for s in self.stop)
        return done


@register_engine("hf")
class HFEngine(GenerationEngine):
    def __init__(self, model: str, tokenizer: Optional[str] = None, batch_size: int = 16,
                 device: Optional[str] = None, **options: Any) -> None:
        super().__init__(model)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model)
        if not (path / "config.json").is_file():
            raise GenerationError(f"--model {model}: expected a Hugging Face model directory with config.json")
        if not any(path.glob("*.safetensors")):
            raise GenerationError(f"--model {model}: no *.safetensors weights (only safetensors are loaded: a "
                                  f"pickled .bin can run code)")
        tok_dir = tokenizer or model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise GenerationError(f"--tokenizer {tok_dir}: no usable tokenizer ({err})".splitlines()[0]) from None
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # The checkpoint's own dtype on a GPU; fp32 on CPU, where bf16 matmuls are slow and less exact.
        dtype = "auto" if self.device.type == "cuda" else torch.float32
        self.lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                          trust_remote_code=False).to(self.device).eval()
        self.end_ids = set(stop_token_ids(self.tokenizer,
                                          model_eos=getattr(self.lm.generation_config, "eos_token_id", None)))
        self.batch_size = max(1, int(batch_size))

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        check_requests(requests)
        results: list[Optional[GenerationResult]] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            # A fixed seed: that prompt alone, so its samples do not depend on what it is batched with.
            key = (request.params, i if request.params.seed is not None else None)
            groups.setdefault(key, []).append(i)
        for (params, _), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                for i, result in zip(chunk, self._generate_batch([requests[i] for i in chunk], params)):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _generate_batch(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        encoded = []
        for request in requests:
            text, special = render_prompt(self.tokenizer, request)
            encoded.append(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        context = getattr(self.lm.config, "max_position_embeddings", None)
        for ids in encoded:
            if context and len(ids) + params.max_new_tokens > context:
                raise GenerationError(f"a prompt of {len(ids)} tokens plus max_new_tokens {params.max_new_tokens} "
                                      f"exceeds the model's context of {context} tokens")
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        end_ids = self.end_ids | set(params.stop_token_ids)
        sampling = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=sampling, num_return_sequences=params.n,
            temperature=params.temperature if sampling else None, top_p=params.top_p if sampling else None,
            top_k=params.top_k if sampling else None, eos_token_id=sorted(end_ids), pad_token_id=pad)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.no_grad():
            out = self.lm.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                      stopping_criteria=StoppingCriteriaList([StopOnStrings(
                                          self.tokenizer, params.stop, width)]))
        new = out[:, width:].tolist()
        return [GenerationResult(samples=[cut_at_stop(self.tokenizer, new[r * params.n + k], end_ids, params.stop)
                                          for k in range(params.n)], prompt_tokens=len(ids))
                for r, ids in enumerate(encoded)]

    def close(self) -> None:
        self.lm = None
