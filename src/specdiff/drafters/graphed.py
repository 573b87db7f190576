"""The graph engine's drafter rounds: extend the context and draft, as one CUDA graph.

A DFlash round does two things with a drafter: fuse the target features of the tokens committed
last round (at most one block) into the drafter's context K/V, then draft. Both have static
shapes once the features are padded to a block and attention spans a power-of-two bucket of the
context buffer under a mask computed on the device from two scalars (ctx_len, n_new), so they run
as one graph per span bucket. Padding rows write K/V past the new context end, where the mask
hides them and the next round overwrites them. Longer extensions (the prompt) take the eager path
of `DFlashDrafter`. A round's inputs cross to the device in one copy: [ctx_len, n_new, the
slots searched, ids...].

`GraphedDrafter` drafts one block (`draft`, the DFlash chain); with a prefix search enabled
(DDTree, caddtree) its graph also searches the block's top prefixes on the device
(`methods/device_search.py`), and `propose` hands them over with the logits in one copy. `GraphedVPDrafter` drafts D²SD's
K branch rows (`draft_rows`, cascade attention), padded to `branches` rows. Both keep
`DFlashDrafter`'s inference interface, so proposers do not know which engine runs them. Without
CUDA they run the same code eagerly. With `kernels` "triton" (or "auto" on a CUDA GPU) the
one-block step is made of fused kernels (`drafters/fused.py`); branch rows stay eager.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from specdiff.drafters.dflash import DFlashDrafter
from specdiff.drafters.fused import FusedDrafterStep, why_not
from specdiff.kernels import use_triton
from specdiff.target.graphed import HEADROOM, alloc_for, capture_graph, span_for, spans_up_to
from specdiff.methods import device_search
from specdiff.ops import StagedRow
from specdiff.types import DraftProposal


class GraphedDrafter:
    def __init__(self, drafter: DFlashDrafter, use_graphs: bool | None = None, min_alloc: int = 1024,
                 kernels: str = "torch"):
        """kernels: as `DecodeConfig.kernels` (the one-block step only)."""
        self.inner = drafter
        self.spec, self.config = drafter.spec, drafter.config
        self.device = drafter.fc.weight.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.min_alloc = min_alloc
        bk = drafter.spec.block_size
        feat_dim = drafter.fc.weight.shape[1]
        self.feats = torch.zeros(bk, feat_dim, dtype=drafter.fc.weight.dtype, device=self.device)
        shape = self._ids_shape()
        # ctx_len, n_new, the slots the prefix search may use (a round near the decode's end drafts
        # fewer), ids
        self._packed_row = StagedRow((3 + math.prod(shape),), self.device)
        self.packed = self._packed_row.device_row
        self.ids = self.packed[3:].view(shape)
        self._outs: dict[int, torch.Tensor] = {}  # span -> logits [..., Bk-1, V] after a step
        self._graphs: dict[int, "torch.cuda.CUDAGraph"] = {}  # span -> graph
        self._pending: torch.Tensor | None = None
        self._cols: torch.Tensor | None = None
        self._bound_to: torch.Tensor | None = None  # the context buffer the graph was captured on
        self._search: device_search.PrefixSearch | None = None
        self._candidates: device_search.TopCandidates | None = None
        self._fused: FusedDrafterStep | None = None
        if len(shape) == 1 and use_triton(kernels, why_not(drafter), self.device, " the drafter"):
            self._fused = FusedDrafterStep(drafter, glue=kernels == "glued")

    def _ids_shape(self) -> tuple[int, ...]:
        return (self.spec.block_size,)  # the block [root, MASK x (Bk-1)]

    @property
    def block_size(self) -> int:
        return self.spec.block_size

    def enable_prefix_search(self, width: int) -> int:
        """Search each drafted block's top `width` prefixes inside the graph; the width enabled
        (0 where the device search cannot run: no CUDA graphs, no Triton, too wide, or a vocabulary
        past 2^24, whose ids its float32 result would round). `propose` hands them over as a
        resident tree, unread, where every column holds a prefix (else it reads them)."""
        width = device_search.search_width(width)
        if not (width and device_search.available(self.device, self.use_graphs)) or \
                self.inner.config.vocab_size > 1 << 24:
            return 0
        self._search = device_search.PrefixSearch(width, self.block_size - 1, self.device)
        self._graphs = {}
        return width

    def enable_candidates(self, k: int) -> int:
        """Take each drafted block's top-k candidates per slot inside the graph (eagerly without
        CUDA: the same code); the k enabled (0 where k exceeds the vocabulary)."""
        vocab = self.inner.config.vocab_size
        if not 1 <= k <= vocab or vocab > 1 << 24:  # the ids travel as float32: exact below 2^24
            return 0
        self._candidates = device_search.TopCandidates(k, self.block_size - 1, self.device)
        self._graphs = {}
        return k

    def bind(self, embed_tokens, lm_head) -> None:
        self.inner.bind(embed_tokens, lm_head)
        self._graphs = {}

    def reset(self, max_len: int) -> None:
        need = max_len + HEADROOM
        if self.inner.ctx_k is None or self.inner.ctx_k.shape[2] < need:
            self.inner.reset(alloc_for(need, self.min_alloc))
        else:
            self.inner.reset(need)  # keeps the buffer
        if self._bound_to is not self.inner.ctx_k:  # new buffers: the graphs must be captured again
            self._graphs = {}
            self._bound_to = self.inner.ctx_k
            self._cols = torch.arange(self.inner.ctx_k.shape[2], device=self.device)
        self._pending = None

    @torch.inference_mode()
    def extend_context(self, features: torch.Tensor) -> None:
        if features.shape[0] > self.block_size or self._pending is not None:
            self._flush()
            self._intake(features)  # the prompt: now, outside the graphs
        else:
            self._pending = features  # fused into the next draft's graph

    def _flush(self) -> None:
        if self._pending is not None:
            self._intake(self._pending)
            self._pending = None

    def _intake(self, features: torch.Tensor) -> None:
        """Fuse features [n, T*H] into the context now: through the fused step's kernels where it
        runs (a prompt's intake in a few launches; the eager drafter's took about 2.4 ms on an
        H200 for a 200-token prompt), else eagerly."""
        d, n = self.inner, features.shape[0]
        if self._fused is None or n == 0 or d.ctx_len + n > d.ctx_k.shape[2]:
            d.extend_context(features)
            return
        self._fused.fuse(features, self._cols[d.ctx_len : d.ctx_len + n])
        d.ctx_len += n

    @torch.inference_mode()
    def draft(self, root: int, num_slots: int) -> torch.Tensor:
        """Same contract as `DFlashDrafter.draft`: logits [num_slots, V] for the slots after root."""
        block = np.full(self.block_size, self.spec.mask_token_id, dtype=np.int64)  # no torch op: host time is round time
        block[0] = root
        return self._round(block, num_slots)[:num_slots]

    def propose(self, root: int, num_slots: int) -> DraftProposal:
        """One drafting step: the logits, with the top prefixes or candidates the graph took over
        these `num_slots` where enabled (one device-to-host copy each, or none for a resident
        tree). The prefix search covers the first `num_slots` slots, however few."""
        logits = self.draft(root, num_slots)
        prefixes = candidates = resident = None
        if self._search is not None and num_slots <= self._search.depth:
            resident = self._search.device_tree(num_slots)
            if resident is None:
                prefixes = device_search.fetch(self._search.out, num_slots, self._search.width)
        if self._candidates is not None and num_slots == self._candidates.depth:
            candidates = self._candidates.fetch()
        return DraftProposal(logits, prefixes=prefixes, candidates=candidates, device_prefixes=resident)

    @property
    def drafts_ahead(self) -> bool:
        """Whether `draft_ahead` can queue a draft without reading the device: one block a step,
        and a prefix search (if any) that hands its tree over resident."""
        if self._ids_shape() != (self.block_size,) or self._candidates is not None:
            return False
        return self._search is None or self.inner.config.vocab_size >= self._search.width

    @torch.inference_mode()
    def draft_ahead(self, features: torch.Tensor, path: torch.Tensor, count: torch.Tensor, root: torch.Tensor,
                    num_slots: int) -> DraftProposal:
        """`propose` for a round whose accepted path is still on the device (nothing read): the
        features of `path`'s first `count` nodes (features [N, T*H], path [P] long, count [1]) join
        the context and `root` [1] heads the block. The host learns the count after its read and
        passes it to `took`."""
        if self._pending is not None or path.shape[0] > self.block_size:
            raise ValueError("draft_ahead: the context has features pending, or the path is longer than a block")
        self.feats[: path.shape[0]].copy_(features.index_select(0, path))
        host = self._packed_row.host()
        host[:3] = (self.inner.ctx_len, 0, num_slots)
        host[3:] = self.spec.mask_token_id  # the block; its root is written on the device below
        self._packed_row.send()
        self.packed[1:2].copy_(count)  # after the staged row: the copies run in stream order
        self.packed[3:4].copy_(root)
        logits = self._replay(self.inner.ctx_len)[:num_slots]
        resident = None
        if self._search is not None and num_slots <= self._search.depth:
            resident = self._search.device_tree(num_slots)
        return DraftProposal(logits, device_prefixes=resident)

    def took(self, n: int) -> None:
        """The context grew by the `n` path features the last `draft_ahead` fused in."""
        self.inner.ctx_len += n

    def _replay(self, ctx_len: int) -> torch.Tensor:
        span = span_for(ctx_len + self.block_size, self._cols.shape[0])
        if self.use_graphs:
            if self._fused is not None:  # a replay runs no host code: its stacked weights are checked here
                self._fused.refresh()
            # warm-up and capture write context slots at ctx_len.., which are not yet context
            self._graph(span).replay()
        else:
            self._step(span)
        return self._outs[span]

    def _round(self, ids: "np.ndarray | torch.Tensor", slots: int | None = None) -> torch.Tensor:
        """Fuse the pending features and draft `ids` (on the host, shaped like `self.ids`) at the
        end of the context -> this span's output buffer. slots: what the prefix search covers
        (None: the whole block)."""
        n = 0 if self._pending is None else self._pending.shape[0]
        if n:
            self.feats[:n].copy_(self._pending)
        slots = self.block_size - 1 if slots is None else slots
        host = self._packed_row.host()
        host[:3] = (self.inner.ctx_len, n, slots)
        host[3:] = np.asarray(ids).reshape(-1)
        self._packed_row.send()
        out = self._replay(self.inner.ctx_len)
        self.inner.ctx_len += n
        self._pending = None
        return out

    def _graph(self, span: int) -> "torch.cuda.CUDAGraph":
        g = self._graphs.get(span)
        if g is None:
            g = self._graphs[span] = capture_graph(lambda: self._step(span), self.device)
        return g

    def prepare(self, max_len: int) -> None:
        """Size the context buffer for `max_len` slots and capture every span bucket up to it."""
        self.reset(max_len)
        if self.use_graphs:
            for span in spans_up_to(max_len + self.block_size, self._cols.shape[0]):
                self._graph(span)

    def _step(self, span: int) -> None:
        """Device tensors only: safe to capture. Attention reads context slots [0, span)."""
        bk = self.block_size
        ctx_len, n_new = self.packed[0:1], self.packed[1:2]
        length = ctx_len + n_new  # 2. the block(s) at positions length .. length+Bk-1
        if self._fused is not None:  # 1. and 2.; the block's K/V go past the context: a block more span
            self._fused.fuse(self.feats, ctx_len + self._cols[:bk])
            self._outs[span] = self._fused.run_block(self.ids, length, span + bk)
        else:
            self.inner.fuse(self.feats, ctx_len + self._cols[:bk])  # 1. pending features -> slots ctx_len + [0, Bk)
            self._outs[span] = self.inner.run_blocks(self.ids, length + self._cols[:bk], span, self._cols[:span] < length)
        if self._search is not None:  # 3. the drafted slots' top prefixes (DDTree, caddtree)
            self._search.run(self._outs[span], self.ids[:1], self.packed[2:3])
        if self._candidates is not None:  # 3'. or their top candidates, for the host's search
            self._candidates.run(self._outs[span])


class GraphedVPDrafter(GraphedDrafter):
    """D²SD's VP drafter: `draft_rows` of up to `branches` rows as one graph per span bucket.
    Fewer rows are padded by repeating the first (its result is dropped); rows shorter than a
    block (the last rounds of a decode) or more than `branches` take the eager path."""

    def __init__(self, drafter: DFlashDrafter, branches: int, use_graphs: bool | None = None, min_alloc: int = 1024):
        self.branches = branches
        super().__init__(drafter, use_graphs, min_alloc)

    def _ids_shape(self) -> tuple[int, ...]:
        return (self.branches, self.spec.block_size)

    @torch.inference_mode()
    def draft_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Same contract as `DFlashDrafter.draft_rows`: rows [k, Bk] -> logits [k, Bk-1, V]."""
        k, bk = rows.shape
        if k > self.branches or bk != self.block_size:
            self._flush()
            return self.inner.draft_rows(rows)
        rows = rows.cpu()
        return self._round(torch.cat([rows, rows[:1].expand(self.branches - k, -1)]))[:k]
