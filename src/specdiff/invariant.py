"""Batch-invariant versions of the fused forward's ops: `--numerics exact`.

In bf16 a tree forward rounds a row differently from a one-row forward (a GEMM picks its tiling
and split by the row count; an attention reduces each row's keys in blocks whose masked gaps
depend on the tree), so near-ties flip and a speculative decode drifts from AR's. Here every
op computes each row as a call whose shapes and inputs depend on that row alone:

- `linear`: GEMM calls of a fixed row count, whatever the forward's;
- `tree_attention`: each row attends over exactly the keys it sees, gathered in position order
  (the committed slots, then its ancestors by depth): the same keys, in the same order and shape,
  as the AR step at that position reads;
- norms, RoPE, SiLU-multiply: the eager references, whose reductions run within one row.

Identical inputs of identical shapes give identical outputs, so a token's logits are bitwise the
same whether it is forwarded alone or inside a tree of any size. The price: a GEMM per 16 rows and
an attention call per tree depth, in eager PyTorch; correct on any device, fast on none.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from specdiff import kernels


ROWS = 16  # every GEMM call has exactly this many rows (the last chunk zero-padded)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear over fixed chunks of ROWS rows: x [N, K] -> [N, out]. Every call has the same
    shape whatever N is, and a GEMM's kernel treats each row of its tile alike, so a row's result
    depends on that row alone (the tests check this, position in the chunk included)."""
    n = x.shape[0]
    padded = torch.cat([x, x.new_zeros((-n) % ROWS, x.shape[1])])
    return torch.cat([F.linear(chunk, weight, bias) for chunk in padded.split(ROWS)])[:n]


def key_slots(ancestors: torch.Tensor, start: int) -> list[tuple[list[int], torch.Tensor]]:
    """Rows grouped by depth -> [(rows, slots [rows, start + depth + 1])]: each row's keys in
    position order, the committed slots then its path (a parent precedes its child)."""
    anc = ancestors.cpu()
    by_depth: dict[int, list[int]] = {}
    for i, count in enumerate(anc.sum(1).tolist()):
        by_depth.setdefault(count, []).append(i)
    committed = torch.arange(start)
    groups = []
    for count, rows in sorted(by_depth.items()):
        path = torch.stack([torch.nonzero(anc[i]).flatten() for i in rows]) + start  # [rows, count]
        groups.append((rows, torch.cat([committed.expand(len(rows), -1), path], 1).to(ancestors.device)))
    return groups


def tree_index(start: torch.Tensor, ancestors: torch.Tensor) -> dict:
    """What `tree_attention` reads of a forward's tree, made once for all its layers."""
    return {"groups": key_slots(ancestors, int(start))}


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                   ancestors: torch.Tensor, span: int, scale: float, groups: list | None = None) -> torch.Tensor:
    """`kernels.tree_attention_reference`'s contract, each row over its own keys in position order
    (`key_slots`; `groups`: them, made already), rows of one depth as one batched call (batch
    elements are computed apart): q [N, Hq, D] -> [N, Hq, D]."""
    out = torch.empty_like(q)
    for rows, slots in groups if groups is not None else key_slots(ancestors, int(start)):
        k, v = k_cache[:, slots].transpose(0, 1), v_cache[:, slots].transpose(0, 1)  # [rows, Hkv, keys, D]
        o = F.scaled_dot_product_attention(q[rows][:, :, None], k, v, scale=scale, enable_gqa=True)
        out[rows] = o[:, :, 0]
    return out


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`kernels.add_rms_norm_reference` one row at a time (x updated in place)."""
    if delta is not None:
        x.add_(delta)
    return torch.cat([kernels.rms_norm_reference(row, weight, eps) for row in x.split(1)])


# The op set `target.fused.FusedForward` runs in exact mode (same names as `specdiff.kernels`).
OPS = SimpleNamespace(
    linear=linear,
    add_rms_norm=add_rms_norm,
    qkv_rope_store=kernels.qkv_rope_store_reference,
    silu_mul=kernels.silu_mul_reference,
    swiglu=lambda x, w, b=None: kernels.silu_mul_reference(linear(x, w, b)),
    tree_index=tree_index,
    tree_attention=tree_attention,
    decode_gemm=None,
)
