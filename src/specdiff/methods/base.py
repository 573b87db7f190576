"""What every method shares: the decode state a proposer reads, the proposer interface (`begin`
once per sequence, then `propose` and `update` every round) and the drafter interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specdiff.types import DraftProposal, DraftTree, TargetOutput, VerifyResult


@dataclass
class DecodeState:
    """What a proposer may look at when drafting.

    `tokens` is the prompt plus everything emitted so far; its last entry is the root of the next
    tree, at absolute position `start` = len(tokens) - 1 (the target has processed slots < start).
    """

    tokens: list[int]
    max_depth: int  # draft tokens allowed this round (never beyond max_new_tokens)

    @property
    def root(self) -> int:
        """The last committed token: node 0 of the next tree."""
        return self.tokens[-1]

    @property
    def start(self) -> int:
        """The root's absolute position (the slots before it hold the committed context)."""
        return len(self.tokens) - 1


class Proposer(Protocol):
    name: str
    tap_layers: tuple[int, ...]  # target layers whose hidden states `begin`/`update` need
    max_nodes: int  # the largest tree it builds, root included (sizes the caches and graphs)
    drafters: tuple  # the drafters whose caches follow the committed tokens (prepared with the target)

    def begin(self, state: DecodeState, prefill: TargetOutput, max_len: int) -> None: ...

    def propose(self, state: DecodeState) -> DraftTree: ...

    def update(self, result: VerifyResult, out: TargetOutput) -> None: ...


class Drafter(Protocol):
    """What a proposer drafts with: `DFlashDrafter` (eager) or the graph engine's `GraphedDrafter`."""

    block_size: int

    def reset(self, max_len: int) -> None: ...

    def extend_context(self, features: torch.Tensor) -> None: ...  # [n, taps * H] of n committed tokens

    def propose(self, root: int, num_slots: int) -> DraftProposal: ...

    # the width its steps will search (0: none), handed over as a resident tree where it can
    def enable_prefix_search(self, width: int) -> int: ...

    def enable_candidates(self, k: int) -> int: ...  # the top-k its steps will take per slot (0: none)
