"""Sample-and-walk verification of a chosen draft tree (SpecInfer-style, lossless at any T).

The target draws its own token at every node (argmax at T=0; at T>0 a sample keyed by the
position it lands on). The walk starts at the root, moves to the child holding the drawn token
while there is one, and emits the first drawn token that has no matching child as the bonus.
Every emitted token is the target's own draw given the accepted prefix, so the output has the
target's distribution exactly. The min(1, p/q) rule must not be used here: the tree was chosen
(argmax / top-k), not sampled from q, and that rule would be biased (see tests).
"""

from __future__ import annotations

import numpy as np
import torch

from specdiff.config import SamplingConfig
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
    scores = None
    # the round's one host sync, read into numpy once (each .numpy() costs host time)
    if tree.resident:  # a tree searched on the device comes back with the draws, in the same copy
        rows = torch.stack([draws, tree.tokens, tree.parents])
        if tree.scores is None:
            drawn, tokens, parents = rows.cpu().numpy()
        else:  # the search's scores too: as float64 (exact) bits, in the same int64 copy
            n = rows.shape[1]
            flat = torch.cat([rows.flatten(), tree.scores.double().view(torch.int64).flatten()]).cpu().numpy()
            drawn, tokens, parents = flat[: 3 * n].reshape(3, n)
            scores = flat[3 * n:].view(np.float64).reshape(2, -1)
    elif tree.drafted:  # the drafter's tokens come back with the draws, in the same copy
        drawn, tokens = torch.stack([draws, tree.tokens.to(draws.device)]).cpu().numpy()
        parents = tree.parents.numpy()
    else:
        drawn, tokens, parents = draws.cpu().numpy(), tree.tokens.numpy(), tree.parents.numpy()
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
