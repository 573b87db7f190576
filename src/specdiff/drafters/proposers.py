"""The proposers of the engine: AR (root only), prompt lookup (chain), DFlash (chain) and DDTree."""

from __future__ import annotations

from specdiff.config import DecodeConfig
from specdiff.drafters.base import DecodeState, Proposer
from specdiff.drafters.dflash import DFlashDrafter
from specdiff.trees import build_chain, build_ddtree
from specdiff.trees.caddtree import build_caddtree
from specdiff.trees.cost_model import CostProfile
from specdiff.types import DraftProposal, DraftTree, TargetOutput, VerifyResult


class ARProposer:
    """Plain autoregressive decoding through the same loop: the tree is the root alone."""

    name = "ar"
    tap_layers: tuple[int, ...] = ()
    max_nodes = 1  # largest tree this proposer builds (root included)

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
                 profile: CostProfile | None = None):
        self.drafter, self.tree, self.budget, self.profile = drafter, tree, budget, profile
        self.name = {"chain": "dflash"}.get(tree, tree)
        self.num_slots = (block_size or drafter.block_size) - 1
        self.tap_layers = tuple(drafter.spec.target_layer_ids)
        self.max_nodes = 1 + (self.num_slots if tree == "chain" else budget)
        self._pending = None  # target features of tokens committed since the last draft

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None:
        self.drafter.reset(max_len)
        self._pending = prefill.features

    def propose(self, state: DecodeState) -> DraftTree:
        if self._pending is not None:
            self.drafter.extend_context(self._pending)
            self._pending = None
        depth = min(self.num_slots, state.max_depth)
        if depth <= 0:
            return DraftTree.chain(state.root, [])
        proposal = DraftProposal(self.drafter.draft(state.root, depth), source=self.name)
        if self.tree == "chain":
            return build_chain(state.root, proposal, depth)
        if self.tree == "caddtree":
            return build_caddtree(state.root, proposal, self.profile, state.start, depth, self.budget)
        return build_ddtree(state.root, proposal, self.budget, depth)

    def update(self, result: VerifyResult, out: TargetOutput) -> None:
        # the accepted path (root first) becomes drafter context at its committed positions
        idx = result.accepted
        self._pending = out.features[idx] if len(idx) != out.features.shape[0] else out.features


def make_proposer(cfg: DecodeConfig, drafter: DFlashDrafter | None = None, profile: CostProfile | None = None) -> Proposer:
    """The proposer for `cfg.method` (dflash, ddtree and caddtree need a drafter; caddtree a profile)."""
    if cfg.method == "ar":
        return ARProposer()
    if cfg.method == "pld":
        return PLDProposer(cfg.pld_ngram_max, cfg.pld_ngram_min, cfg.pld_max_draft)
    if drafter is None:
        raise ValueError(f"method {cfg.method} needs a DFlash drafter")
    if cfg.method == "caddtree":
        return DFlashProposer(drafter, "caddtree", cfg.caddtree_max_nodes, cfg.block_size, profile)
    tree = "chain" if cfg.method == "dflash" else "ddtree"
    return DFlashProposer(drafter, tree=tree, budget=cfg.budget, block_size=cfg.block_size)
