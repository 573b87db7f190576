"""Cascade (shared-prefix) attention: attend to the committed context once, merge by log-sum-exp.

A tree (or a batch of draft rows) shares one committed context. Instead of one masked attention
over [context ; tree], every query attends to the context with no mask (one batched pass whose
keys are read once for all queries) and, separately, to the tree-local keys under the ancestor
mask. Each part returns its softmax-normalised output o and the log-sum-exp s of its scores; for
disjoint key sets A and B the exact result is

    s = log(e^sA + e^sB),    o = e^(sA - s) oA + e^(sB - s) oB

`masked_attention` is the plain reference path (one attention over the concatenated keys); the
two are tested equal. Both support GQA (fewer key/value heads than query heads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                       scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns its log-sum-exp.

    q: [..., Hq, T, d]; k, v: [..., Hkv, S, d] with Hq a multiple of Hkv (GQA: query head h reads
    key head h // (Hq / Hkv)); mask: bool, True = visible, broadcastable to [..., Hq, T, S], or None.
    -> out [..., Hq, T, d] in q's dtype, lse [..., Hq, T] in float32 (-inf where nothing is visible;
    such rows output 0, so they vanish in a merge).
    """
    *batch, hq, t, d = q.shape
    hkv, s = k.shape[-3], k.shape[-2]
    g = hq // hkv
    scale = d**-0.5 if scale is None else scale
    qg = q.float().reshape(*batch, hkv, g, t, d)  # query heads grouped under their key head
    scores = (qg @ k.float().unsqueeze(-3).transpose(-1, -2)) * scale  # [..., Hkv, G, T, S]
    if mask is not None:
        m = mask.expand(*batch, hq, t, s).reshape(*batch, hkv, g, t, s)
        scores = scores.masked_fill(~m, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [..., Hkv, G, T]
    w = torch.exp(scores - lse.unsqueeze(-1).clamp(min=torch.finfo(torch.float32).min))
    out = w.nan_to_num_(0.0) @ v.float().unsqueeze(-3)  # [..., Hkv, G, T, d]
    return out.reshape(*batch, hq, t, d).to(q.dtype), lse.reshape(*batch, hq, t)


def merge_states(o_a: torch.Tensor, s_a: torch.Tensor, o_b: torch.Tensor, s_b: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over A ∪ B from the states over disjoint A and B.

    o_*: [..., T, d]; s_*: [..., T] float32 -> (o [..., T, d], s [..., T])."""
    s = torch.logaddexp(s_a, s_b)
    safe = torch.where(torch.isinf(s), torch.zeros_like(s), s)  # both empty: weights 0, not nan
    w_a, w_b = torch.exp(s_a - safe).unsqueeze(-1), torch.exp(s_b - safe).unsqueeze(-1)
    return (w_a * o_a.float() + w_b * o_b.float()).to(o_a.dtype), s


def cascade_attention(q: torch.Tensor, k_ctx: torch.Tensor, v_ctx: torch.Tensor, k_tree: torch.Tensor,
                      v_tree: torch.Tensor, tree_mask: torch.Tensor | None = None, scale: float | None = None,
                      ctx_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Queries of one or many trees over a shared context, as a two-level cascade.

    q: [..., Hq, T, d], any leading dims (a batch of rows shares the context);
    k_ctx, v_ctx: [Hkv, C, d], the committed context, visible to every query;
    k_tree, v_tree: [..., Hkv, N, d], each tree's (row's) own keys;
    tree_mask: bool [..., T, N] (True = visible: the ancestor mask) or None (all visible);
    ctx_mask: bool [C], the context slots in use (a static-shape buffer holding a shorter context),
    or None (all).
    -> [..., Hq, T, d], equal to `masked_attention` (on the context slots in use) up to float rounding.
    """
    *batch, hq, t, d = q.shape
    # level 1: every query of every row against the shared context, one pass
    flat = q.movedim(-3, 0).reshape(hq, -1, d)  # [Hq, batch*T, d]
    o_ctx, s_ctx = attention_with_lse(flat, k_ctx, v_ctx, ctx_mask, scale)
    o_ctx = o_ctx.reshape(hq, *batch, t, d).movedim(0, -3)  # [..., Hq, T, d]
    s_ctx = s_ctx.reshape(hq, *batch, t).movedim(0, -2)  # [..., Hq, T]
    # level 2: each row against its own keys, under its mask
    mask = None if tree_mask is None else tree_mask.unsqueeze(-3)  # broadcast over heads
    o_tree, s_tree = attention_with_lse(q, k_tree, v_tree, mask, scale)
    return merge_states(o_ctx, s_ctx, o_tree, s_tree)[0]


def masked_attention(q: torch.Tensor, k_ctx: torch.Tensor, v_ctx: torch.Tensor, k_tree: torch.Tensor,
                     v_tree: torch.Tensor, tree_mask: torch.Tensor | None = None, scale: float | None = None
                     ) -> torch.Tensor:
    """The reference: one attention over [context ; tree] per row, the context always visible.
    Same arguments and result as `cascade_attention`."""
    *batch, hq, t, _ = q.shape
    c, n = k_ctx.shape[-2], k_tree.shape[-2]
    k = torch.cat([k_ctx.expand(*batch, *k_ctx.shape), k_tree], dim=-2)  # [..., Hkv, C+N, d]
    v = torch.cat([v_ctx.expand(*batch, *v_ctx.shape), v_tree], dim=-2)
    tree = torch.ones(t, n, dtype=torch.bool, device=q.device) if tree_mask is None else tree_mask
    tree = tree.expand(*batch, t, n)
    mask = torch.cat([torch.ones(*batch, t, c, dtype=torch.bool, device=q.device), tree], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(-3), scale=scale,
                                          enable_gqa=k.shape[-3] != hq)
