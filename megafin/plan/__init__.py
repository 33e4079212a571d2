"""`megafin plan`: per-GPU memory, fit and step time of a recipe's layouts before a run is submitted."""
from megafin.plan.estimate import Estimate, Layout, Workload, estimate
from megafin.plan.gpus import GPUS
from megafin.plan.layouts import plan_layouts, recipe_layout

__all__ = ["Estimate", "GPUS", "Layout", "Workload", "estimate", "plan_layouts", "recipe_layout"]
