"""Prompt lookup decoding: find the latest earlier occurrence of the context's last n-gram (longest
n first) and propose the tokens that followed it, as a chain. No drafter model."""

from __future__ import annotations

from specdiff.config import PLDOptions
from specdiff.methods.ar import ARProposer
from specdiff.methods.base import DecodeState
from specdiff.types import DraftTree


class PLDProposer(ARProposer):
    name = "pld"
    chains_draws = False  # its next tree is a lookup in the tokens read, not the last draw alone

    def __init__(self, options: PLDOptions | None = None):
        self.options = options or PLDOptions()
        self.max_nodes = 1 + self.options.max_draft

    def propose(self, state: DecodeState) -> DraftTree:
        o = self.options
        toks, limit = state.tokens, min(o.max_draft, state.max_depth)
        for n in range(min(o.ngram_max, len(toks) - 1), o.ngram_min - 1, -1):
            tail = toks[-n:]
            for s in range(len(toks) - n - 1, -1, -1):  # latest match first, not the tail itself
                if toks[s : s + n] == tail:
                    draft = toks[s + n : s + n + limit]
                    if draft:
                        return DraftTree.chain(state.root, draft)
        return DraftTree.chain(state.root, [])


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> PLDProposer:
    return PLDProposer(cfg.pld)
