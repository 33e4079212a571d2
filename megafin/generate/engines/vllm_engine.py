"""`--engine vllm`: offline `vllm.LLM` on a GPU machine, over an HF directory (what `megafin convert to-hf`
writes). vLLM is imported only here and only when this engine is chosen; on CPU, or where it is not installed,
the engine is refused with one line.

A megafin checkpoint on vLLM, in two commands (the second as a batch job, or as a server that the openai engine
and the judge talk to):
    megafin convert to-hf --ckpt RUN/checkpoints/step_N --out HF_DIR
    megafin generate --model HF_DIR --engine vllm --input IN.jsonl --output OUT.jsonl
    (or: vllm serve HF_DIR --port 8000, then --engine openai --base-url http://127.0.0.1:8000/v1 --model HF_DIR)"""
from __future__ import annotations

from typing import Any, Optional

from megafin.generate.api import (GenerationError, GenerationRequest, GenerationResult, Sample, SamplingParams,
                                  check_requests)
from megafin.generate.engines import GenerationEngine, register_engine


def vllm_params(vllm: Any, p: SamplingParams) -> Any:
    """megafin's sampling parameters as vllm.SamplingParams (top_k -1: no top-k cut; temperature 0: greedy)."""
    kwargs: dict[str, Any] = dict(n=p.n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k or -1,
                                  max_tokens=p.max_new_tokens, seed=p.seed, stop=list(p.stop),
                                  stop_token_ids=list(p.stop_token_ids))
    return vllm.SamplingParams(**kwargs)


@register_engine("vllm")
class VLLMEngine(GenerationEngine):
    def __init__(self, model: str, tokenizer: Optional[str] = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: Optional[int] = None, **options: Any) -> None:
        super().__init__(model)
        import torch

        if not torch.cuda.is_available():
            raise GenerationError("--engine vllm: needs a CUDA GPU (no GPU here); on CPU use --engine hf (an HF "
                                  "directory) or --engine megafin (a megafin checkpoint)")
        try:
            import vllm
        except ImportError:
            raise GenerationError("--engine vllm: vllm is not installed (pip install vllm on the GPU machine); "
                                  "or use --engine hf") from None
        self.vllm = vllm
        self.llm = vllm.LLM(model=model, tokenizer=tokenizer or model, trust_remote_code=False,
                            load_format="safetensors", tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        prompts: list[Any] = []
        check_requests(requests)
        for i, request in enumerate(requests):
            if request.messages is None:
                prompts.append(request.prompt)  # tokenized by vLLM, special tokens (BOS) added as HF does
            else:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise GenerationError(f"request {i}: messages: this model's tokenizer has no chat template; "
                                          f"send a plain 'prompt' instead")
                # Token ids, not text: the template writes its own BOS, which vLLM would add a second time.
                text = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                                          tokenize=False)
                prompts.append({"prompt_token_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]})
        params = [vllm_params(self.vllm, r.params) for r in requests]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [GenerationResult(samples=[Sample(text=c.text, finish_reason=c.finish_reason or "stop",
                                                 completion_tokens=len(c.token_ids)) for c in out.outputs],
                                 prompt_tokens=len(out.prompt_token_ids or ())) for out in outputs]

    def close(self) -> None:
        self.llm = None
