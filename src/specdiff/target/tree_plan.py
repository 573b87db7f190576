"""Plan of one target forward: ids, positions and the attention mask, built once per round.

The KV cache is static and positional: committed tokens occupy slots [0, start) and the N tree
nodes are written to slots [start, start + N). Node i sits at RoPE position start + depth_i and
sees every committed slot plus its own ancestors (and itself) inside the tree.

Example: start = 3, tree r -> a -> b, r -> c (N = 4, max_len = 8); `x` = visible::

    slot:   0 1 2 | 3 4 5 6 | 7
    r       x x x | x . . . | .
    a       x x x | x x . . | .
    b       x x x | x x x . | .
    c       x x x | x . . x | .
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdiff.native import Native
from specdiff.types import DraftTree


@dataclass(frozen=True)
class TreePlan:
    input_ids: torch.Tensor  # [1, N] long
    position_ids: torch.Tensor  # [1, N] long: start + depth
    mask: torch.Tensor | None  # [1, 1, N, max_len] additive (0 = visible, dtype-min = hidden); None: not built
    start: int  # first cache slot written
    ancestors: torch.Tensor  # [N, N] bool: the tree block of `mask` (the fused forward reads this)

    @property
    def num_nodes(self) -> int:
        return int(self.input_ids.shape[1])

    @staticmethod
    def build(tree: DraftTree, start: int, max_len: int, device, dtype: torch.dtype,
              native: Native | None = None, with_mask: bool = True) -> TreePlan:
        """native: the ancestor mask in C (None: `DraftTree.ancestor_mask`, the same mask);
        with_mask: build the [N, max_len] mask (a forward that reads `ancestors` alone needs none)."""
        if tree.resident:  # searched on the device, planned here: read it (the graph engine need not)
            tree = tree.host()
        n = tree.num_nodes
        if start + n > max_len:
            raise ValueError(f"tree of {n} nodes at slot {start} overflows the cache ({max_len})")
        # only the [N, N] tree block comes from the host; the [N, max_len] mask is built on the device
        hidden = torch.finfo(dtype).min
        ancestors = tree.ancestor_mask() if native is None else native.tree_mask(tree)
        ancestors = ancestors.to(device)
        mask = None
        if with_mask:
            tree_block = torch.zeros(n, n, dtype=dtype, device=device).masked_fill_(~ancestors, hidden)
            mask = torch.full((n, max_len), hidden, dtype=dtype, device=device)
            mask[:, :start] = 0.0
            mask[:, start : start + n] = tree_block
            mask = mask.view(1, 1, n, max_len)
        return TreePlan(
            input_ids=tree.tokens.view(1, n).to(device),
            position_ids=(tree.depths + start).view(1, n).to(device),
            mask=mask,
            start=start,
            ancestors=ancestors,
        )
