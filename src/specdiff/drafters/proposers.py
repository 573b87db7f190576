"""The proposers of the engine: AR (root only), prompt lookup (chain), DFlash (chain), DDTree and
D²SD (DFlash chain + VP branches, as one trie or inside DDTree's budget)."""

from __future__ import annotations

import time

from specdiff import native
from specdiff.config import DecodeConfig
from specdiff.drafters.base import DecodeState, Proposer
from specdiff.drafters.dflash import DFlashDrafter
from specdiff.trees import build_chain, build_ddtree
from specdiff.trees.caddtree import CANDIDATES, DEVICE_WIDTH, build_caddtree
from specdiff.trees.d2sd import (
    branch_rows, build_d2sd_hybrid, build_d2sd_tree, fill_branches, select_branches, slot_confidences,
)
from specdiff.trees.cost_model import CostProfile, DecodeRate, RoundOverhead
from specdiff.types import DraftProposal, DraftTree, TargetOutput, VerifyResult


class ARProposer:
    """Plain autoregressive decoding through the same loop: the tree is the root alone."""

    name = "ar"
    tap_layers: tuple[int, ...] = ()
    max_nodes = 1  # largest tree this proposer builds (root included)
    drafters: tuple = ()  # no drafter caches to follow the committed tokens

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None:
        pass

    def propose(self, state: DecodeState) -> DraftTree:
        return DraftTree.chain(state.root, [])

    def update(self, result: VerifyResult, out: TargetOutput) -> None:
        pass


class PLDProposer(ARProposer):
    """Prompt lookup: find the latest earlier occurrence of the context's last n-gram (longest n
    first) and propose the tokens that followed it."""

    name = "pld"

    def __init__(self, ngram_max: int = 4, ngram_min: int = 1, max_draft: int = 15):
        self.ngram_max, self.ngram_min, self.max_draft = ngram_max, ngram_min, max_draft
        self.max_nodes = 1 + max_draft

    def propose(self, state: DecodeState) -> DraftTree:
        toks, limit = state.tokens, min(self.max_draft, state.max_depth)
        for n in range(min(self.ngram_max, len(toks) - 1), self.ngram_min - 1, -1):
            tail = toks[-n:]
            for s in range(len(toks) - n - 1, -1, -1):  # latest match first, not the tail itself
                if toks[s : s + n] == tail:
                    draft = toks[s + n : s + n + limit]
                    if draft:
                        return DraftTree.chain(state.root, draft)
        return DraftTree.chain(state.root, [])


class DFlashProposer:
    """DFlash drafter + a tree builder: "chain" (DFlash), "ddtree" (B most probable prefixes) or
    "caddtree" (as many prefixes as pay for their measured cost, from `profile`)."""

    def __init__(self, drafter: DFlashDrafter, tree: str = "chain", budget: int = 64, block_size: int | None = None,
                 profile: CostProfile | None = None, measure_overhead: bool | None = None, device_search: bool = False,
                 horizon: str = "round"):
        self.drafter, self.tree, self.budget, self.profile = drafter, tree, budget, profile
        # caddtree: the per-round cost the profile misses, measured from one propose call to the
        # next (one whole round: draft, target forward, verify, commit, update; each ends in a sync).
        # A whole-round profile holds it already, and timing it costs a round 10 us (H200 host)
        if measure_overhead is None:
            measure_overhead = profile is not None and profile.measure == "steps"
        self.overhead = RoundOverhead() if tree == "caddtree" and measure_overhead else None
        # caddtree, decode horizon: the rate the decode expects to run at (kept across decodes)
        self.rate = DecodeRate() if tree == "caddtree" and horizon == "decode" else None
        self._round: tuple[float, float] | None = None  # (start of the last round, its predicted ms)
        self.name = {"chain": "dflash"}.get(tree, tree)
        self.num_slots = (block_size or drafter.block_size) - 1
        self.tap_layers = tuple(drafter.spec.target_layer_ids)
        self.max_nodes = 1 + (self.num_slots if tree == "chain" else budget)
        self._pending = None  # target features of tokens committed since the last draft
        # device_search: trees from the top prefixes the drafter's graph searched, where it can
        want = {"ddtree": budget, "caddtree": min(budget, DEVICE_WIDTH)}.get(tree, 0) if device_search else 0
        enable = getattr(drafter, "enable_prefix_search", None)
        self.prefix_width = enable(want) if want and enable is not None else 0
        # otherwise, for the host's C search: the candidates it needs, taken in the drafter's graph
        k = {"ddtree": budget, "caddtree": min(budget, CANDIDATES)}.get(tree, 0) if native.available() else 0
        take = getattr(drafter, "enable_candidates", None)
        self.candidates_k = take(k) if k and not self.prefix_width and take is not None else 0

    @property
    def drafters(self) -> tuple[DFlashDrafter, ...]:
        """Every drafter whose context cache follows the committed tokens."""
        return (self.drafter,)

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None:
        for d in self.drafters:
            d.reset(max_len)
        self._pending = prefill.features
        self._round = None  # the gap since the last decode's final round is not a round

    def _catch_up(self) -> None:
        if self._pending is not None:
            for d in self.drafters:
                d.extend_context(self._pending)
            self._pending = None

    def propose(self, state: DecodeState) -> DraftTree:
        if self.overhead is None:
            return self._propose(state)
        now = time.perf_counter()
        if self._round is not None:
            self.overhead.observe(1000 * (now - self._round[0]), self._round[1])
        tree = self._propose(state)
        self._round = (now, self.profile.draft_ms + self.profile.tree_step(tree.num_nodes, state.start))
        return tree

    def _propose(self, state: DecodeState) -> DraftTree:
        self._catch_up()
        depth = min(self.num_slots, state.max_depth)
        if depth <= 0:
            return DraftTree.chain(state.root, [])
        logits = self.drafter.draft(state.root, depth)
        prefixes = self.drafter.last_prefixes(depth) if self.prefix_width else None
        candidates = self.drafter.last_candidates(depth) if self.candidates_k else None
        proposal = DraftProposal(logits, source=self.name, prefixes=prefixes, candidates=candidates)
        if self.tree == "chain":
            return build_chain(state.root, proposal, depth)
        if self.tree == "caddtree":
            overhead = self.overhead.ms if self.overhead is not None else 0.0
            if self.rate is None:
                return build_caddtree(state.root, proposal, self.profile, state.start, depth, self.budget, overhead)
            tree = build_caddtree(state.root, proposal, self.profile, state.start, depth, self.budget, overhead,
                                  self.rate.lam)
            cost = self.profile.draft_ms + overhead + self.profile.tree_step(tree.num_nodes, state.start)
            self.rate.observe(1.0 + tree.phi, cost)
            return tree
        return build_ddtree(state.root, proposal, self.budget, depth)

    def update(self, result: VerifyResult, out: TargetOutput) -> None:
        # the accepted path (root first) becomes drafter context at its committed positions
        idx = result.accepted
        self._pending = out.features[idx] if len(idx) != out.features.shape[0] else out.features


class D2SDProposer(DFlashProposer):
    """D²SD: the DFlash drafter's chain, then the VP drafter re-drafts the K most likely accepted
    prefixes in one batched pass (`trees/d2sd.py`). Both drafters tap the same target layers and
    keep their own context caches, fed the same committed features.

    hybrid=False ("d2sd"): the K+1 candidates merged into one trie (the paper's method);
    hybrid=True ("d2sd-hybrid"): the VP branches compete with DDTree's nodes for `budget` nodes."""

    def __init__(self, drafter: DFlashDrafter, vp_drafter: DFlashDrafter, branches: int = 4, hybrid: bool = False,
                 budget: int = 64, block_size: int | None = None):
        super().__init__(drafter, tree="d2sd-hybrid" if hybrid else "d2sd", budget=budget, block_size=block_size)
        self.vp_drafter, self.branches, self.hybrid = vp_drafter, branches, hybrid
        # worst case for the trie: K+1 rows that share nothing but the root
        self.max_nodes = 1 + (budget if hybrid else (branches + 1) * self.num_slots)

    @property
    def drafters(self) -> tuple[DFlashDrafter, ...]:
        return (self.drafter, self.vp_drafter)

    def _propose(self, state: DecodeState) -> DraftTree:
        self._catch_up()
        depth = min(self.num_slots, state.max_depth)
        if depth <= 0:
            return DraftTree.chain(state.root, [])
        logits = self.drafter.draft(state.root, depth)  # [L, V]  1. first draft (DFlash)
        chain = logits.argmax(dim=-1).tolist()
        selection = select_branches(slot_confidences(logits), self.branches)  # 2. top-K prefixes by r(i)
        rows = branch_rows(state.root, chain, selection, self.vp_drafter.spec.mask_token_id)
        vp_logits = self.vp_drafter.draft_rows(rows)  # [K, L, V]  3. second draft (VP)
        cands = fill_branches(state.root, chain, selection, vp_logits)
        if self.hybrid:
            return build_d2sd_hybrid(cands, DraftProposal(logits, source="dflash"), self.budget)
        return build_d2sd_tree(cands)


def make_proposer(cfg: DecodeConfig, drafter: DFlashDrafter | None = None, profile: CostProfile | None = None,
                  vp_drafter: DFlashDrafter | None = None) -> Proposer:
    """The proposer for `cfg.method` (dflash, ddtree, caddtree and d2sd* need a drafter; caddtree a
    profile; d2sd and d2sd-hybrid also the VP drafter)."""
    if cfg.method == "ar":
        return ARProposer()
    if cfg.method == "pld":
        return PLDProposer(cfg.pld_ngram_max, cfg.pld_ngram_min, cfg.pld_max_draft)
    if drafter is None:
        raise ValueError(f"method {cfg.method} needs a DFlash drafter")
    if cfg.method in ("d2sd", "d2sd-hybrid"):
        if vp_drafter is None:
            raise ValueError(f"method {cfg.method} needs a VP drafter")
        return D2SDProposer(drafter, vp_drafter, cfg.branches, cfg.method == "d2sd-hybrid", cfg.budget, cfg.block_size)
    if cfg.method == "caddtree":
        # the tree never outgrows what the profile measured: beyond it the cost is a guess, and the
        # cap sizes the caches and the graphs prepared
        cap = cfg.caddtree_max_nodes if profile is None else min(cfg.caddtree_max_nodes, max(profile.nodes) - 1)
        return DFlashProposer(drafter, "caddtree", cap, cfg.block_size, profile, cfg.caddtree_measure_overhead,
                              device_search=cfg.tree_search == "device", horizon=cfg.caddtree_horizon)
    tree = "chain" if cfg.method == "dflash" else "ddtree"
    return DFlashProposer(drafter, tree=tree, budget=cfg.budget, block_size=cfg.block_size,
                          device_search=cfg.tree_search == "device")
