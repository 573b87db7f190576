"""Typed objects that cross the boundaries of the decode loop.

    prefill -> [ propose -> DraftTree -> TreePlan -> target -> TargetOutput -> verify -> VerifyResult
                 -> commit -> update drafter ]*

A chain is a tree of width 1 and AR is a tree holding only its root, so every proposer hands the
loop the same `DraftTree`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

BITSET_NODES = 128  # DraftTree.ancestor_mask: up to here one int per row beats the per-depth loop


@dataclass(frozen=True)
class DraftTree:
    """A prefix tree of draft tokens rooted at the last committed token.

    Node 0 is the root: the last committed token, which the target has not processed yet (the
    previous round's bonus token). Every other node is a draft token whose parent comes earlier:
    `parents[i] < i`, so a parent is always planned and walked before its children.

    Example (root r, chain a b, and a sibling c of a)::

        tokens  = [r, a, b, c]
        parents = [-1, 0, 1, 0]
        depths  = [0, 1, 2, 1]
    """

    tokens: torch.Tensor  # [N] long, on the host (or the drafter's tensor: `drafted`)
    parents: torch.Tensor  # [N] long, on the host (on the device: `resident`); parents[0] = -1
    depths: torch.Tensor  # [N] long, on the host (on the device: `resident`); depths[0] = 0
    # tokens its candidates would take verified as separate rows, root included (D²SD's (K+1)·γ,
    # before they were merged into this trie); None: the tree was built as a tree
    candidate_rows: int | None = None
    # expected accepted draft tokens under the drafter's marginals (Phi: the sum of the kept
    # prefixes' probabilities), where the builder knows it (DDTree, caddtree)
    phi: float | None = None
    # tokens is the drafter's own [N] tensor, left on its device (`device_chain`): the target
    # forward copies it there and the walk reads it back with its draws, in the round's one copy
    drafted: bool = False
    # parents and depths are device tensors too (`DraftProposal.device_prefixes`): the graph
    # engine's target builds its inputs from them on the device, and the walk reads tokens and
    # parents back with its draws; `depth_bound` (no node is deeper) sizes the draws unread
    resident: bool = False
    depth_bound: int | None = None
    # [2, W] float32 on the device: the log-prob and the running Phi of all W prefixes the device
    # searched this round (not only this tree's), read back with the walk's draws in the same copy
    # (caddtree sizes its next tree from them: `VerifyResult.scores`)
    scores: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.tokens.numel())

    @property
    def max_depth(self) -> int:
        return int(self.depths.max())

    @property
    def drafted_chain(self) -> bool:
        """A chain left where it was drafted (tokens on the drafter's device, parents and depths
        on the host): its shape is known without a read."""
        return self.drafted and not self.resident and self.max_depth == self.num_nodes - 1

    def first(self, n: int, scores: bool = False) -> DraftTree:
        """The first n nodes (a tree: parents come first); a resident tree's are views, unread.
        scores: keep the search's `scores` for the walk to read back (else they are dropped)."""
        return replace(self, tokens=self.tokens[:n], parents=self.parents[:n], depths=self.depths[:n], phi=None,
                       scores=self.scores if scores else None)

    def host(self) -> DraftTree:
        """This tree with every tensor on the host (for a resident tree: a read of the device)."""
        if not (self.drafted or self.resident):
            return self
        tokens, parents, depths = (t.cpu() for t in (self.tokens, self.parents, self.depths))
        return replace(self, tokens=tokens, parents=parents, depths=depths, drafted=False, resident=False,
                       scores=None)

    @staticmethod
    def from_lists(tokens: list[int], parents: list[int]) -> DraftTree:
        depths = [0] * len(tokens)
        for i in range(1, len(tokens)):
            if not 0 <= parents[i] < i:
                raise ValueError(f"node {i} has parent {parents[i]}: parents must come first")
            depths[i] = depths[parents[i]] + 1
        if parents[0] != -1:
            raise ValueError("node 0 is the root and must have parent -1")
        return DraftTree(
            torch.tensor(tokens, dtype=torch.long),
            torch.tensor(parents, dtype=torch.long),
            torch.tensor(depths, dtype=torch.long),
        )

    @staticmethod
    def chain(root: int, draft: list[int], phi: float | None = None) -> DraftTree:
        tree = DraftTree.from_lists([root, *draft], list(range(-1, len(draft))))
        return tree if phi is None else replace(tree, phi=phi)

    @staticmethod
    def device_chain(root: int, draft: torch.Tensor) -> DraftTree:
        """`chain` with the draft left where it was drafted: draft [D] long on any device (the
        drafter's argmax), tokens [1 + D] on that device, parents and depths on the host."""
        n = 1 + draft.shape[0]
        tokens = torch.cat([torch.full((1,), root, dtype=torch.long, device=draft.device), draft.long()])
        return DraftTree(tokens, torch.arange(-1, n - 1), torch.arange(n), drafted=True)

    def ancestor_mask(self) -> torch.Tensor:
        """[N, N] bool: mask[i, j] is True when j is i or an ancestor of i. In Python: a chain, one int
        per row, or level by level (`native.Native.tree_mask` is the same in C)."""
        n = self.num_nodes
        if torch.equal(self.parents, torch.arange(-1, n - 1)):  # a chain: plain causal
            return torch.ones(n, n, dtype=torch.bool).tril_()
        if n <= BITSET_NODES:
            # a node's row is its parent's row plus itself, as one Python int per row (parents come
            # first), unpacked once: a third to a half of the level loop's host time at 16-96 nodes
            par = self.parents.tolist()
            rows = [1]
            for i in range(1, n):
                rows.append(rows[par[i]] | (1 << i))
            width = (n + 7) // 8
            packed = np.frombuffer(b"".join(r.to_bytes(width, "little") for r in rows), dtype=np.uint8)
            bits = np.unpackbits(packed.reshape(n, width), axis=1, bitorder="little")[:, :n]
            return torch.from_numpy(np.ascontiguousarray(bits).view(bool))
        # level by level: a node's row is its parent's row plus itself (parents are one level up)
        parents, depths = self.parents.numpy(), self.depths.numpy()
        mask = np.eye(n, dtype=bool)
        for d in range(1, int(depths.max()) + 1):
            rows = np.flatnonzero(depths == d)
            mask[rows] |= mask[parents[rows]]
        return torch.from_numpy(mask)

    def children(self) -> list[dict[int, int]]:
        """Per node, a map from child token to child index (the walk's lookup table)."""
        return children_table(self.parents.tolist(), self.tokens.tolist())


def children_table(parents: Sequence[int], tokens: Sequence[int]) -> list[dict[int, int]]:
    """`DraftTree.children` of a tree's parent and token columns (node 0 the root)."""
    table: list[dict[int, int]] = [{} for _ in range(len(parents))]
    for i, (p, t) in enumerate(zip(parents, tokens)):
        if i > 0:
            table[p].setdefault(t, i)
    return table


@dataclass(frozen=True)
class DraftProposal:
    """A drafter's per-position marginals for the slots after the root.

    `logits[k]` scores the token at depth k+1 (position start+k+1). Tree builders turn this into
    a `DraftTree`: the argmax chain (DFlash) or the most probable prefixes (DDTree).
    """

    logits: torch.Tensor  # [L, V] on the device
    source: str = "dflash"
    prefixes: TopPrefixes | None = None  # the top prefixes of `logits`, when the device searched them
    # host [L, k] top log-probs (float32, rows sorted) and their ids (int64), when the drafter's
    # graph took them (one copy instead of an eager top-k and two)
    candidates: tuple[torch.Tensor, torch.Tensor] | None = None
    # the top prefixes of all L slots as a resident tree (root first, best-first order, so its
    # first n + 1 nodes are the top-n tree), when the drafter's graph searched them and nothing
    # was read back
    device_prefixes: DraftTree | None = None


@dataclass(frozen=True)
class TopPrefixes:
    """The top prefixes of a proposal's marginals in best-first order, from the C search
    (`native.py`) or the device's (`methods/device_search.py`). Column c of `table` is tree node c
    (column 0 the root), so any first n + 1 columns form a tree."""

    table: np.ndarray  # [3, 1 + n] int64: token, parent, depth per node; the root's token is unset
    phi: np.ndarray  # [n] float64: phi[k] = the sum of the probabilities of nodes 1..k+1 (Phi(k + 1))
    logp: np.ndarray  # [n] float64: each node's prefix log-probability, non-increasing
    depth: int  # the drafter slots searched
    searched: int  # the prefixes searched for: fewer are listed only where fewer are possible

    @property
    def width(self) -> int:
        return self.table.shape[1] - 1

    @property
    def tokens(self) -> list[int]:
        return self.table[0, 1:].tolist()

    @property
    def parents(self) -> list[int]:
        return self.table[1, 1:].tolist()

    @property
    def depths(self) -> list[int]:
        return self.table[2, 1:].tolist()

    def covers(self, nodes: int, depth: int) -> bool:
        """Whether the first `nodes` nodes here are the top `nodes` prefixes over `depth` slots."""
        return depth == self.depth and nodes <= self.searched

    def tree(self, root: int, n: int) -> DraftTree:
        """The first n nodes (the top n prefixes) under `root`."""
        n = min(n, self.width)
        t = torch.from_numpy(self.table[:, : n + 1].copy())
        t[0, 0] = root
        return DraftTree(t[0], t[1], t[2], phi=float(self.phi[n - 1]) if n else 0.0)


@dataclass
class TargetOutput:
    """What one target forward returns for the nodes it processed."""

    logits: torch.Tensor  # [N, V] on the device, model dtype
    features: torch.Tensor | None  # [N, len(tap_layers) * H]: tapped hidden states, concatenated
    # [N, N] bool on the device, row i marking i and its ancestors: the tree as the forward saw it
    # (the graph engine's; None elsewhere)
    ancestors: torch.Tensor | None = None


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of one verification round.

    `accepted` are tree node indices from the root down the accepted path (always starting with 0,
    the root); `tokens` are the new tokens this round emits: the accepted draft tokens (the path
    without the root) followed by the bonus token, which the target drew at the last accepted node.
    """

    accepted: list[int]  # node indices, root first, increasing
    tokens: list[int]  # len(accepted) new tokens: accepted drafts + bonus
    # [2, W] float64 on the host: the tree's `DraftTree.scores` (log-prob, Phi of the W prefixes
    # the device searched), read in the walk's copy; None where the tree carried none
    scores: np.ndarray | None = None

    @property
    def num_accepted_drafts(self) -> int:
        return len(self.accepted) - 1

    @property
    def bonus(self) -> int:
        return self.tokens[-1]


@dataclass(frozen=True)
class RoundChunk:
    """One verification round as `SpeculativeDecoder.stream` yields it, once its tokens are
    committed."""

    tokens: list[int]  # the round's new tokens, cut at max_new_tokens and end-of-text
    round: int  # 0-based
    tree_nodes: int  # nodes verified (root included)
    candidate_rows: int  # DraftTree.candidate_rows, else the tree size
    round_ms: float  # wall time of the round
    stop_reason: str | None = None  # on the last round: "length" | "eos" (a text stream adds "stop")
    prefill_ms: float = 0.0  # on the first round: the prompt's prefill


@dataclass
class GenerationResult:
    """One completion with its acceptance statistics (what `specdiff generate --json` prints)."""

    token_ids: list[int]  # new tokens only
    rounds: int  # target verification forwards after prefill
    accept_lengths: list[int]  # tokens committed per round
    tree_sizes: list[int]  # nodes verified per round (root included)
    candidate_rows: list[int]  # per round: DraftTree.candidate_rows, else the tree size
    prefill_s: float
    decode_s: float
    stop_reason: str  # "length" | "eos"
    round_ms: list[float] = field(default_factory=list)  # wall time of each round (the last one's ends before the final sync)

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tau(self) -> float:
        return self.num_new_tokens / self.rounds if self.rounds else 0.0

    @staticmethod
    def from_rounds(chunks: list[RoundChunk], stop_reason: str | None = None) -> GenerationResult:
        """A streamed decode's rounds as one result (decode time: the rounds' wall times)."""
        return GenerationResult(
            token_ids=[t for c in chunks for t in c.tokens], rounds=len(chunks),
            accept_lengths=[len(c.tokens) for c in chunks], tree_sizes=[c.tree_nodes for c in chunks],
            candidate_rows=[c.candidate_rows for c in chunks],
            prefill_s=chunks[0].prefill_ms / 1000 if chunks else 0.0,
            decode_s=sum(c.round_ms for c in chunks) / 1000,
            stop_reason=stop_reason or (chunks[-1].stop_reason if chunks else None) or "length",
            round_ms=[c.round_ms for c in chunks])

    def accept_hist(self, max_len: int | None = None) -> list[int]:
        """hist[k] = number of rounds that committed exactly k tokens."""
        top = max(self.accept_lengths, default=0) if max_len is None else max_len
        hist = [0] * (top + 1)
        for n in self.accept_lengths:
            hist[n] += 1
        return hist
