"""Sample-and-walk verification of a chosen draft tree (SpecInfer-style, lossless at any T).

The target draws its own token at every node (argmax at T=0; at T>0 a sample keyed by the
position it lands on). The walk starts at the root, moves to the child holding the drawn token
while there is one, and emits the first drawn token that has no matching child as the bonus.
Every emitted token is the target's own draw given the accepted prefix, so the output has the
target's distribution exactly. The min(1, p/q) rule must not be used here: the tree was chosen
(argmax / top-k), not sampled from q, and that rule would be biased (see tests).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from specdiff.config import SamplingConfig
from specdiff.kernels import accepted_path
from specdiff.native import Native
from specdiff.sampling import NoiseCache, draw_tree
from specdiff.types import DraftTree, VerifyResult, children_table


def verify_walk(tree: DraftTree, logits: torch.Tensor, start: int, cfg: SamplingConfig,
                noise: NoiseCache | None = None, native: Native | None = None) -> VerifyResult:
    """tree: N nodes, root at absolute position `start`; logits: [N, V], row i predicts the token
    after node i, at position start + depth_i + 1; noise: the decoder's cache of sampling noise
    (the same draws with or without it); native: the C walk (None: the children table, the same
    nodes)."""
    draws = draw_tree(logits, start + 1, tree.depths, cfg, noise, tree.depth_bound)
    # the round's one host sync, read into numpy once (each .numpy() costs host time)
    return walk_read(tree, walk_row(tree, draws).cpu().numpy(), native)


def walk_row(tree: DraftTree, draws: torch.Tensor, *tail: torch.Tensor) -> torch.Tensor:
    """What the walk reads, as one int64 row on the draws' device: the draws [N], then whatever
    of the tree is still on the device (a drafted tree's tokens; a resident tree's tokens and
    parents, and its search's scores as float64 bits), then `tail` (int64 rows the caller reads
    in the same copy)."""
    if tree.resident:  # a tree searched on the device comes back with the draws, in the same copy
        parts = [torch.stack([draws, tree.tokens, tree.parents]).flatten()]
        if tree.scores is not None:
            parts.append(tree.scores.double().view(torch.int64).flatten())
    elif tree.drafted:  # the drafter's tokens come back with the draws, in the same copy
        parts = [torch.stack([draws, tree.tokens.to(draws.device)]).flatten()]
    else:
        parts = [draws]
    parts += tail
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def walk_read(tree: DraftTree, row: np.ndarray, native: Native | None = None) -> VerifyResult:
    """The walk over `walk_row`'s row, read to the host."""
    n, scores = tree.num_nodes, None
    if tree.resident:
        drawn, tokens, parents = row[: 3 * n].reshape(3, n)
        if tree.scores is not None:
            scores = row[3 * n:].view(np.float64).reshape(2, -1)
    elif tree.drafted:
        drawn, tokens = row[: 2 * n].reshape(2, n)
        parents = tree.parents.numpy()
    else:
        drawn, tokens, parents = row, tree.tokens.numpy(), tree.parents.numpy()
    if native is not None:
        accepted = native.walk(*(np.ascontiguousarray(a) for a in (parents, tokens, drawn)))
        return VerifyResult(accepted=accepted, tokens=drawn[accepted].tolist(), scores=scores)  # each node's draw
    draws = drawn.tolist()
    children = children_table(parents.tolist(), tokens.tolist())
    node, accepted, tokens = 0, [0], []
    while True:
        token = draws[node]
        tokens.append(token)
        nxt = children[node].get(token)
        if nxt is None:
            return VerifyResult(accepted=accepted, tokens=tokens, scores=scores)
        accepted.append(nxt)
        node = nxt


class DevicePath(NamedTuple):
    """A round's accepted path found on the device, unread: what the next draft needs from it."""

    nodes: torch.Tensor  # [P] long: the accepted nodes root first, then padding (node 0)
    count: torch.Tensor  # [1] long: how many of `nodes` are the path
    bonus: torch.Tensor  # [1] long: the token drawn after the path's last node


def device_depth(tree: DraftTree) -> int | None:
    """The depth bound of a tree whose tokens and parents the device holds or makes without a
    host copy (a host tensor's copy to the device could wait for the queued work): a resident
    tree's, or a drafted chain's; None for any other tree."""
    if tree.resident:
        return tree.depth_bound
    if tree.drafted_chain:
        return tree.num_nodes - 1
    return None


def device_path(tree: DraftTree, draws: torch.Tensor, ancestors: torch.Tensor) -> DevicePath:
    """`walk_read`'s path by device work only (nothing read): one kernel that walks the tree where
    Triton runs (`kernels.accepted_path`), else `device_path_reference`. tree: one `device_depth`
    takes; ancestors: [N, N] bool, row i marking i and its ancestors (the reference's). The path's
    nodes are padded to the depth bound + 1."""
    depth = device_depth(tree)
    if depth is None:
        raise ValueError("device_path takes a tree on the device or a drafted chain")
    nodes = torch.empty(depth + 1, dtype=torch.long, device=draws.device)
    count, bonus = torch.empty(2, 1, dtype=torch.long, device=draws.device)
    if accepted_path(tree.tokens, tree.parents if tree.resident else None, draws, depth, nodes, count, bonus):
        return DevicePath(nodes, count, bonus)
    return device_path_reference(tree, draws, ancestors)


def device_path_reference(tree: DraftTree, draws: torch.Tensor, ancestors: torch.Tensor) -> DevicePath:
    """`device_path` in PyTorch ops: a node is on the path where it and every ancestor below the
    root holds its parent's draw (siblings hold distinct tokens, so at most one child does)."""
    n, depth = tree.num_nodes, device_depth(tree)
    parents = tree.parents if tree.resident else torch.arange(-1, n - 1, device=draws.device)
    holds = tree.tokens == draws[parents.clamp(min=0)]
    holds[0] = True  # the root is committed
    on_path = ~(ancestors[:n, :n] & ~holds[None, :]).any(1)  # [N]
    count = on_path.sum(0, keepdim=True)
    # path nodes keep their order (parents before children: root first, by depth)
    order = torch.sort((~on_path).to(torch.uint8), stable=True).indices
    length = depth + 1
    nodes = torch.zeros(length, dtype=torch.long, device=draws.device)
    k = min(length, n)
    nodes[:k] = order[:k]
    nodes = torch.where(torch.arange(length, device=draws.device) < count, nodes, 0)
    return DevicePath(nodes, count, draws.gather(0, nodes.gather(0, count - 1)))
