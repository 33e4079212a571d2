"""Text generation from megafin checkpoints (load one with megafin.runtime.model_session.load_model).

forward.py: full-vocabulary logits at any TP/PP; greedy.py: the cache-less greedy reference decoder that eval uses.
"""
