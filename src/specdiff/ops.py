"""Small tensor ops shared by the target fast path and the drafter."""

from __future__ import annotations

from typing import Sequence

import torch


def device_index(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """values as a [len] long tensor on `device`. On a GPU through pinned memory and a
    non-blocking copy: a copy from pageable memory would wait for the device (a host sync)."""
    host = torch.tensor(list(values), dtype=torch.long)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def read_together(*rows: torch.Tensor) -> torch.Tensor:
    """Same-shaped device tensors (floats, or token ids: float64 holds them exactly) read to the
    host in one copy, one synchronizing read where there would be one per tensor -> [R, ...] float64."""
    return torch.stack([r.double() for r in rows]).cpu()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half convention): x [..., heads, T, hd] with cos, sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin


def rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Llama/Qwen RMSNorm module's function as one fused kernel (`torch.rms_norm`) instead of
    the module's six elementwise ones: on a GPU the fast path is bound by kernel count.
    Same math; in fp32 it matches the module to rounding."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return torch.rms_norm(x, (x.shape[-1],), norm.weight, eps)
