"""Target adapters: the only place that knows how a model family runs a tree forward."""

from specdiff.target.hf_causal import HFTarget, load_target
from specdiff.target.static_model import StaticTarget
from specdiff.target.tree_plan import TreePlan

__all__ = ["HFTarget", "StaticTarget", "TreePlan", "load_target"]
