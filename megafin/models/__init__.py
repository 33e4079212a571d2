"""Model families and the megatron-core GPTModel megafin builds for them (see README.md).

Kept free of imports: `megafin convert`, config validation and the family registry load without megatron-core;
`megafin.models.gpt` is the module that builds a model.
"""
