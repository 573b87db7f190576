"""The caddtree proposer: DDTree's drafter round, with the tree sized by `tree.build_caddtree`
against the measured cost profile, and the per-round costs the profile misses learnt online.

Searched on the device (`--tree-search device`), the tree stays there as DDTree's does, and its
size is the one the previous round's search called for (`tree.next_size`, from the scores the
walk reads with its draws): one read of the device a round, as DDTree's."""

from __future__ import annotations

import time

from specdiff.config import CaDDTreeOptions
from specdiff.methods.base import DecodeState, Drafter
from specdiff.methods.caddtree.cost_model import CostProfile, DecodeRate, RoundOverhead
from specdiff.methods.caddtree.tree import CANDIDATES, DEVICE_WIDTH, build_caddtree, next_size
from specdiff.methods.ddtree import DDTreeProposer
from specdiff.native import Native
from specdiff.types import DraftProposal, DraftTree, TargetOutput, VerifyResult


class CaDDTreeProposer(DDTreeProposer):
    name = "caddtree"
    drafts_on_device = False  # its next draft depends on what it reads of this round

    def __init__(self, drafter: Drafter, profile: CostProfile, options: CaDDTreeOptions | None = None,
                 block_size: int | None = None, device_search: bool = False, native: Native | None = None):
        options = options or CaDDTreeOptions()
        # the tree never outgrows what the profile measured: beyond it the cost is a guess, and the
        # cap sizes the caches and the graphs prepared
        cap = min(options.max_nodes, max(profile.nodes) - 1)
        super().__init__(drafter, cap, block_size, device_search, native)
        self.profile = profile
        # the per-round cost the profile misses, measured from one propose call to the next (one
        # whole round: draft, target forward, verify, commit, update; each ends in a sync). A
        # whole-round profile holds it already, and timing it costs a round host time
        measure = options.measure_overhead
        if measure is None:
            measure = profile.measure == "steps"
        self.overhead = RoundOverhead() if measure else None
        # the decode horizon: the rate the decode expects to run at (kept across decodes)
        self.rate = DecodeRate() if options.horizon == "decode" else None
        self._round: tuple[float, float] | None = None  # (start of the last round, its predicted ms)
        # a resident tree's draft nodes, decided at the last walk (None: from the round's own scores)
        self._next: int | None = None
        self._context = self._used = 0  # the root position and draft nodes of the round in flight

    def search_sizes(self, budget: int) -> tuple[int, int]:
        return min(budget, DEVICE_WIDTH), min(budget, CANDIDATES)

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None:
        super().begin(state, prefill, max_len)
        self._round = None  # the gap since the last decode's final round is not a round
        self._next = None  # a new sequence: its first round reads its own scores

    def propose(self, state: DecodeState) -> DraftTree:
        if self.overhead is None:
            return super().propose(state)
        now = time.perf_counter()
        if self._round is not None:
            self.overhead.observe(1000 * (now - self._round[0]), self._round[1])
        tree = super().propose(state)
        self._round = (now, self.profile.draft_ms + self.profile.tree_step(tree.num_nodes, state.start))
        return tree

    @property
    def _overhead_ms(self) -> float:
        return self.overhead.ms if self.overhead is not None else 0.0

    def _next_size(self, scores, context: int) -> int:
        lam = self.rate.lam if self.rate is not None else 0.0
        return next_size(scores, self.profile, context, self.budget, self._overhead_ms, lam)

    def build(self, state: DecodeState, proposal: DraftProposal, depth: int) -> DraftTree:
        resident = proposal.device_prefixes
        if resident is not None and depth == resident.depth_bound:
            if self._next is None:  # a sequence's first round: its own scores, one more read
                self._next = self._next_size(resident.scores.cpu().double().numpy(), state.start)
            self._context, self._used = state.start, min(self._next, resident.num_nodes - 1)
            return resident.first(self._used + 1, scores=True)
        overhead = self._overhead_ms
        if self.rate is None:
            return build_caddtree(state.root, proposal, self.profile, state.start, depth, self.budget, overhead,
                                  native=self.native)
        tree = build_caddtree(state.root, proposal, self.profile, state.start, depth, self.budget, overhead,
                              self.rate.lam, self.native)
        cost = self.profile.draft_ms + overhead + self.profile.tree_step(tree.num_nodes, state.start)
        self.rate.observe(1.0 + tree.phi, cost)
        return tree

    def update(self, result: VerifyResult, out: TargetOutput) -> None:
        super().update(result, out)
        if result.scores is None:
            return
        if self.rate is not None:  # the round's own expected tokens and predicted cost, as `build` observes
            cost = self.profile.draft_ms + self._overhead_ms + self.profile.tree_step(self._used + 1, self._context)
            self.rate.observe(1.0 + float(result.scores[1, self._used - 1]), cost)
        self._next = self._next_size(result.scores, self._context + len(result.accepted))
