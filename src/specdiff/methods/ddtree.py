"""DDTree: the B most probable prefixes under the DFlash drafter's factorised marginals, verified
as one tree.

Under q(x_1..x_d) = prod_k q_k(x_k), a prefix-closed tree's expected acceptance is the sum of its
nodes' prefix probabilities, so the best tree of B nodes is the set of B most probable prefixes.
A prefix is a tuple of per-depth ranks (r_1..r_d) into each depth's top-K list; its score is the
sum of the chosen log-probs. Best-first search pops prefixes in non-increasing score: from a popped
prefix it pushes its next sibling (r_d + 1) and its first child (append rank 0). Every prefix has
exactly one such predecessor with a score at least its own, so the first B pops are the top B.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Iterator, NamedTuple

import numpy as np
import torch

from specdiff.methods.base import DecodeState, Drafter
from specdiff.methods.dflash import DFlashProposer
from specdiff.ops import read_together
from specdiff.native import Native
from specdiff.types import DraftProposal, DraftTree


class Pop(NamedTuple):
    """One node of the best-first stream: the prefix that extends node `parent` by its depth's
    `rank`-th token, with log-probability `score`."""

    parent: int  # index among the nodes popped so far plus one (0 = the root)
    rank: int  # the token's rank in its depth's sorted candidates
    score: float  # the prefix's log-probability


def iter_best_first(logp: torch.Tensor) -> Iterator[Pop]:
    """Prefixes of per-depth top-K log-probs in non-increasing probability, lazily.

    logp: [L, K] float log-probs, each row sorted in decreasing order (row d is depth d+1).
    Yields (parent, rank, score) per popped node; parent indexes the nodes yielded so far plus
    one (0 = the root), so any prefix of the stream is a tree with parents before children.
    """
    depth_max, k = logp.shape
    if depth_max == 0 or k == 0:
        return
    neg = (-logp).tolist()  # per depth, minus the sorted log-probs: heap keys are minus scores
    # heap entries: (-score, tie, depth, rank, parent_node); tie keeps pops deterministic
    heap = [(neg[0][0], 0, 0, 0, 0)]
    push, replace, pop = heapq.heappush, heapq.heapreplace, heapq.heappop
    tie, node, last_rank, last_depth = 1, 0, k - 1, depth_max - 1
    while heap:
        key, _, d, r, parent = heap[0]
        node += 1  # this prefix's index in the tree (root = 0)
        yield Pop(parent, r, -key)
        row = neg[d]
        if r < last_rank:  # next sibling (same parent, next rank) takes the popped entry's place
            replace(heap, (key - row[r] + row[r + 1], tie, d, r + 1, parent))
            tie += 1
        else:
            pop(heap)
        if d < last_depth:  # first child: best token at the next depth
            push(heap, (key + neg[d + 1][0], tie, d + 1, 0, node))
            tie += 1


def best_first_prefixes(logp: torch.Tensor, budget: int) -> list[Pop]:
    """The first `budget` nodes of `iter_best_first`: the top-`budget` prefixes."""
    return list(itertools.islice(iter_best_first(logp), max(0, budget)))


def top_k_tensors(proposal: DraftProposal, k: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-depth top-k log-probs [D, k] (host float32, rows sorted) and token ids [D, k] (host int64)."""
    logp = torch.log_softmax(proposal.logits[:depth].float(), dim=-1)
    top_logp, top_ids = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    host = read_together(top_logp, top_ids)
    return host[0].float(), host[1].long()


def candidates(proposal: DraftProposal, k: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_tensors`, from the candidates the drafter's graph took when they cover k and depth."""
    c = proposal.candidates
    if c is not None and c[0].shape[0] == depth and c[0].shape[1] >= min(k, proposal.logits.shape[-1]):
        if c[0].shape[1] == k:
            return c
        return c[0][:, :k].contiguous(), c[1][:, :k].contiguous()
    return top_k_tensors(proposal, k, depth)


def top_k_marginals(proposal: DraftProposal, k: int, depth: int) -> tuple[torch.Tensor, list[list[int]]]:
    """`top_k_tensors` with the ids as lists, for the Python heap."""
    top_logp, top_ids = top_k_tensors(proposal, k, depth)
    return top_logp, top_ids.tolist()


def tree_from_pops(root: int, nodes: list[Pop], top_ids: list[list[int]]) -> DraftTree:
    tokens, parents, depths, phi = [root], [-1], [0], 0.0
    for parent, rank, score in nodes:
        phi += math.exp(score)
        d = depths[parent] + 1
        tokens.append(top_ids[d - 1][rank])
        parents.append(parent)
        depths.append(d)
    return DraftTree(
        torch.tensor(tokens, dtype=torch.long),
        torch.tensor(parents, dtype=torch.long),
        torch.tensor(depths, dtype=torch.long),
        phi=phi,
    )


FIRST_K = 32  # candidates per depth fetched first; almost every tree needs far fewer


def saturated(nodes: list[Pop], k: int) -> bool:
    """True when a popped prefix used the last of k candidates at its depth. Until that happens
    the stream over k candidates equals the stream over all of them (a rank-r node is pushed only
    by its popped rank-(r-1) sibling), so a tree with no such pop is exact."""
    return any(rank == k - 1 for _, rank, _ in nodes)


def build_ddtree(root: int, proposal: DraftProposal, budget: int, max_depth: int,
                 native: Native | None = None) -> DraftTree:
    """The `budget` most probable prefixes (plus the root) of the drafter's marginals, searched in
    C by `native` (None: the Python heap, the same tree).

    With the C search, `budget` candidates per depth in one fetch: a top-k costs about the same
    for any k here, a refetch costs another one and a sync. The Python heap fetches FIRST_K and
    refetches `budget` only if the tree used them all: its host copy of budget x depth candidates
    as lists would cost more than the search."""
    depth = min(max_depth, proposal.logits.shape[0])
    if depth <= 0 or budget <= 0:
        return DraftTree.chain(root, [])
    resident = proposal.device_prefixes
    if resident is not None and depth == resident.depth_bound and budget < resident.num_nodes:
        return resident.first(budget + 1)  # the root's token came from the drafter's block
    if proposal.prefixes is not None and proposal.prefixes.covers(budget, depth):
        return proposal.prefixes.tree(root, budget)
    if native is not None:  # the same pops, in C; with k = budget every pop is exact
        top_logp, top_ids = candidates(proposal, budget, depth)
        exact = native.top_prefixes(top_logp, top_ids, budget, complete=budget >= proposal.logits.shape[-1])
        return exact.tree(root, budget)
    return tree_from_pops(root, *heap_prefixes(proposal, budget, depth))


def heap_prefixes(proposal: DraftProposal, budget: int, depth: int) -> tuple[list[Pop], list[list[int]]]:
    """The Python heap's top `budget` pops and the candidate ids they index: FIRST_K candidates per
    depth, refetched at `budget` only if the tree used them all."""
    k = min(budget, FIRST_K)
    while True:
        top_logp, top_ids = top_k_marginals(proposal, k, depth)
        nodes = best_first_prefixes(top_logp, budget)
        if k >= min(budget, proposal.logits.shape[-1]) or not saturated(nodes, k):
            return nodes, top_ids
        k = budget


class ScoredPrefixes(NamedTuple):
    """A DDTree's nodes after the root in best-first order, as host arrays: node i + 1 of the tree
    is `tokens[i]` at `depths[i]`, under `parents[i]` (0 = the root), with prefix log-probability
    `logp[i]` (non-increasing)."""

    tokens: np.ndarray  # [n] int64
    parents: np.ndarray  # [n] int64
    depths: np.ndarray  # [n] int64
    logp: np.ndarray  # [n] float64


def scored_prefixes(proposal: DraftProposal, budget: int, depth: int, native: Native | None = None) -> ScoredPrefixes:
    """`build_ddtree`'s top `budget` prefixes with their log-probabilities, by the same search (the
    device's where it covers them, else C, else the Python heap)."""
    if proposal.prefixes is not None and proposal.prefixes.covers(budget, depth):
        found = proposal.prefixes
    elif native is not None:
        top_logp, top_ids = candidates(proposal, budget, depth)
        found = native.top_prefixes(top_logp, top_ids, budget, complete=budget >= proposal.logits.shape[-1])
    else:
        nodes, top_ids = heap_prefixes(proposal, budget, depth)
        tree = tree_from_pops(0, nodes, top_ids)
        return ScoredPrefixes(tree.tokens.numpy()[1:], tree.parents.numpy()[1:], tree.depths.numpy()[1:],
                              np.array([p.score for p in nodes], dtype=np.float64))
    n = min(budget, found.width)
    return ScoredPrefixes(*found.table[:, 1 : n + 1], found.logp[:n])


def best_nodes_tree(root: int, scores: dict[tuple[int, ...], float], budget: int) -> DraftTree:
    """The `budget` best-scoring nodes (token paths after the root, log scores) as one prefix-closed
    tree, parents first; a node is taken only with its missing ancestors, within the budget."""
    order = sorted(scores, key=lambda p: (-scores[p], len(p)))
    chosen: dict[tuple[int, ...], None] = {}  # insertion-ordered set: parents before children
    for path in order:
        if len(chosen) >= budget:
            break
        missing = [path[:d] for d in range(1, len(path) + 1) if path[:d] not in chosen]
        if len(chosen) + len(missing) <= budget:
            chosen.update(dict.fromkeys(missing))
    index = {(): 0}
    tokens, parents = [root], [-1]
    for path in chosen:
        index[path] = len(tokens)
        tokens.append(path[-1])
        parents.append(index[path[:-1]])
    return DraftTree.from_lists(tokens, parents)


class DDTreeProposer(DFlashProposer):
    """The DFlash drafter's proposal -> its `budget` most probable prefixes. Where the drafter can,
    its own graph searches them on the device (`tree_search` "device"), and the tree stays there:
    the target builds its inputs from it and the walk reads it with its draws, one read a round.
    Else the graph takes the top candidates the host's C search (`native`) reads (one copy
    instead of an eager top-k)."""

    name = "ddtree"

    def __init__(self, drafter: Drafter, budget: int = 64, block_size: int | None = None,
                 device_search: bool = False, native: Native | None = None):
        super().__init__(drafter, block_size)
        self.budget, self.native = budget, native
        self.max_nodes = 1 + budget
        width, k = self.search_sizes(budget)
        # what the drafter's steps hand over: the top `width` prefixes searched on the device, else
        # the top-`k` candidates per slot for the host's C search (0: none; the host takes its own)
        self.prefix_width = drafter.enable_prefix_search(width) if device_search else 0
        use_k = not self.prefix_width and native is not None
        self.candidates_k = drafter.enable_candidates(k) if use_k else 0

    def search_sizes(self, budget: int) -> tuple[int, int]:
        """(prefix width, candidates per slot) a tree of `budget` nodes needs from the drafter."""
        return budget, budget

    def build(self, state: DecodeState, proposal: DraftProposal, depth: int) -> DraftTree:
        return build_ddtree(state.root, proposal, self.budget, depth, self.native)


# `--tree-search auto`: the largest budget searched on the device. The kernel's sort grows with the
# width: against the host's C search a round measured 2-5% cheaper at 16 and 64 nodes and 3-5%
# dearer at 256 (Qwen3-8B and 1.7B shapes, H100; docs/results.md)
DEVICE_BUDGET = 64


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> DDTreeProposer:
    device = cfg.tree_search == "device" or (cfg.tree_search == "auto" and cfg.budget <= DEVICE_BUDGET)
    return DDTreeProposer(drafter, cfg.budget, cfg.block_size, device_search=device, native=native)
