"""AR: plain autoregressive decoding through the speculative loop, the baseline every method is
compared with (a tree holding only its root: one token per target forward)."""

from __future__ import annotations

from specdiff.methods.base import DecodeState
from specdiff.types import DraftTree, TargetOutput, VerifyResult


class ARProposer:
    name = "ar"
    tap_layers: tuple[int, ...] = ()
    max_nodes = 1  # largest tree this proposer builds (root included)
    drafters: tuple = ()  # no drafter caches to follow the committed tokens
    # the next tree is the last draw alone, so the loop may launch it before reading that draw
    # (`DecodeConfig.overlap`); propose and update then go uncalled: they do nothing
    chains_draws = True

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None:
        pass

    def propose(self, state: DecodeState) -> DraftTree:
        return DraftTree.chain(state.root, [])

    def update(self, result: VerifyResult, out: TargetOutput) -> None:
        pass


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> ARProposer:
    return ARProposer()
