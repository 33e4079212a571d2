"""Text generation: one interface (api.py), several engines chosen by name (engines/: megafin, hf, vllm, openai),
the `megafin generate` batch job and the `megafin serve` OpenAI-compatible server built on it.

forward.py: full-vocabulary logits of a loaded megafin model at any TP/PP (what the convert parity tests compare)."""
