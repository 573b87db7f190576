"""Prompt lookup decoding: find the latest earlier occurrence of the context's last n-gram (longest
n first) and propose the tokens that followed it, as a chain. No drafter model.

`lookup` is the plain scan; `NgramIndex` gives the same drafts from an index of every n-gram's
latest start, kept as tokens are committed, so a round's lookup does not grow with the context."""

from __future__ import annotations

from specdiff.config import PLDOptions
from specdiff.methods.ar import ARProposer
from specdiff.methods.base import DecodeState
from specdiff.types import DraftTree


def lookup(tokens: list[int], options: PLDOptions, limit: int) -> list[int]:
    """Up to `limit` tokens that followed the latest earlier occurrence of `tokens`' last n-gram,
    n from `ngram_max` down to `ngram_min`; [] where none occurred."""
    for n in range(min(options.ngram_max, len(tokens) - 1), options.ngram_min - 1, -1):
        tail = tokens[-n:]
        for s in range(len(tokens) - n - 1, -1, -1):  # latest match first, not the tail itself
            if tokens[s : s + n] == tail:
                return tokens[s + n : s + n + limit]
    return []


class NgramIndex:
    """`lookup` over a token list that only grows: every n-gram is entered with its start once the
    token after it is known, so the tail itself is never found and a later start replaces an
    earlier one."""

    def __init__(self, options: PLDOptions):
        self.options = options
        self.latest: dict[tuple[int, ...], int] = {}
        self.tokens: list[int] = []
        self.seen = 0  # tokens entered so far (the list grows in place)

    def extend(self, tokens: list[int]) -> None:
        """Enter the n-grams completed since the last call; `tokens` extends the list seen before."""
        lo, hi = self.options.ngram_min, self.options.ngram_max
        for i in range(max(self.seen, 1), len(tokens)):  # token i follows the n-grams ending at i - 1
            for n in range(lo, min(hi, i) + 1):
                self.latest[tuple(tokens[i - n : i])] = i - n
        self.tokens, self.seen = tokens, len(tokens)

    def draft(self, limit: int) -> list[int]:
        toks, o = self.tokens, self.options
        for n in range(min(o.ngram_max, len(toks) - 1), o.ngram_min - 1, -1):
            s = self.latest.get(tuple(toks[-n:]))
            if s is not None:
                return toks[s + n : s + n + limit]
        return []


class PLDProposer(ARProposer):
    name = "pld"
    chains_draws = False  # its next tree is a lookup in the tokens read, not the last draw alone

    def __init__(self, options: PLDOptions | None = None):
        self.options = options or PLDOptions()
        self.max_nodes = 1 + self.options.max_draft
        self.index = NgramIndex(self.options)

    def begin(self, state: DecodeState, prefill, max_len: int) -> None:
        self.index = NgramIndex(self.options)

    def propose(self, state: DecodeState) -> DraftTree:
        self.index.extend(state.tokens)
        return DraftTree.chain(state.root, self.index.draft(min(self.options.max_draft, state.max_depth)))


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> PLDProposer:
    return PLDProposer(cfg.pld)
