"""The graph engine's drafter round: extend the context and draft a block, as one CUDA graph.

A DFlash round does two things with the drafter: fuse the target features of the tokens committed
last round (at most one block) into the drafter's context K/V, then draft the next block. Both
have static shapes once the features are padded to a block and attention spans a power-of-two
bucket of the context buffer under a mask computed on the device from two scalars (ctx_len,
n_new), so they run as one graph per span bucket. Padding rows write K/V past the new context end, where the mask hides them and the next
round overwrites them. Longer extensions (the prompt) take the eager path of `DFlashDrafter`.

`GraphedDrafter` keeps `DFlashDrafter`'s inference interface (`reset`, `extend_context`, `draft`),
so proposers do not know which engine runs them. Without CUDA it runs the same code eagerly.
"""

from __future__ import annotations

import torch

from specdiff.drafters.dflash import DFlashDrafter
from specdiff.ops import rms_norm
from specdiff.target.graphed import HEADROOM, MIN_SPAN, alloc_for, capture_graph, span_for


class GraphedDrafter:
    def __init__(self, drafter: DFlashDrafter, use_graphs: bool | None = None, min_alloc: int = 1024):
        self.inner = drafter
        self.spec, self.config = drafter.spec, drafter.config
        self.device = drafter.fc.weight.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.min_alloc = min_alloc
        bk = drafter.spec.block_size
        feat_dim = drafter.fc.weight.shape[1]
        self.feats = torch.zeros(bk, feat_dim, dtype=drafter.fc.weight.dtype, device=self.device)
        self.scalars = torch.zeros(3, dtype=torch.long, device=self.device)  # ctx_len, n_new, root
        self._outs: dict[int, torch.Tensor] = {}  # span -> logits [Bk-1, V] after a step
        self._graphs: dict[int, "torch.cuda.CUDAGraph"] = {}  # span -> graph
        self._pending: torch.Tensor | None = None
        self._cols: torch.Tensor | None = None
        self._bound_to: torch.Tensor | None = None  # the context buffer the graph was captured on

    @property
    def block_size(self) -> int:
        return self.spec.block_size

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
            self.inner.extend_context(features)  # the prompt: eager
        else:
            self._pending = features  # fused into the next draft's graph

    def _flush(self) -> None:
        if self._pending is not None:
            self.inner.extend_context(self._pending)
            self._pending = None

    @torch.inference_mode()
    def draft(self, root: int, num_slots: int) -> torch.Tensor:
        """Same contract as `DFlashDrafter.draft`: logits [num_slots, V] for the slots after root."""
        n = 0 if self._pending is None else self._pending.shape[0]
        if n:
            self.feats[:n].copy_(self._pending)
        self.scalars.copy_(torch.tensor([self.inner.ctx_len, n, root]), non_blocking=True)
        span = span_for(self.inner.ctx_len + self.block_size, self._cols.shape[0])
        if self.use_graphs:
            # warm-up and capture write context slots at ctx_len.., which are not yet context
            self._graph(span).replay()
        else:
            self._step(span)
        self.inner.ctx_len += n
        self._pending = None
        return self._outs[span][:num_slots]

    def _graph(self, span: int) -> "torch.cuda.CUDAGraph":
        g = self._graphs.get(span)
        if g is None:
            g = self._graphs[span] = capture_graph(lambda: self._step(span), self.device)
        return g

    def prepare(self, max_len: int) -> None:
        """Size the context buffer for `max_len` slots and capture every span bucket up to it."""
        self.reset(max_len)
        if self.use_graphs:
            alloc, span = self._cols.shape[0], MIN_SPAN
            while True:
                self._graph(min(span, alloc))
                if span >= min(max_len + self.block_size, alloc):
                    break
                span *= 2

    def _step(self, span: int) -> None:
        """Device tensors only: safe to capture. Attention reads context slots [0, span)."""
        d = self.inner
        embed, head = d._io
        bk = self.block_size
        ctx_len, n_new, root = self.scalars[0:1], self.scalars[1:2], self.scalars[2:3]
        # 1. the pending features become context K/V at slots ctx_len + [0, Bk)
        slots = ctx_len + self._cols[:bk]
        ctx = rms_norm(d.hidden_norm, d.fc(self.feats))  # [Bk, H]
        cos, sin = d.rope(slots)
        for i, layer in enumerate(d.layers):
            k, v = layer.self_attn.kv(ctx, cos, sin)  # [kv_heads, Bk, hd]
            d.ctx_k[i].index_copy_(1, slots, k)
            d.ctx_v[i].index_copy_(1, slots, v)
        # 2. the block [root, MASK x (Bk-1)] at positions L .. L+Bk-1, L = ctx_len + n_new
        length = ctx_len + n_new
        block = torch.cat([root, torch.full((bk - 1,), d.spec.mask_token_id, device=self.device)])
        x = embed(block).to(d.fc.weight.dtype)  # [Bk, H]
        cos, sin = d.rope(length + self._cols[:bk])
        visible = torch.cat([self._cols[:span] < length, torch.ones(bk, dtype=torch.bool, device=self.device)])
        for i, layer in enumerate(d.layers):
            attn = layer.self_attn
            h = rms_norm(layer.input_layernorm, x)
            kb, vb = attn.kv(h, cos, sin)
            k = torch.cat([d.ctx_k[i, :, :span], kb], dim=1)  # [kv_heads, span + Bk, hd]
            v = torch.cat([d.ctx_v[i, :, :span], vb], dim=1)
            x = x + attn.attend(attn.q(h, cos, sin), k, v, visible[None, None])
            x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
        self._outs[span] = head(rms_norm(d.norm, x[1:]).to(head.weight.dtype))  # [Bk-1, V]
