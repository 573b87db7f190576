"""Cost-aware DDTree: grow the best-first tree while expected tokens per unit of cost rises.

With delta(v) the product of drafter marginals along v's path, pops come out in non-increasing
delta, so after n pops the tree is the optimal n-node tree and Phi(n) = sum of their deltas is the
expected number of accepted draft tokens. The objective per round is

    theta(n) = (1 + Phi(n)) / (C_d + C_v(n + 1, context))          (+1: the bonus; n + 1: the root)

Phi is concave and non-decreasing, C_v is fitted convex and non-decreasing, so theta is unimodal
and the first n where theta stops rising is the best budget for this round.

On an engine that pads a tree to a size bucket (the graph engine: one CUDA graph per bucket) the
real cost is a step function: every tree up to a bucket's size costs that bucket. The profile
then lists the buckets, theta is compared at bucket sizes only (where it is unimodal again), and
the chosen tree fills its bucket: the nodes up to the boundary are free.

The cost of a round is the profile's plus `overhead_ms`, the per-round host work the profile does
not see, which the proposer measures while decoding (`cost_model.RoundOverhead`). Keeping the root
alone is priced as caddtree takes it, after fetching and searching the candidates
(`CostProfile.root_alone`), not as AR's step: in the H100 profiles the step rose by 0.3 ms from 1
to 2 nodes, mostly that fetch and the tree's host work, so AR's price made the root alone look
that much cheaper.
"""

from __future__ import annotations

import math

from specdiff.trees.cost_model import CostProfile
from specdiff.trees.ddtree import FIRST_K, iter_best_first, saturated, top_k_marginals, tree_from_pops
from specdiff.types import DraftProposal, DraftTree


def build_caddtree(root: int, proposal: DraftProposal, profile: CostProfile, context: int, max_depth: int,
                   max_nodes: int = 1024, overhead_ms: float = 0.0) -> DraftTree:
    depth = min(max_depth, proposal.logits.shape[0])
    if depth <= 0:
        return DraftTree.chain(root, [])
    # the cost curve at this context, once per round, as an array: _grow reads a few of its entries
    cost = profile.curve_array(context, max_nodes + 1) + (profile.draft_ms + overhead_ms)
    root_cost = profile.draft_ms + overhead_ms + profile.root_alone(context)
    # tree sizes (root included) theta is compared at: every size, or the engine's buckets
    sizes = [b for b in profile.buckets if 1 < b <= max_nodes + 1] if profile.buckets else range(2, max_nodes + 2)
    k = min(max_nodes, FIRST_K)
    while True:  # as in build_ddtree: widen the candidates only if the tree used them all
        top_logp, top_ids = top_k_marginals(proposal, k, depth)
        nodes = _grow(top_logp, cost, sizes, root_cost)
        if k >= min(max_nodes, proposal.logits.shape[-1]) or not saturated(nodes, k):
            return tree_from_pops(root, nodes, top_ids)
        k = min(2 * k, max_nodes)  # doubling: a jump to the cap (up to 511) would copy 511 x depth to the host


def _grow(top_logp, cost, sizes, root_cost: float) -> list[tuple[int, int, float]]:
    """Pop prefixes in best-first order and compare theta at each size in `sizes` (increasing,
    root included; cost[n - 1] is C_d + C_v(n)), stopping at the first size where it falls. The
    root alone (a round of cost `root_cost`) is weighed last: its step has no tree to walk, so the
    curve jumps from 1 to 2 nodes and theta is unimodal only from one draft node on.

    Pops come in non-increasing delta, so the nodes still to pop before the next size add at most
    delta of the last pop each: once even that cannot lift theta there above the best, the search
    stops without popping them (the same tree, less host work per round)."""
    nodes: list[tuple[int, int, float]] = []
    phi, best, best_n = 0.0, 0.0, 0
    bounds = iter(sizes)
    bound = next(bounds, None)
    bound_cost = float(cost[bound - 1]) if bound is not None else 0.0
    for parent, rank, score in iter_best_first(top_logp):
        if bound is None:
            break
        delta = math.exp(score)
        phi += delta
        nodes.append((parent, rank, score))
        n = len(nodes)
        if n + 1 == bound:
            theta = (1.0 + phi) / bound_cost
            if theta <= best:
                break
            best, best_n = theta, n
            bound = next(bounds, None)
            bound_cost = float(cost[bound - 1]) if bound is not None else 0.0
        elif best_n and (1.0 + phi + (bound - 1 - n) * delta) <= best * bound_cost:
            break
    else:  # the stream ran out inside a bucket: the whole stream costs that bucket
        if bound is not None and nodes and (1.0 + phi) / bound_cost > best:
            best, best_n = (1.0 + phi) / bound_cost, len(nodes)
    return nodes[:best_n] if best > 1.0 / root_cost else []
