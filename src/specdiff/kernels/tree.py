"""A tree's work on the device around its forward, so that nothing is read first: the graph
engine's packed input row (ids, positions, the tree's first slot) and its [Nb, Nb] ancestor block
from device tokens, parents and depths (a tree searched on the device is verified without the host
reading it), and the accepted path walked on the device from the target's draws (the next draft is
queued before the round is read).

`tree_inputs` is one Triton launch (one program per row: the row walks its parent chain, a tree's
depth at most); `tree_inputs_reference` is the same contract in PyTorch ops (pointer jumping),
which runs where Triton cannot. `accepted_path` is one launch of one program (the walk, a depth's
steps over the whole tree); its reference is `verify.walk.device_path`'s ancestor test.
"""

from __future__ import annotations

import os

import torch

from specdiff.kernels.common import _next_pow2, triton, tl


def tree_inputs_reference(tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor, start: int,
                          packed: torch.Tensor, anc: torch.Tensor) -> None:
    """tokens, parents, depths: [n] long, a tree (parents first, parents[0] = -1); packed:
    [2 * Nb + 1] long <- ids (0 past n), positions start + depth (start past n), start; anc:
    [Nb, Nb] bool <- row i marks i and its ancestors (padding rows: themselves only)."""
    n, nb = tokens.shape[0], anc.shape[0]
    par = torch.full((nb,), -1, dtype=torch.long, device=anc.device)
    par[:n] = parents
    reach = torch.eye(nb, dtype=torch.bool, device=anc.device)  # ancestors less than 2^k up, k = 0
    for _ in range(nb.bit_length()):  # 2^k > nb - 1 >= any depth
        up = par >= 0
        reach |= reach[par.clamp(min=0)] & up[:, None]
        par = torch.where(up, par[par.clamp(min=0)], par)
    anc.copy_(reach)
    packed.zero_()
    packed[:n] = tokens
    packed[nb : 2 * nb] = start
    packed[nb : nb + n] += depths
    packed[2 * nb] = start


if triton is not None:

    # launched eagerly every round: specialising on the tree's size or its position (a value of
    # 1, or a multiple of 16) would compile a new variant mid-decode (~50 ms on an H100)
    @triton.jit(do_not_specialize=["n", "start"])
    def _tree_inputs_kernel(tok_ptr, par_ptr, dep_ptr, packed_ptr, anc_ptr, n, start,
                            NB: tl.constexpr, NBP: tl.constexpr):
        i = tl.program_id(0)
        real = i < n
        cols = tl.arange(0, NBP)
        row = cols == i
        node = tl.load(par_ptr + i, mask=real, other=-1)
        steps = i * 0
        while (node >= 0) & (steps < NB):  # the bound stops a malformed (cyclic) table
            row = row | (cols == node)
            node = tl.load(par_ptr + node)
            steps += 1
        tl.store(anc_ptr + i * NB + cols, row, mask=cols < NB)
        tl.store(packed_ptr + i, tl.load(tok_ptr + i, mask=real, other=0))
        position = start + tl.load(dep_ptr + i, mask=real, other=0)
        tl.store(packed_ptr + NB + i, position)
        if i == 0:  # the root: depth 0, its position is the tree's first slot
            tl.store(packed_ptr + 2 * NB, position)


def runs_on(device: torch.device) -> bool:
    """Whether these kernels launch on `device`: a CUDA device, or Triton's interpreter."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def tree_inputs(tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor, start: int,
                packed: torch.Tensor, anc: torch.Tensor) -> None:
    """`tree_inputs_reference`'s contract in one launch where Triton runs (a CUDA device, or its
    interpreter); elsewhere the reference."""
    if not runs_on(anc.device):
        tree_inputs_reference(tokens, parents, depths, start, packed, anc)
        return
    nb = anc.shape[0]
    _tree_inputs_kernel[(nb,)](tokens, parents, depths, packed, anc, tokens.shape[0], start,
                               NB=nb, NBP=_next_pow2(nb), num_warps=1)


if triton is not None:

    @triton.jit(do_not_specialize=["n", "depth", "length"])
    def _accepted_path_kernel(tok_ptr, par_ptr, draw_ptr, nodes_ptr, count_ptr, bonus_ptr, n, depth, length,
                              CHAIN: tl.constexpr, BLOCK: tl.constexpr, PATH: tl.constexpr):
        # the walk: from the root, step to the child holding the node's draw while there is one
        # (siblings hold distinct tokens: at most one does); each step scans the whole tree
        idx = tl.arange(0, BLOCK)
        real = idx < n
        tok = tl.load(tok_ptr + idx, mask=real, other=-1)
        if CHAIN:
            par = idx - 1
        else:
            par = tl.load(par_ptr + idx, mask=real, other=-2).to(tl.int32)
        slots = tl.arange(0, PATH)
        nodes = tl.zeros([PATH], tl.int32)
        node = n * 0
        count = n * 0 + 1
        moved = n >= 0
        while moved & (count <= depth):  # depth bounds the steps, even for a malformed table
            drawn = tl.load(draw_ptr + node)
            child = tl.min(tl.where(real & (par == node) & (tok == drawn), idx, BLOCK), axis=0)
            moved = child < BLOCK
            nodes = tl.where((slots == count) & moved, child, nodes)
            node = tl.where(moved, child, node)
            count += moved.to(tl.int32)
        tl.store(nodes_ptr + slots, nodes.to(tl.int64), mask=slots < length)
        tl.store(count_ptr, count.to(tl.int64))
        tl.store(bonus_ptr, tl.load(draw_ptr + node))


def accepted_path(tokens: torch.Tensor, parents: torch.Tensor | None, draws: torch.Tensor, depth: int,
                  nodes: torch.Tensor, count: torch.Tensor, bonus: torch.Tensor) -> bool:
    """The walk's accepted path on the device, one launch where Triton runs (a CUDA device, or
    its interpreter): tokens, draws [n] long (parents [n] long, or None for a chain 0 <- 1 <- ...);
    nodes [depth + 1] long <- the path root first, then 0; count [1] <- its length; bonus [1] <-
    the draw after its last node. False (nothing written) where Triton cannot run."""
    if not runs_on(draws.device):
        return False
    n, length = tokens.shape[0], nodes.shape[0]
    _accepted_path_kernel[(1,)](tokens, tokens if parents is None else parents, draws, nodes, count, bonus,
                                n, depth, length, CHAIN=parents is None, BLOCK=_next_pow2(n),
                                PATH=_next_pow2(length), num_warps=4 if n > 128 else 1)
    return True
