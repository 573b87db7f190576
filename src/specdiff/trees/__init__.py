"""Tree builders: from a drafter's marginals (`DraftProposal`) to a `DraftTree`."""

from specdiff.trees.chain import build_chain
from specdiff.trees.ddtree import best_first_prefixes, build_ddtree

__all__ = ["best_first_prefixes", "build_chain", "build_ddtree"]
