"""The top-M prefixes of DDTree's search, computed on the device inside the drafter's CUDA graph.

On a GPU the host search is round time: after the drafter's graph the host fetched each depth's
top-k, ran the best-first heap in Python and built the tree, while the GPU sat idle (0.2-0.3 ms of
a 2 ms round on an H100 host). Here one Triton kernel does the search after the drafter's forward,
in the same graph, and the host reads one [5, M] buffer: for the top M prefixes in best-first
order, each one's parent, token, depth, log-prob and the running sum of probabilities (Phi).
DDTree keeps the first B; caddtree compares theta at its sizes by reading Phi.

The kernel is a beam per depth, exact for the top M: a prefix among the top M of its depth has
its parent among the top M of the depth above (each better parent has a child better than it), and
a candidate (beam row i, token rank j) has (i+1)(j+1) - 1 candidates at least as good, so only
pairs with (i+1)(j+1) <= M can enter the next beam (M ln M of them, not M^2). The top M over all
depths are then the top M of the union of the beams. Ties are broken by position (depth first),
so a parent always comes before its child, even where a child's log-prob is exactly 0.

`TopCandidates` is the first half alone (each slot's top-k in the graph, for the host's C search),
which on an H200 is the faster way (docs/results.md).

`reference_top_prefixes` is the same contract on the host from `iter_best_first`: the tests hold
the kernel (under Triton's interpreter on a CPU) to it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import numpy as np
import torch

from specdiff.methods.ddtree import iter_best_first
from specdiff.types import DraftTree, TopPrefixes

try:  # the kernel needs Triton; without it (the CPU install) trees are searched on the host
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None

ROWS = 5  # out rows: parent (0 = the root), token, depth, log-prob, Phi (cumulative probability)
MAX_WIDTH = 256  # the widest search prepared; wider budgets search on the host


def fetch(out: torch.Tensor, depth: int, width: int) -> TopPrefixes:
    """The kernel's first `width` columns -> the host (one copy). Impossible prefixes
    (probability 0: a vocabulary smaller than the width) are dropped."""
    host = out.cpu().numpy()[:, :width]
    n = int(np.isfinite(host[3]).sum())
    table = np.empty((3, n + 1), np.int64)
    table[:, 0] = (0, -1, 0)
    table[:, 1:] = host[[1, 0, 2], :n]  # the kernel's rows: parent, token, depth
    return TopPrefixes(table, host[4, :n].astype(np.float64), host[3, :n].astype(np.float64), depth, width)


# `on_the_interpreter`: the search where a GPU's graph engine would run it, on a CPU under Triton's
# interpreter (tests, host-op counts)
_INTERPRETED = False


def available(device: torch.device, graphs: bool = True) -> bool:
    """Whether the graph engine's drafter (capturing CUDA graphs where `graphs`) searches here."""
    if triton is None:
        return False
    return (device.type == "cuda" and graphs) or (_INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1")


@contextlib.contextmanager
def on_the_interpreter():
    """Drafters made inside search their trees as on a GPU (the tree resident), the kernel run
    by Triton's interpreter (TRITON_INTERPRET=1) on a CPU."""
    global _INTERPRETED
    before, _INTERPRETED = _INTERPRETED, True
    try:
        yield
    finally:
        _INTERPRETED = before


@functools.lru_cache(maxsize=None)
def candidate_pairs(m: int, device: str = "cpu") -> torch.Tensor:
    """[2, P] int32: (beam row i, token rank j) with (i+1)(j+1) <= m, padded with -1 to a power of 2."""
    pairs = [(i, j) for i in range(m) for j in range(m // (i + 1))]
    size = _pow2(len(pairs))
    out = torch.full((2, size), -1, dtype=torch.int32)
    out[:, : len(pairs)] = torch.tensor(pairs, dtype=torch.int32).T
    return out.to(device)


if triton is not None:

    @triton.jit
    def _pack(score, payload):
        # float32 -> int32 in the same order (negatives: flip the magnitude bits), then the payload
        # (a non-negative position, larger first) in the low half: sorting the int64 sorts by score
        b = score.to(tl.int32, bitcast=True)
        k = b ^ ((b >> 31) & 0x7FFFFFFF)
        return (k.to(tl.int64) << 32) | payload.to(tl.int64)

    @triton.jit
    def _unpack_score(key):
        k = (key >> 32).to(tl.int32)
        return (k ^ ((k >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)

    @triton.jit
    def _top_prefixes_kernel(vals_ptr, ids_ptr, pairs_ptr, beam_ptr, pos_ptr, out_ptr, table_ptr, root_ptr,
                             L: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, P: tl.constexpr,
                             U: tl.constexpr):
        # M prefixes, MP = M up to a power of 2 (a block's length). vals/ids: [L, MP] per-depth
        # top-M log-probs (sorted, -inf past M) and tokens. pairs: [2, P].
        # beam: [3, L, MP] the beams (score, parent row, token rank), written for the last step.
        # pos: [L * MP] int32 scratch. out: [ROWS, MP] float32, the first M columns meaningful.
        # table: [3, 1 + MP] int64 tree columns (token, parent, depth), column 0 the root, whose
        # token is read from root_ptr ([1] int64).
        # One program: a depth's beam needs the one above, and a round needs one search. The beam
        # stays in registers (gathers, no memory round trip per depth: the loop is latency-bound).
        offs_m = tl.arange(0, MP)
        LM: tl.constexpr = L * MP
        beam = tl.load(vals_ptr + offs_m)  # [M] depth 1: the top tokens themselves
        tl.store(beam_ptr + offs_m, beam)
        tl.store(beam_ptr + 2 * LM + offs_m, offs_m.to(tl.float32))
        offs_p = tl.arange(0, P)
        ci = tl.load(pairs_ptr + offs_p)  # [P] beam row
        cj = tl.load(pairs_ptr + P + offs_p)  # [P] token rank
        valid = ci >= 0
        ci = tl.where(valid, ci, 0)
        cj = tl.where(valid, cj, 0)
        v = tl.load(vals_ptr + MP + cj, mask=valid & (L > 1), other=float("-inf"))
        for d in range(1, L):
            s = tl.where(valid, tl.gather(beam, ci, 0) + v, float("-inf"))  # [P] candidates
            # the next depth's token log-probs load while this one sorts
            v = tl.load(vals_ptr + (d + 1) * MP + cj, mask=valid & (d + 1 < L), other=float("-inf"))
            top = tl.gather(tl.sort(_pack(s, (P - 1) - offs_p), descending=True), offs_m, 0)  # [M] best
            p = (P - 1) - (top & 0xFFFFFFFF).to(tl.int32)
            beam = tl.where(offs_m < M, _unpack_score(top), float("-inf"))  # past M: not the top
            tl.store(beam_ptr + d * MP + offs_m, beam)
            tl.store(beam_ptr + LM + d * MP + offs_m, tl.gather(ci, p, 0).to(tl.float32))
            tl.store(beam_ptr + 2 * LM + d * MP + offs_m, tl.gather(cj, p, 0).to(tl.float32))
        tl.debug_barrier()
        # the top M of all L beams, ties to the shallower (earlier) position: parents first
        offs_u = tl.arange(0, U)
        su = tl.load(beam_ptr + offs_u, mask=offs_u < LM, other=float("-inf"))
        top = tl.gather(tl.sort(_pack(su, (U - 1) - offs_u), descending=True), offs_m, 0)
        f = (U - 1) - (top & 0xFFFFFFFF).to(tl.int32)  # flat beam position d * MP + i
        score = _unpack_score(top)
        tl.store(pos_ptr + f, offs_m)
        tl.debug_barrier()
        d = f // MP
        up = tl.load(beam_ptr + LM + f).to(tl.int32)
        parent = tl.where(d > 0, tl.load(pos_ptr + (d - 1) * MP + up, mask=d > 0, other=-1) + 1, 0)
        rank = tl.load(beam_ptr + 2 * LM + f).to(tl.int32)
        token = tl.load(ids_ptr + d * MP + rank)
        tl.store(out_ptr + offs_m, parent.to(tl.float32))
        tl.store(out_ptr + MP + offs_m, token.to(tl.float32))
        tl.store(out_ptr + 2 * MP + offs_m, (d + 1).to(tl.float32))
        tl.store(out_ptr + 3 * MP + offs_m, score)
        tl.store(out_ptr + 4 * MP + offs_m, tl.cumsum(tl.exp(score), axis=0))
        TW: tl.constexpr = MP + 1
        tl.store(table_ptr + 1 + offs_m, token.to(tl.int64))
        tl.store(table_ptr + TW + 1 + offs_m, parent.to(tl.int64))
        tl.store(table_ptr + 2 * TW + 1 + offs_m, (d + 1).to(tl.int64))
        tl.store(table_ptr, tl.load(root_ptr))


class TopCandidates:
    """Each drafted slot's top-k log-probs and tokens, computed inside the drafter's graph into one
    [2, L, k] buffer and read by the host in one copy (ids as float32: exact below 2^24). Eagerly
    the same takes a log-softmax, a top-k and two copies, each a launch and the copies a sync: on
    an H200 host 0.13-0.16 ms a round. Feeds the host's C search."""

    def __init__(self, k: int, depth: int, device: torch.device):
        self.k, self.depth = k, depth
        self.buf = torch.zeros(2, depth, k, dtype=torch.float32, device=device)

    def run(self, logits: torch.Tensor) -> None:
        """logits: [>= L, V >= k] (device tensors only: capturable)."""
        vals, ids = torch.topk(torch.log_softmax(logits[: self.depth].float(), dim=-1), self.k, dim=-1)
        self.buf[0].copy_(vals)
        self.buf[1].copy_(ids)

    def fetch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> host top_logp [L, k] float32 and top_ids [L, k] int64, rows sorted."""
        host = self.buf.cpu()
        return host[0], host[1].long()


class PrefixSearch:
    """Static buffers for one width M and depth L: `run(logits, root)` is capturable in a CUDA
    graph and leaves the result in `self.out` ([ROWS, M'] with M' = M up to a power of 2; read by
    `fetch`) and, as tree columns under the root, in `self.table` (read by no one: `device_tree`)."""

    def __init__(self, width: int, depth: int, device: torch.device, num_warps: int | None = None):
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"prefix search width must be 1 to {MAX_WIDTH}, got {width}")
        self.width, self.depth = width, depth
        self.padded = _pow2(width)
        self.pairs = candidate_pairs(width, str(device))
        self.u = _pow2(depth * self.padded)
        f32 = dict(dtype=torch.float32, device=device)
        self.vals = torch.full((depth, self.padded), -math.inf, **f32)  # past the top M: -inf
        self.ids = torch.zeros(depth, self.padded, dtype=torch.int32, device=device)
        self.beam = torch.zeros(3, depth, self.padded, **f32)
        self.pos = torch.zeros(depth * self.padded, dtype=torch.int32, device=device)
        self.out = torch.zeros(ROWS, self.padded, **f32)
        self.table = torch.zeros(3, 1 + self.padded, dtype=torch.long, device=device)  # token, parent, depth
        self.table[1, 0] = -1
        self.num_warps = num_warps or (4 if self.pairs.shape[1] <= 512 else 8)
        self.vocab = 0  # the drafter's vocabulary, once a run has seen its logits
        self.slot_index = torch.arange(depth, device=device)[:, None]  # [L, 1]
        # the resident tree's columns and scores as views made once: a round's views are host time
        cols = self.table[:, : 1 + width]
        self._tree_views = (cols[0], cols[1], cols[2], self.out[3:5, :width])

    def load(self, logits: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        """Each slot's top-M log-probs and tokens (-inf past the vocabulary: impossible prefixes;
        and for every slot from `slots` ([1] long) on, so that no prefix goes deeper)."""
        logp = torch.log_softmax(logits[: self.depth].float(), dim=-1)
        k = min(self.width, logp.shape[-1])
        vals, ids = torch.topk(logp, k, dim=-1)
        self.vals[:, :k].copy_(vals)
        self.ids[:, :k].copy_(ids)
        if slots is not None:
            self.vals.masked_fill_(self.slot_index >= slots, -math.inf)
        self.vocab = logp.shape[-1]

    def search(self, root: torch.Tensor | None = None) -> torch.Tensor:
        p = self.pairs.shape[1]
        root = self.table if root is None else root  # no root: column 0 keeps its token
        _top_prefixes_kernel[(1,)](self.vals, self.ids, self.pairs, self.beam, self.pos, self.out, self.table, root,
                                   L=self.depth, M=self.width, MP=self.padded, P=p, U=self.u,
                                   num_warps=self.num_warps)
        return self.out

    def run(self, logits: torch.Tensor, root: torch.Tensor | None = None,
            slots: torch.Tensor | None = None) -> torch.Tensor:
        """logits: [>= L, V] (the drafter's slots), root: [1] long, the block's first token, slots:
        [1] long, the prefixes' depth limit (None: L) -> out (device tensors only)."""
        self.load(logits, slots)
        return self.search(root)

    def device_tree(self, depth: int | None = None) -> DraftTree | None:
        """The top M prefixes of the last run, searched to `depth` slots (None: L), as a resident
        tree (views of `table`: a later run overwrites them), or None where fewer than M prefixes
        are possible (a vocabulary smaller than M leaves columns with no prefix, which only `fetch`
        drops)."""
        if self.vocab < self.width:
            return None
        tokens, parents, depths, scores = self._tree_views
        return DraftTree(tokens, parents, depths, drafted=True, resident=True,
                         depth_bound=self.depth if depth is None else depth, scores=scores)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def search_width(nodes: int) -> int:
    """The device search for `nodes` draft nodes: its width, or 0 past the widest prepared."""
    return nodes if 1 <= nodes <= MAX_WIDTH else 0


def reference_top_prefixes(logits: torch.Tensor, width: int) -> TopPrefixes:
    """The same contract from the host's best-first heap (the simple path the kernel is held to)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    vals, ids = torch.topk(logp, min(width, logp.shape[-1]), dim=-1)
    top_ids = ids.tolist()
    columns, scores = [(0, -1, 0)], []
    for parent, rank, score in iter_best_first(vals):
        if len(scores) == width or score == -math.inf:
            break
        d = 1 if parent == 0 else columns[parent][2] + 1
        columns.append((top_ids[d - 1][rank], parent, d))
        scores.append(score)
    table = np.array(columns, dtype=np.int64).T.copy()
    logp_out = np.array(scores, dtype=np.float64)
    return TopPrefixes(table, np.cumsum(np.exp(logp_out)), logp_out, logits.shape[0], width)
