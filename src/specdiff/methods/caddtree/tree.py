"""Cost-aware DDTree's tree: grow the best-first tree while expected tokens per unit of cost rises.

With delta(v) the product of drafter marginals along v's path, pops come out in non-increasing
delta, so after n pops the tree is the optimal n-node tree and Phi(n) = sum of their deltas is the
expected number of accepted draft tokens. The objective per round is

    theta(n) = (1 + Phi(n)) / (C_d + C_v(n + 1, context))          (+1: the bonus; n + 1: the root)

Phi is concave and non-decreasing, C_v is fitted convex and non-decreasing, so theta is unimodal
and the first n where theta stops rising is the best budget for this round.

The decode horizon (`lam` > 0, CaDDTreeOptions.horizon = "decode") maximises instead the
round's gain 1 + Phi(n) - lam * C(n) at the rate lam the decode runs at (cost_model.DecodeRate),
which is what raises the decode's own sum (1 + Phi) / sum C: a node pays when its delta beats
lam times its marginal cost, the same bar in every round. The gain is concave too. Measured, it
does not beat theta (docs/methods/caddtree.md), so theta is the default.

On an engine that pads a tree to a size bucket (the graph engine: one CUDA graph per bucket) the
real cost is a step function: every tree up to a bucket's size costs that bucket. The profile
then lists the buckets, theta is compared at bucket sizes only (where it is unimodal again), and
the chosen tree fills its bucket: the nodes up to the boundary cost only their host work.

The cost of a round is the profile's plus `overhead_ms`, the per-round host work the profile does
not see, which the proposer measures while decoding (`cost_model.RoundOverhead`) when the profile
timed the steps apart (a whole-round profile holds it already). Keeping the root alone is priced
as caddtree takes it, after fetching and searching the candidates (`CostProfile.root_alone`), not
as AR's step.

Host time is round time on a GPU, where the forward is launch-bound. The search and the decision
run in C (`native.c`) over each depth's top CANDIDATES tokens, which the drafter's graph took
(scripts/round_anatomy.py times what they add to a round).
"""

from __future__ import annotations

import math

import numpy as np

from specdiff.methods.caddtree.cost_model import CostProfile
from specdiff.methods.ddtree import Pop, candidates, iter_best_first, top_k_marginals, tree_from_pops
from specdiff.native import Native, StepCosts
from specdiff.types import DraftProposal, DraftTree

# candidates per depth fetched first. caddtree pops past the size it keeps, to the next compared
# size, so it needs more than DDTree at a like budget. Replaying the drafter's marginals from 6
# T=1 file prompts against an H100 profile: with 32, 35% of the rounds fetched again (another
# top-k and sync, and the search redone); with 48, 13%; with 64, 1%.
FIRST_K = 64
# The C search takes CANDIDATES per depth, from the drafter's graph, and searches the trees made of
# them: a depth's 129th token (delta below 1/129 of its parent's) never enters a tree. Fetching the
# rest when a pop reaches a depth's last candidate (an eager top-k and a sync, then the search
# again) made caddtree's rounds at the 192-320 node buckets cost 0.1-0.3 ms more than DDTree's
# there on an H200; the graph's top-k costs 67 us up to k = 128 and 80 us
# past it.
CANDIDATES = 128
# The device search's width (--tree-search device): sizes past it are compared, where the delta
# bound cannot rule them out, by a search on the host (`_choose` returns None)
DEVICE_WIDTH = 96


def build_caddtree(root: int, proposal: DraftProposal, profile: CostProfile, context: int, max_depth: int,
                   max_nodes: int = 1024, overhead_ms: float = 0.0, lam: float = 0.0,
                   native: Native | None = None) -> DraftTree:
    """The tree of the size whose value peaks: theta (lam = 0) or its gain to a decode running at
    `lam` expected tokens per ms (module docstring), searched in C by `native` (None: `_grow`, the
    same tree). The tree carries its Phi."""
    depth = min(max_depth, proposal.logits.shape[0])
    if depth <= 0:
        return DraftTree.chain(root, [], phi=0.0)
    # tree sizes (root included) theta is compared at, C_v at each and the root-alone step
    costs = _step_costs(profile, context, max_nodes)
    sizes, steps, root_step = costs.sizes, costs.steps, costs.root_step
    fixed = profile.draft_ms + overhead_ms  # a round costs fixed + its step
    if proposal.prefixes is not None and proposal.prefixes.depth == depth:
        p = proposal.prefixes
        n = _choose(p.phi, p.logp, p.searched, sizes, steps, fixed, root_step, lam)
        if n is not None:
            return proposal.prefixes.tree(root, n)
    if native is not None and sizes:  # `_grow` in C over each depth's top CANDIDATES tokens
        top_logp, top_ids = candidates(proposal, min(max_nodes, CANDIDATES), depth)
        prefixes, n = native.caddtree_search(top_logp, top_ids, True, costs, fixed, lam)
        return prefixes.tree(root, n)
    size_cost, root_cost = [fixed + c for c in steps], fixed + root_step
    width = min(max_nodes, CANDIDATES)  # the tokens per depth the C search sees: the same trees
    k = min(width, FIRST_K)
    while True:  # as in build_ddtree: widen the candidates only if the decision needs more of them
        top_logp, top_ids = top_k_marginals(proposal, k, depth)
        complete = k >= min(width, proposal.logits.shape[-1])
        nodes = _grow(top_logp, sizes, size_cost, root_cost, last_rank=None if complete else k - 1, lam=lam)
        if nodes is not None:
            return tree_from_pops(root, nodes, top_ids)
        k = min(2 * k, width)


def next_size(scores: np.ndarray, profile: CostProfile, context: int, max_nodes: int, overhead_ms: float = 0.0,
              lam: float = 0.0) -> int:
    """The draft nodes of the next round's tree, decided from this round's device search.

    scores: [2, W] (`VerifyResult.scores`: log-prob and Phi of the W prefixes searched). A tree
    left on the device is not read before the target forward, whose CUDA graph is chosen by its
    size, so the size a round's own marginals call for is known only at its walk: the next round
    takes it. Replaying the bundled pair's rounds against its H100 profile (realised acceptance,
    scripts/caddtree_replay.py), that choice gave 0.5-0.9% fewer tokens per ms than the round's
    own, and 2.3-3.1% more than the best fixed budget, on both prompt sets at T=0 and T=1.
    The size is at most W (past it, the widest size searched) and at least one node: a root
    alone would leave the next round no scores to decide from."""
    logp, phi = scores
    possible = int(np.isfinite(logp).sum())
    if possible == 0:
        return 1
    costs = _step_costs(profile, context, max_nodes)
    n = _choose(phi[:possible], logp[:possible], scores.shape[1], costs.sizes, costs.steps,
                profile.draft_ms + overhead_ms, costs.root_step, lam)
    if n is None:  # a size past the search might pay more: the widest size searched
        n = max((s - 1 for s in costs.sizes if s - 1 <= possible), default=possible)
    return max(n, 1)


CONTEXT_STEP = 8  # contexts this close share a round's costs (C_v's slope in context is tiny)


def _step_costs(profile: CostProfile, context: int, max_nodes: int) -> StepCosts:
    """The sizes theta is compared at for a round at `context` (every size, or the engine's
    buckets; root included), C_v at each and the root-alone step. Memoised on the profile per cap
    and context step: every round asks, and a round's host time is round time on a GPU."""

    def make() -> StepCosts:
        sizes = tuple(b for b in profile.buckets if 1 < b <= max_nodes + 1) if profile.buckets else \
            tuple(range(2, max_nodes + 2))
        at = context - context % CONTEXT_STEP
        return StepCosts(sizes, profile.costs_at(at, sizes), profile.root_alone(at))

    return profile.memo(("step_costs", max_nodes, context // CONTEXT_STEP), make)


def _value(phi: float, cost: float, lam: float) -> float:
    """A round's worth: theta = (1 + phi) / cost (lam = 0), or 1 + phi - lam * cost (`_grow`)."""
    return 1.0 + phi - lam * cost if lam > 0 else (1.0 + phi) / cost


def _choose(phi, logp, searched: int, sizes, steps, fixed: float, root_step: float,
            lam: float = 0.0) -> int | None:
    """`_grow`'s decision read off the top prefixes (C search or the device's): phi, logp [W]
    (`TopPrefixes.phi`, `.logp`: the W possible ones of `searched`), so Phi at each compared size
    is one lookup. A round of size sizes[i] costs fixed + steps[i]. None when it needs sizes past
    the prefixes searched that the delta bound cannot rule out (the caller then searches wider)."""
    width = len(phi)
    best, best_n = -math.inf, 0
    for size, step in zip(sizes, steps):
        n, cost = size - 1, fixed + step
        if n > width and width < searched:  # every possible prefix is listed: the whole stream
            if width and _value(phi[-1], cost, lam) > best:
                best, best_n = _value(phi[-1], cost, lam), width
            break
        if n > searched:  # past the search: each node still to come adds at most the last delta
            if _value(phi[-1] + (n - width) * math.exp(logp[-1]), cost, lam) <= best:
                break
            return None
        value = _value(phi[n - 1], cost, lam)
        if value <= best:
            break
        best, best_n = value, n
    return best_n if best_n and best > _value(0.0, fixed + root_step, lam) else 0


def _grow(top_logp, sizes, size_cost, root_cost: float, last_rank: int | None = None,
          lam: float = 0.0) -> list[Pop] | None:
    """Pop prefixes in best-first order and compare the value of each size in `sizes` (increasing,
    root included; a round of size sizes[i] costs size_cost[i]), stopping at the first size where
    it falls. The value is theta = (1 + phi) / cost with lam = 0, or 1 + phi - lam * cost, the
    round's gain to a decode running at lam tokens per ms. The root alone (a round of cost
    `root_cost`) is weighed last: its step has no tree to walk, so the curve jumps from 1 to 2
    nodes and the value is unimodal only from one draft node on.

    Pops come in non-increasing delta, so the nodes still to pop before the next size add at most
    delta of the last pop each: once even that cannot lift theta there above the best, the search
    stops without popping them (the same tree, less host work per round).

    `last_rank`: the rank of a depth's last fetched candidate. The stream is exact up to the first
    pop of that rank and not past it (the next sibling was never fetched), but every node past it
    still has at most its delta, so the bound above can still settle the decision there. When it
    cannot, None: the caller fetches more candidates."""
    nodes: list[Pop] = []
    if not sizes:
        return nodes
    append, exp = nodes.append, math.exp  # the loop below runs per pop: host time is round time
    phi, best, best_n, n = 0.0, 0.0, 0, 0
    i, last = 0, len(sizes)
    # per pop, value(size) > best  <=>  phi > need (no division)
    bound, need = sizes[0] - 1, -math.inf
    for node in iter_best_first(top_logp):
        append(node)
        n += 1
        delta = exp(node[2])
        phi += delta
        if n == bound:
            if phi <= need:
                break
            best, best_n = _value(phi, size_cost[i], lam), n
            i += 1
            if i == last:
                break  # every size compared
            bound = sizes[i] - 1
            need = best + lam * size_cost[i] - 1.0 if lam > 0 else best * size_cost[i] - 1.0
        if best_n and phi + (bound - n) * delta <= need:
            break  # no size up to and including the next can beat the best: theta has peaked
        if node[1] == last_rank:
            return None  # the decision needs nodes past the fetched candidates
    else:  # the stream ran out inside a bucket: the whole stream costs that bucket
        if n and (not best_n or _value(phi, size_cost[i], lam) > best):
            best, best_n = _value(phi, size_cost[i], lam), n
    return nodes[:best_n] if best_n and best > _value(0.0, root_cost, lam) else []
