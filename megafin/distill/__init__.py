"""`megafin distill`: preference pairs distilled from a generative reward model (FinDAP stage 2).

prompts (with reference answers) -> n sampled solutions per prompt (any generation engine) -> each solution judged
(judge/: an LLM judge through the OpenAI-compatible client, and a rule verifier beside it) -> outcome pairs and
step-corrective pairs, JSONL that `data_prep preference` takes as is."""
