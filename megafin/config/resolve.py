"""The one step that settles every `auto` in a config, before validation: what is checked, run, logged and saved
(config.yaml, the checkpoint's megafin.json) is what runs on this machine."""
from __future__ import annotations

from megafin.config.schema import Config


def resolve(cfg: Config) -> Config:
    """Replace `auto` choices by the concrete ones for this machine (in place; returns cfg)."""
    from megafin.models.backends import resolve_backends
    from megafin.models.fusions import resolve_fusions

    cfg.model.attention_backend, cfg.model.logprob_backend = resolve_backends(cfg.model, cfg.parallel.cp)
    fusions = cfg.model.fusions
    for key, value in resolve_fusions(fusions, cfg.precision.dtype).items():
        setattr(fusions, key, value)
    return cfg
