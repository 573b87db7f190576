"""The proposer interface: `begin` once per sequence, then `propose` and `update` every round."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from specdiff.types import DraftTree, TargetOutput, VerifyResult


@dataclass
class DecodeState:
    """What a proposer may look at when drafting.

    `tokens` is the prompt plus everything emitted so far; its last entry is the root of the next
    tree, at absolute position `start` = len(tokens) - 1 (the target has processed slots < start).
    """

    tokens: list[int]
    max_depth: int  # draft tokens allowed this round (never beyond max_new_tokens)

    @property
    def start(self) -> int:
        return len(self.tokens) - 1

    @property
    def root(self) -> int:
        return self.tokens[-1]


class Proposer(Protocol):
    name: str
    tap_layers: tuple[int, ...]  # target layers whose hidden states `begin`/`update` need
    max_nodes: int  # the largest tree it builds, root included (sizes the caches and graphs)
    drafters: tuple  # the drafters whose caches follow the committed tokens (prepared with the target)

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None: ...

    def propose(self, state: DecodeState) -> DraftTree: ...

    def update(self, result: VerifyResult, out: TargetOutput) -> None: ...
