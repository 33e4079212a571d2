from megafin.model.llama import build_model, padded_vocab_size

__all__ = ["build_model", "padded_vocab_size"]
