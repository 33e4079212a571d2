"""Text generation: one interface (api.py: text requests with sampling parameters in, samples out), several engines
chosen by name (engines/: megafin's own checkpoints with megatron-core's KV cache, hf, vllm, openai), the
`megafin generate` batch job (jobs.py) and the `megafin serve` OpenAI-compatible server (server.py); cli.py holds
both commands' arguments.

forward.py: full-vocabulary logits of a loaded megafin model at any TP/PP (what the convert parity tests compare)."""
