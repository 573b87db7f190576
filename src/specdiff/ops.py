"""Small tensor ops shared by the target fast path and the drafter."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def device_index(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """values as a [len] long tensor on `device`. On a GPU through pinned memory and a
    non-blocking copy: a copy from pageable memory would wait for the device (a host sync)."""
    host = torch.tensor(list(values), dtype=torch.long)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class StagedRow:
    """A device tensor that the host fills through a pinned staging copy: `host()` is the staging
    row as numpy (waiting only if its last copy is still being read), `send()` copies it over
    without making the host wait. A copy from pageable memory may wait for the device's queued
    work, which would be a second read in a round."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.long):
        pin = device.type == "cuda"
        self.device_row = torch.zeros(shape, dtype=dtype, device=device)
        self._host = torch.zeros(shape, dtype=dtype, pin_memory=pin)
        self._host_np = self._host.numpy()  # a view made once: each .numpy() is four torch ops of host time
        self._copied = torch.cuda.Event() if pin else None  # the staging row's last copy

    def host(self) -> np.ndarray:
        if self._copied is not None and not self._copied.query():
            self._copied.synchronize()  # still being read (only a loop that launches ahead waits here)
        return self._host_np

    def send(self) -> torch.Tensor:
        self.device_row.copy_(self._host, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        return self.device_row


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


class RopeTable:
    """cos/sin of every position below `size`, computed once by the model's own rotary module.
    A decoding forward then gathers its rows in one kernel where the module runs about eleven
    (casts, products, cat, cos, sin, scales) per call; the values are the module's, bit for bit.
    Rotary types whose frequencies follow the sequence's length ("dynamic", "longrope") have no
    table: they run the module every call."""

    def __init__(self, rotary: torch.nn.Module):
        self.rotary = rotary
        rope_type = str(getattr(rotary, "rope_type", "default"))
        self.static = "dynamic" not in rope_type and rope_type != "longrope"
        self.table: torch.Tensor | None = None  # [2, size, D]: cos, sin

    def build(self, size: int, like: torch.Tensor) -> None:
        """Cover positions [0, size) in like's dtype and device (never grows inside a graph: a
        captured forward keeps reading the table it was captured on)."""
        if self.static and (self.table is None or self.table.shape[1] != size or self.table.dtype != like.dtype):
            positions = torch.arange(size, device=like.device)[None]
            cos, sin = self.rotary(like[None], positions)
            self.table = torch.stack([cos[0], sin[0]])

    def __call__(self, positions: torch.Tensor, like: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N], each below `bound` (a host int) -> cos, sin [N, D] in like's dtype,
        contiguous. From the table where it covers `bound`, else from the module."""
        t = self.table
        if t is not None and bound <= t.shape[1] and t.dtype == like.dtype:
            both = t[:, positions.reshape(-1)]  # [2, N, D]: a parallel gather (index_select runs the rows in turn)
            return both[0], both[1]
        cos, sin = self.rotary(like[None], positions.reshape(1, -1))
        return cos[0].contiguous(), sin[0].contiguous()


def embed_rows(embed: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The embedding module's rows for ids. A plain `nn.Embedding` is read by one parallel gather:
    its own kernel (index_select) takes a block's few ids one after another on a GPU. Any other
    module (a scaled embedding) runs itself."""
    if type(embed) is torch.nn.Embedding:
        return embed.weight[ids]
    return embed(ids)
