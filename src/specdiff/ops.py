"""Small tensor ops shared by the target fast path and the drafter."""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half convention): x [..., heads, T, hd] with cos, sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin
