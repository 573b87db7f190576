"""DFlash: the block-diffusion drafter drafts a block of slots after the root in one pass, and its
argmax at every slot is the chain the target verifies.

`DFlashProposer` is also what every drafter method builds on: it keeps the drafter's context
cache following the committed tokens (`begin`, `update`) and asks it for one `DraftProposal` a
round; a method is the tree it builds from that proposal (`build`).
"""

from __future__ import annotations

from specdiff.methods.base import DecodeState, Drafter
from specdiff.ops import device_index
from specdiff.types import DraftProposal, DraftTree, TargetOutput, VerifyResult
from specdiff.verify.walk import DevicePath


def build_chain(root: int, proposal: DraftProposal, max_depth: int) -> DraftTree:
    """Argmax at each slot, up to `max_depth` draft tokens (the proposal's temperature is 1). The
    chain stays on the drafter's device: its shape is known without its tokens, so the round
    reads nothing back before the target forward."""
    depth = min(max_depth, proposal.logits.shape[0])
    if depth <= 0:
        return DraftTree.chain(root, [])
    return DraftTree.device_chain(root, proposal.logits[:depth].argmax(dim=-1))


class DFlashProposer:
    name = "dflash"
    # a round's draft may be queued from the last round's path on the device, before its read
    # (`draft_ahead`): the draft depends on that path alone. Methods that decide a draft from
    # what they read (caddtree's sizes, D²SD's re-drafts) turn this off
    drafts_on_device = True

    def __init__(self, drafter: Drafter, block_size: int | None = None):
        self.drafter = drafter
        self.num_slots = (block_size or drafter.block_size) - 1
        self.tap_layers = tuple(drafter.spec.target_layer_ids)
        self.max_nodes = 1 + self.num_slots
        self._pending = None  # [n, taps * H]: target features of tokens committed since the last draft
        self._queued: tuple[DraftProposal, int] | None = None  # a draft queued ahead, and its depth

    @property
    def drafters(self) -> tuple[Drafter, ...]:
        """Every drafter whose context cache follows the committed tokens."""
        return (self.drafter,)

    @property
    def drafts_ahead(self) -> bool:
        """Whether `draft_ahead` can run: a method that allows it, and a drafter that can queue a
        draft from device inputs (the graph engine's)."""
        return self.drafts_on_device and getattr(self.drafter, "drafts_ahead", False)

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None:
        self._queued = None  # a draft queued past the last decode's end is dropped
        for d in self.drafters:
            d.reset(max_len)
        # the drafters take in the prompt's features now: prompt work, as the target's prefill is,
        # not a cost of the first round
        self._pending = prefill.features
        self.catch_up()

    def catch_up(self) -> None:
        """Fuse the features of the tokens committed since the last draft into every drafter."""
        if self._pending is not None:
            for d in self.drafters:
                d.extend_context(self._pending)
            self._pending = None

    def propose(self, state: DecodeState) -> DraftTree:
        depth = min(self.num_slots, state.max_depth)
        if self._queued is not None:  # drafted ahead, from the path `took` has since confirmed
            proposal, queued_depth = self._queued
            self._queued = None
            if queued_depth != depth:
                raise ValueError(f"a draft queued {queued_depth} slots deep for a round of {depth}")
            return self.build(state, proposal, depth)
        self.catch_up()
        if depth <= 0:
            return DraftTree.chain(state.root, [])
        return self.build(state, self.drafter.propose(state.root, depth), depth)

    def draft_ahead(self, path: DevicePath, out: TargetOutput) -> None:
        """Queues the next round's draft, `num_slots` deep, from this round's path on the device
        (`update`'s and `propose`'s work with nothing read); `propose` builds its tree once the
        host has the path (`took`)."""
        self._queued = (self.drafter.draft_ahead(out.features, path.nodes, path.count, path.bonus, self.num_slots),
                        self.num_slots)

    def took(self, result: VerifyResult) -> None:
        """`update` for a round whose path `draft_ahead` already fused into the drafter."""
        self.drafter.took(len(result.accepted))

    def build(self, state: DecodeState, proposal: DraftProposal, depth: int) -> DraftTree:
        return build_chain(state.root, proposal, depth)

    def update(self, result: VerifyResult, out: TargetOutput) -> None:
        # the accepted path (root first) becomes drafter context at its committed positions
        idx, k = result.accepted, len(result.accepted)
        if idx[-1] == k - 1:  # a prefix of the tree (every chain): a view, nothing copied
            self._pending = out.features[:k]
        else:
            self._pending = out.features[device_index(idx, out.features.device)]


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> DFlashProposer:
    return DFlashProposer(drafter, cfg.block_size)
