"""DDTree with prompt lookup: one node budget shared by the drafter's most probable prefixes
(DDTree) and the chain that followed the context's last n-gram earlier in the context (`pld`).

Every candidate node v is scored by an estimate of P(v is accepted), as DDTree scores its own:
  - DDTree's nodes: their prefix probability under the drafter's marginals;
  - the lookup chain's node at depth j: a_1 ... a_j, where a_i is the rate at which the lookup's
    i-th token was the target's own in this decode's rounds so far, given the ones before it
    were (counted against the tokens committed since; a uniform prior, so 1/2 before any round);
a node both propose keeps the higher score. Scores never rise along a path, so the `budget` best
nodes are a prefix-closed tree, the one with the largest expected accepted length under these
estimates. A lookup that finds nothing leaves DDTree's tree as it is.

Code and other text that repeats itself (a name, a call, a line seen before) is where the
lookup's chain runs long and the drafter's marginals, one position at a time, fall off.
The tree is built on the host: the chain is looked up in the committed tokens there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from specdiff.config import PLDOptions
from specdiff.errors import SpecdiffError
from specdiff.methods.base import DecodeState, Drafter
from specdiff.methods.ddtree import DDTreeProposer, ScoredPrefixes, scored_prefixes
from specdiff.methods.pld import NgramIndex
from specdiff.native import Native
from specdiff.types import DraftProposal, DraftTree, TargetOutput


class LookupRates:
    """Per depth i: rounds whose lookup drafted an i-th token with the ones before it right
    (`tries`), and those in which it was right too (`hits`)."""

    def __init__(self) -> None:
        self.hits: list[int] = []
        self.tries: list[int] = []

    def record(self, draft: list[int], committed: list[int]) -> None:
        """Count `draft` against the tokens committed after the root it was drafted from. A token
        past the committed ones is not known yet, so it is not counted."""
        for i, token in enumerate(draft[: len(committed)]):
            if i == len(self.tries):
                self.hits.append(0)
                self.tries.append(0)
            self.tries[i] += 1
            if token != committed[i]:
                return
            self.hits[i] += 1

    def log_scores(self, n: int) -> list[float]:
        """log(a_1 ... a_j) for j = 1..n, each rate (hits + 1) / (tries + 2)."""
        out, total = [], 0.0
        for i in range(n):
            h, t = (self.hits[i], self.tries[i]) if i < len(self.tries) else (0, 0)
            total += math.log((h + 1) / (t + 2))
            out.append(total)
        return out


def build_ddtree_pld(root: int, prefixes: ScoredPrefixes, chain: list[int], chain_logp: list[float],
                     budget: int) -> DraftTree:
    """The `budget` best nodes of DDTree's `prefixes` and the lookup `chain` (its nodes' log scores
    `chain_logp`, non-increasing), as one tree (module docstring).

    The chain's first s tokens that DDTree's tree holds already are kept (with the chain's nodes
    below them, they outscore their own descendants). Each further chain node takes the place of
    DDTree's worst other node while it scores higher: those come last in best-first order, and a
    node's descendants come after it, so what stays is prefix-closed. Kept nodes keep their order;
    the chain's new nodes follow, under the deepest shared one."""
    tokens, parents, depths, logp = prefixes
    shared, node = [], 0
    for token in chain:
        hit = np.flatnonzero((parents == node) & (tokens == token))
        if not hit.size:
            break
        node = int(hit[0]) + 1
        shared.append(node)
    s = len(shared)
    other = np.ones(len(tokens) + 1, dtype=bool)
    other[[0, *shared]] = False
    others = np.flatnonzero(other)  # node ids, best-first: logp non-increasing
    k = 0  # the chain's new nodes taken
    while s + k < len(chain):
        keep = budget - s - k - 1  # DDTree's other nodes left if the chain takes one more
        if keep < 0 or (keep < len(others) and logp[others[keep] - 1] >= chain_logp[s + k]):
            break
        k += 1
    kept = np.sort(np.concatenate([np.array(shared, dtype=np.int64), others[: budget - s - k]]))
    index = np.zeros(len(tokens) + 1, dtype=np.int64)
    index[kept] = np.arange(1, len(kept) + 1)
    m, below = len(kept), node if s else 0  # the chain's new nodes go under node `below` (0: the root)
    new = np.arange(k)
    out_tokens = np.concatenate([[root], tokens[kept - 1], chain[s : s + k]])
    out_parents = np.concatenate([[-1], index[parents[kept - 1]], np.where(new == 0, index[below], m + new)])
    out_depths = np.concatenate([[0], depths[kept - 1], (depths[below - 1] if below else 0) + 1 + new])
    return DraftTree(*(torch.from_numpy(a.astype(np.int64)) for a in (out_tokens, out_parents, out_depths)))


class DDTreePLDProposer(DDTreeProposer):
    """DDTree's prefixes, searched on the host, and the lookup chain in one budget. The lookup is an
    index of the committed tokens' n-grams, kept as they are committed; its acceptance rates are
    counted per decode."""

    name = "ddtree-pld"

    def __init__(self, drafter: Drafter, budget: int = 64, block_size: int | None = None,
                 options: PLDOptions | None = None, native: Native | None = None):
        super().__init__(drafter, budget, block_size, device_search=False, native=native)
        self.options = options or PLDOptions()
        self.index, self.rates = NgramIndex(self.options), LookupRates()
        self._last: tuple[int, list[int]] | None = None  # the last chain, and the slot of its first token

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None:
        super().begin(state, prefill, max_len)
        self.index, self.rates, self._last = NgramIndex(self.options), LookupRates(), None

    def build(self, state: DecodeState, proposal: DraftProposal, depth: int) -> DraftTree:
        if self._last is not None:
            slot, chain = self._last
            self.rates.record(chain, state.tokens[slot:])
        self.index.extend(state.tokens)
        chain = self.index.draft(min(depth, self.options.max_draft))
        self._last = (len(state.tokens), chain) if chain else None
        prefixes = scored_prefixes(proposal, self.budget, depth, self.native)
        return build_ddtree_pld(state.root, prefixes, chain, self.rates.log_scores(len(chain)), self.budget)


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> DDTreePLDProposer:
    if cfg.tree_search == "device":
        raise SpecdiffError("ddtree-pld builds its tree on the host (it looks the chain up in the committed "
                            "tokens there): use --tree-search host or auto")
    return DDTreePLDProposer(drafter, cfg.budget, cfg.block_size, cfg.pld, native)
