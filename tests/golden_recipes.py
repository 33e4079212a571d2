"""The tiny recipes' pinned runs: how each is run (overrides, steps, schedule), its golden loss curve and the
tolerances layouts and curves are held to. Shared by the layout-equivalence tests and the fault tests that compare
a disturbed run with the same curve."""
from __future__ import annotations

from tests.helpers import FAST, REPO

# Another layout sums the same fp32 products in another order (split GEMMs, all-reduces), and so do another CPU's
# kernels: measured drift <= 2e-7 relative over these 5-6 steps, under AVX-512 and scalar ATen kernels and MKL's
# COMPATIBLE GEMMs. 2e-6 leaves 10x on that (it was abs 1e-5, i.e. 1.3e-6 to 2e-6 on these losses of 5 to 8) and
# fails any layout bug that moves a loss by more.
LAYOUT_REL = 2e-6

# Same schedule in every run (decay_steps fixed), so runs of different lengths see the same learning rates.
SCHEDULE = ["scheduler.decay_steps=20", "scheduler.warmup_steps=2"]
STEPS = {"cpt": 6, "sft": 5, "cpt_it": 5, "dpo": 5}


def recipe_overrides(recipe: str, tiny_data, run_dir, layout: str = "") -> list[str]:
    data = {"cpt": [f"data.blend=[{{path: {tiny_data / 'finance_text_document'}, weight: 0.7}}, "
                    f"{{path: {tiny_data / 'general_text_document'}, weight: 0.3}}]"],
            "sft": [f"data.blend=[{{path: {tiny_data / 'sft'}, weight: 1}}]"],
            "cpt_it": [f"data.blend=[{{path: {tiny_data / 'cpt_it'}, weight: 1}}]"],
            "dpo": [f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]"]}[recipe]
    tied = ["model.tie_embeddings=true"] if layout.endswith("tied") else []
    # dpo under a *-distill layout: reward distillation onto the sample pairs' judge rewards (+ NLL), in both runs
    distill = ["dpo.loss=distill", "dpo.distill_alpha=1.0"] if layout.endswith("distill") else []
    return [*FAST, f"data.tokenizer={tiny_data / 'tokenizer'}", *data, *SCHEDULE, f"train.steps={STEPS[recipe]}",
            f"run_dir={run_dir}", *tied, *distill]


GOLDEN = REPO / "tests/golden/loss_curves.json"
# The curves were recorded on another machine. Measured against them under this machine's AVX-512, AVX2 and scalar
# kernels and MKL's COMPATIBLE GEMMs: <= 1.7e-7 relative. 1e-5 leaves 60x, and a 1e-3 change of the math fails 100x
# over. Drift between kernels grows with training (9e-7 by step 10, 5e-5 by step 20 for cpt): pinned curves stay short.
GOLDEN_REL = 1e-5
GOLDEN_MAX_STEPS = 10
