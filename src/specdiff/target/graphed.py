"""The graph engine: `StaticTarget`'s forward replayed as one CUDA graph per (node, span) bucket.

A tree of N nodes runs in the smallest node bucket Nb >= N, and its attention reads the smallest
span bucket (a power of two) of cache slots that holds the committed tokens and the tree. A
proposer's largest tree (1 + budget nodes: 65, 257) is the size most rounds run, and falls just
past a bucket: `prepare` gives it a bucket of its own, since every row of padding costs a row of
every GEMM (at 256 rows an 8B forward's GEMMs are near the GPU's compute).
Everything a forward reads lives in per-bucket device buffers that the host fills before a replay
with two copies (one packed int64 row: ids, positions, start; one [Nb, Nb] ancestor block), or,
for a tree that stayed on the device (`DraftTree.resident`), one kernel makes both there; the
[Nb, span] mask is computed inside the graph from `start` and that block, so no mask ever crosses
from the host. Padding rows sit at
the root's position, see only the committed slots and themselves, and write K/V to slots past
the tree that no real row can see and the next round overwrites. A commit that moves the
accepted path's K/V is one more graph (`COMMIT_ROWS` moves, read from a device row).

All buckets' graphs share one memory pool: a private pool per graph kept every bucket's
activations and [Nb, V] logits reserved at once, which ran a Qwen3-8B-shaped model out of an
80 GB GPU before its 256-node bucket. Sharing is safe because the graphs never run concurrently and a forward's outputs
are read before the next forward (the decode loop verifies, commits and hands the features to the
drafter first; `prefill` copies its outputs): a later replay of another bucket may reuse them.

The K/V buffer (`alloc` slots, a power of two) grows only when a longer sequence needs it, which
drops the graphs; a forward's cost follows its span bucket, not `alloc`, so sizing the buffer for
a large tree cap costs nothing per round. Graphs are captured the first time a bucket is needed
(with the capture's writes aimed at uncommitted slots), or all at once by `prepare`, which the
bench calls before timing so that no capture lands inside a measured decode. Without CUDA the
same bucketed code runs eagerly, which is how the CPU tests check it against the plain static
forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from specdiff.kernels import runnable, tree_inputs, tree_visibility
from specdiff.native import Native
from specdiff.ops import StagedRow
from specdiff.target.static_model import StaticTarget
from specdiff.types import DraftTree, TargetOutput

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)
HEADROOM = 256  # > any bucket's padding (largest gap between buckets)
# the longest accepted path the commit graph moves (a longer one takes the eager commit); its
# moves past the path copy uncommitted slots onto themselves
COMMIT_ROWS = 32
MIN_SPAN = 256  # smallest span bucket; spans double up to the buffer's length
# `prepare` adds a bucket of exactly the proposer's largest tree (False: BUCKETS alone)
FULL_TREE_BUCKET = True


def span_for(n: int, alloc: int) -> int:
    """The smallest span bucket >= n slots (a power of two from MIN_SPAN, at most `alloc`)."""
    span = MIN_SPAN
    while span < n:
        span *= 2
    return min(span, alloc)


def spans_up_to(n: int, alloc: int) -> list[int]:
    """Every span bucket a forward reading at most n slots can use."""
    spans = [min(MIN_SPAN, alloc)]
    while spans[-1] < span_for(n, alloc):
        spans.append(min(2 * spans[-1], alloc))
    return spans


def alloc_for(need: int, min_alloc: int) -> int:
    """Buffer length for `need` slots: a power of two, so a growing workload reallocates (and
    recaptures) at most log2 times."""
    alloc = max(min_alloc, MIN_SPAN)
    while alloc < need:
        alloc *= 2
    return alloc


def capture_graph(fn, device: torch.device, pool=None) -> "torch.cuda.CUDAGraph":
    """Warm `fn` up twice on a side stream (lazy inits, autotuning), then capture it. `fn` must
    touch device tensors only; its writes during warm-up must be harmless (callers aim them at
    uncommitted slots). pool: a memory pool shared with other graphs (None: the graph's own)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph


def bucket_for(n: int) -> int:
    for b in BUCKETS:
        if b >= n:
            return b
    raise ValueError(f"a tree of {n} nodes exceeds the largest graph bucket ({BUCKETS[-1]})")


@dataclass
class _Bucket:
    size: int
    span: int  # cache slots its attention reads
    # the two inputs, each filled on the host through its pinned staging copy: a loop that
    # launches a forward before reading the one before (AR's overlap) waits there for the copy
    packed_row: StagedRow  # [2 * Nb + 1] long: ids, positions, start
    anc_row: StagedRow  # [Nb, Nb] bool: tree block (padding rows: diagonal only)
    logits: torch.Tensor | None = None  # [Nb, V] outputs, valid after a replay
    features: torch.Tensor | None = None  # [Nb, T*H]
    graph: "torch.cuda.CUDAGraph | None" = None

    @property
    def packed(self) -> torch.Tensor:
        return self.packed_row.device_row

    @property
    def anc(self) -> torch.Tensor:
        return self.anc_row.device_row


class GraphedTarget(StaticTarget):
    engine = "graph"

    def __init__(self, model: torch.nn.Module, tap_layers: Sequence[int] = (), use_graphs: bool | None = None,
                 min_alloc: int = 1024, native: Native | None = None, kernels: str = "auto",
                 numerics: str = "auto"):
        device = next(model.parameters()).device
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs  # before the forward is made
        super().__init__(model, tap_layers, native=native, kernels=kernels, numerics=numerics)
        self.min_alloc = min_alloc
        self._buckets: dict[tuple[int, int], _Bucket] = {}  # (Nb, span) -> bucket
        self._tree_sizes: set[int] = set()  # node buckets past BUCKETS: the prepared proposers' largest trees
        self._pool = None  # the buckets' shared graph memory pool
        self._cols: torch.Tensor | None = None  # [alloc] slot indices
        self._chain_parents: torch.Tensor | None = None  # [alloc] slot indices - 1
        self._chain_inputs = runnable(self.device) is None  # a chain's inputs made on the device
        # the commit: [2, COMMIT_ROWS] (destination, source) slots, and the graph that moves every
        # layer's K/V by them
        self._move_row = StagedRow((2, COMMIT_ROWS), device)
        self._moves = self._move_row.device_row
        self._commit_graph: "torch.cuda.CUDAGraph | None" = None

    def set_taps(self, layer_ids: Sequence[int]) -> None:
        if tuple(layer_ids) != getattr(self, "tap_layers", None):
            self._buckets, self._pool = {}, None  # the graphs bake in which layers are tapped
        super().set_taps(layer_ids)

    def reset(self, max_len: int) -> None:
        need = max_len + HEADROOM
        if self.k is None or self.max_len < need:
            alloc = alloc_for(need, self.min_alloc)
            shape = (self.num_layers, 1, self.num_kv, alloc, self.head_dim)
            self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.max_len = alloc
            self._cols = torch.arange(alloc, device=self.device)
            self._chain_parents = self._cols - 1  # a drafted chain's: node i's parent is i - 1
            if self.fused is not None:
                self.fused.rope.build(self.max_len, self.k)
            self._buckets, self._pool = {}, None  # graphs point at the old buffers
            self._commit_graph = None
        self.length = 0

    def prepare(self, max_len: int, max_nodes: int) -> None:
        """Size the buffer for sequences of `max_len` slots and capture every bucket a tree of at
        most `max_nodes` nodes can use there, so that no capture happens inside a timed decode."""
        self.reset(max_len)
        self._capture_commit()
        if FULL_TREE_BUCKET and max_nodes <= BUCKETS[-1] and max_nodes not in BUCKETS:
            self._tree_sizes.add(max_nodes)
        top = bucket_for(min(max_nodes, BUCKETS[-1]))
        root = torch.zeros(1, dtype=torch.long, device=self.device)
        sizes = sorted({b for b in BUCKETS if b <= top} | {s for s in self._tree_sizes if s <= top})
        for nb in sizes:
            for span in spans_up_to(max_len + nb, self.max_len):
                b = self._bucket(nb, span)
            if self.device.type == "cuda":
                # a resident tree's inputs kernel is compiled per bucket size: a tree that stayed
                # on the device (ddtree, caddtree searched there) must not pay that inside a
                # decode (a caddtree round that met a new size measured 57 ms on an H100). Its
                # next forward writes the whole packed row and block again
                tree_inputs(root, root - 1, root, self.length, b.packed, b.anc)

    # -- one bucket ------------------------------------------------------------------------
    def _node_bucket(self, n: int) -> int:
        nb = bucket_for(n)
        return min((s for s in self._tree_sizes if n <= s < nb), default=nb)

    def _bucket(self, nb: int, span: int) -> _Bucket:
        b = self._buckets.get((nb, span))
        if b is None:
            b = _Bucket(size=nb, span=span, packed_row=StagedRow((2 * nb + 1,), self.device),
                        anc_row=StagedRow((nb, nb), self.device, torch.bool))
            b.anc_row.host()[:] = np.eye(nb, dtype=bool)
            b.anc_row.send()
            b.packed[2 * nb] = self.length  # a capture writes only uncommitted slots
            if self.use_graphs:
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                b.graph = capture_graph(lambda: self._bucket_forward(b), self.device, self._pool)
            self._buckets[nb, span] = b
        return b

    def _bucket_forward(self, b: _Bucket) -> None:
        """Device tensors only: safe to capture."""
        nb, cols = b.size, self._cols[: b.span]
        ids, pos, start = b.packed[:nb], b.packed[nb : 2 * nb], b.packed[2 * nb :]
        slots = start + self._cols[:nb]
        if self.fused is not None:  # the kernel reads `start` and the ancestor block itself
            b.logits, b.features = self.fused(ids[None], pos[None], slots, start, b.anc, b.span)
            return
        visible = tree_visibility(b.anc, start, cols)  # [Nb, span]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[None, None]
        b.logits, b.features = self.decode_layers(ids[None], pos[None], slots, mask)

    # -- forward -----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, tree: DraftTree) -> TargetOutput:
        n = tree.num_nodes
        if n > BUCKETS[-1]:  # a prefill longer than any bucket: the plain static forward
            return super().forward(tree)
        nb, start = self._node_bucket(n), self.length
        if start + nb > self.max_len:
            raise ValueError(f"tree of {n} nodes at slot {start} overflows the cache ({self.max_len})")
        b = self._bucket(nb, span_for(start + nb, self.max_len))
        if tree.resident:  # searched on the device: its inputs are made there, nothing is read
            tree_inputs(tree.tokens, tree.parents, tree.depths, start, b.packed, b.anc)
            return self._replay(b, n)
        if self._chain_inputs and tree.drafted_chain:
            # a drafted chain (a DFlash block, AR's overlapped step): one launch from the drafter's
            # device tokens and the cached chain, in place of two staged rows and a token copy
            tree_inputs(tree.tokens, self._chain_parents[:n], self._cols[:n], start, b.packed, b.anc)
            return self._replay(b, n)
        hp, host_anc = b.packed_row.host(), b.anc_row.host()  # numpy writes: a host torch op costs a few us
        if not tree.drafted:
            hp[:n] = tree.tokens.numpy()
        hp[n:nb] = 0
        hp[nb : nb + n] = tree.depths.numpy() + start
        hp[nb + n : 2 * nb] = start
        hp[2 * nb] = start
        if self.native is not None:  # straight into the pinned buffer, padding rows included
            self.native.ancestor_mask(np.ascontiguousarray(tree.parents.numpy()), host_anc)
        else:
            host_anc[:n, :n] = tree.ancestor_mask().numpy()
            host_anc[n:, :n] = False
            host_anc[:n, n:] = False
        b.packed_row.send()
        if tree.drafted:  # the drafter's tensor: copied on the device, after the packed row
            b.packed[:n].copy_(tree.tokens)
        b.anc_row.send()
        return self._replay(b, n)

    def _replay(self, b: _Bucket, n: int) -> TargetOutput:
        if b.graph is not None:
            b.graph.replay()
        else:
            self._bucket_forward(b)
        features = b.features[:n] if b.features is not None else None
        return TargetOutput(logits=b.logits[:n], features=features, ancestors=b.anc[:n, :n])

    @torch.inference_mode()
    def commit(self, accepted: Sequence[int]) -> None:
        """`StaticTarget.commit` as two launches, a copy of the moves and one graph, where the
        eager commit makes six (the path's slots, two gathers, two copies)."""
        k = len(accepted)
        if k > COMMIT_ROWS or list(accepted) == list(range(k)):
            super().commit(accepted)  # a prefix stays where it is: nothing moves
            return
        self._capture_commit()
        moves = self._move_row.host()
        moves[:] = self.length + np.arange(COMMIT_ROWS)  # past the path: slots onto themselves
        moves[1, :k] = self.length + np.asarray(accepted)
        self._move_row.send()
        if self._commit_graph is not None:
            self._commit_graph.replay()
        else:
            self._move()
        self.length += k

    def _capture_commit(self) -> None:
        if self.use_graphs and self._commit_graph is None:
            # captured on moves that change nothing (uncommitted slots onto themselves): a warm-up
            # run of a real path twice would move slots it had already overwritten. Its own
            # memory pool: the forward's features, which the buckets' pool holds, are read after
            self._moves.copy_((self.length + self._cols[:COMMIT_ROWS]).expand(2, -1))
            self._commit_graph = capture_graph(self._move, self.device)

    def _move(self) -> None:
        """Device tensors only: every layer's K/V at the source slots go to the destinations."""
        dst, src = self._moves
        self.k.index_copy_(3, dst, self.k.index_select(3, src))
        self.v.index_copy_(3, dst, self.v.index_select(3, src))

    def prefill(self, ids: Sequence[int]) -> TargetOutput:
        # prefill in chunks of the largest bucket keeps every forward inside a graph
        ids = list(ids)
        outs = []
        for i in range(0, len(ids), BUCKETS[-1]):
            chunk = ids[i : i + BUCKETS[-1]]
            out = self.forward(DraftTree.from_lists(chunk, list(range(-1, len(chunk) - 1))))
            outs.append(TargetOutput(out.logits.clone(), None if out.features is None else out.features.clone()))
            self.length += len(chunk)
        if len(outs) == 1:
            return outs[0]
        feats = None if outs[0].features is None else torch.cat([o.features for o in outs])
        return TargetOutput(torch.cat([o.logits for o in outs]), feats)
