"""Cost-aware DDTree: grow the best-first tree while expected tokens per unit of cost rises.

With delta(v) the product of drafter marginals along v's path, pops come out in non-increasing
delta, so after n pops the tree is the optimal n-node tree and Phi(n) = sum of their deltas is the
expected number of accepted draft tokens. The objective per round is

    theta(n) = (1 + Phi(n)) / (C_d + C_v(n + 1, context))          (+1: the bonus; n + 1: the root)

Phi is concave and non-decreasing, C_v is fitted convex and non-decreasing, so theta is unimodal
and the first n where theta stops rising is the best budget for this round.
"""

from __future__ import annotations

import math

from specdiff.trees.cost_model import CostProfile
from specdiff.trees.ddtree import iter_best_first, top_k_marginals, tree_from_pops
from specdiff.types import DraftProposal, DraftTree


def build_caddtree(root: int, proposal: DraftProposal, profile: CostProfile, context: int, max_depth: int,
                   max_nodes: int = 1024) -> DraftTree:
    depth = min(max_depth, proposal.logits.shape[0])
    if depth <= 0:
        return DraftTree.chain(root, [])
    top_logp, top_ids = top_k_marginals(proposal, max_nodes, depth)
    nodes: list[tuple[int, int, float]] = []
    phi = 0.0
    best = 1.0 / (profile.draft_ms + profile.verify(1, context))  # theta(0): the root alone
    for parent, rank, score in iter_best_first(top_logp):
        if len(nodes) >= max_nodes:
            break
        gain = math.exp(score)
        theta = (1.0 + phi + gain) / (profile.draft_ms + profile.verify(len(nodes) + 2, context))
        if theta <= best:
            break
        best, phi = theta, phi + gain
        nodes.append((parent, rank, score))
    return tree_from_pops(root, nodes, top_ids)
