"""The judge of `megafin distill` and of judged evaluation tasks: JudgeClient (client.py) over an
OpenAI-compatible endpoint, its templates (template.py, templates/), answer parser (parse.py) and on-disk cache
(cache.py); the item / judgment contract is api.py."""
from megafin.distill.judge.api import DISCARD_REASONS, JudgeItem, Judgment
from megafin.distill.judge.client import JudgeClient, JudgeError
from megafin.distill.judge.template import JudgeTemplate, TemplateError, builtin_names

__all__ = ["DISCARD_REASONS", "JudgeClient", "JudgeError", "JudgeItem", "JudgeTemplate", "Judgment",
           "TemplateError", "builtin_names"]
