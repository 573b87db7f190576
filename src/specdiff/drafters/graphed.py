"""The graph engine's drafter round: extend the context and draft a block, as one CUDA graph.

A DFlash round does two things with the drafter: fuse the target features of the tokens committed
last round (at most one block) into the drafter's context K/V, then draft the next block. Both
have static shapes once the features are padded to a block and attention spans the whole context
buffer under a mask computed on the device from two scalars (ctx_len, n_new), so they run as one
graph. Padding rows write K/V past the new context end, where the mask hides them and the next
round overwrites them. Longer extensions (the prompt) take the eager path of `DFlashDrafter`.

`GraphedDrafter` keeps `DFlashDrafter`'s inference interface (`reset`, `extend_context`, `draft`),
so proposers do not know which engine runs them. Without CUDA it runs the same code eagerly.
"""

from __future__ import annotations

import torch

from specdiff.drafters.dflash import DFlashDrafter
from specdiff.ops import rms_norm
from specdiff.target.graphed import HEADROOM, capture_graph


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
        self.logits: torch.Tensor | None = None  # [Bk-1, V] after a step
        self._graph = None
        self._pending: torch.Tensor | None = None
        self._cols: torch.Tensor | None = None
        self._bound_to: torch.Tensor | None = None  # the context buffer the graph was captured on

    @property
    def block_size(self) -> int:
        return self.spec.block_size

    def bind(self, embed_tokens, lm_head) -> None:
        self.inner.bind(embed_tokens, lm_head)
        self._graph = None

    def reset(self, max_len: int) -> None:
        self.inner.reset(max(self.min_alloc, max_len + HEADROOM))
        if self._bound_to is not self.inner.ctx_k:  # new buffers: the graph must be captured again
            self._graph = None
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
        if self._graph is None and self.use_graphs:
            # warm-up and capture write context slots at ctx_len.., which are not yet context
            self._graph = capture_graph(self._step, self.device)
        if self._graph is not None:
            self._graph.replay()
        else:
            self._step()
        self.inner.ctx_len += n
        self._pending = None
        return self.logits[:num_slots]

    def _step(self) -> None:
        """Device tensors only: safe to capture."""
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
        visible = torch.cat([self._cols < length, torch.ones(bk, dtype=torch.bool, device=self.device)])
        for i, layer in enumerate(d.layers):
            attn = layer.self_attn
            h = rms_norm(layer.input_layernorm, x)
            kb, vb = attn.kv(h, cos, sin)
            k = torch.cat([d.ctx_k[i], kb], dim=1)  # [kv_heads, alloc + Bk, hd]
            v = torch.cat([d.ctx_v[i], vb], dim=1)
            x = x + attn.attend(attn.q(h, cos, sin), k, v, visible[None, None])
            x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
        self.logits = head(rms_norm(d.norm, x[1:]).to(head.weight.dtype))
