"""GEMMs for decoding: a weight-streaming kernel for a few rows, and its batch-invariant use (every
row computed as it would be alone) for exact numerics."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from specdiff.kernels.common import triton, tl

if triton is not None:
    from specdiff.kernels.common import _round


if triton is not None:

    @triton.jit
    def _skinny_linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                              INTERPRETED: tl.constexpr):
        # one row block per program: any M. Row blocks vary fastest, so the programs that read one
        # weight tile run side by side and can share it through L2
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k in range(0, K, BLOCK_K):
            rk = k + tl.arange(0, BLOCK_K)
            kmask = rk < K
            x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm < M)[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=nmask[None, :] & kmask[:, None], other=0.0)
            if INTERPRETED:  # the interpreter's dot multiplies bf16 bit patterns as integers
                acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
            else:
                acc += tl.dot(x, w, input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        if BIAS:
            acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], _round(acc, y_ptr.dtype.element_ty),
                 mask=(rm < M)[:, None] & nmask[None, :])


SKINNY_ROWS = 16  # rows up to which `skinny_linear` reads the weight once for all of them
# the smallest weight `linear` streams itself: below it cuBLAS was as fast or faster on an H100
# (scripts/gpu_gemv.py: 3-15% faster from Qwen3-8B's 4096 x 4096, parity or slower at 1.7B's)
SKINNY_MIN_WEIGHT = 4096 * 4096


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` for a decoding forward: `skinny_linear` for a few rows of a large weight on a
    GPU, with the launch settings measured fastest for its shape; cuBLAS otherwise."""
    n, k = weight.shape
    if x.shape[0] > SKINNY_ROWS or n * k < SKINNY_MIN_WEIGHT or x.device.type != "cuda":
        return F.linear(x, weight, bias)
    if n * k <= SKINNY_MIN_WEIGHT:  # a square hidden x hidden projection (o)
        return skinny_linear(x, weight, bias, block_n=32, block_k=128, num_stages=5)
    if 16384 <= n < 65536:  # the fused gate/up projection
        return skinny_linear(x, weight, bias, block_n=64, block_k=128, num_stages=3)
    return skinny_linear(x, weight, bias, block_n=64, block_k=256, num_stages=5)


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, block_n: int = 32,
                  block_k: int = 256, num_warps: int = 4, num_stages: int = 4) -> torch.Tensor:
    """`F.linear` as a weight-streaming kernel: each program owns block_n output features of one
    block of SKINNY_ROWS rows and reads their weight rows once (a decode step of up to that many
    rows reads each weight once; the arithmetic is free). A row's result depends on that row
    alone: every tile has the same shape and sums K in the same order, whatever M is."""
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _skinny_linear_kernel[(triton.cdiv(m, SKINNY_ROWS), triton.cdiv(n, block_n))](
        x, weight, weight if bias is None else bias, y, m, n, k, BIAS=bias is not None, BLOCK_M=SKINNY_ROWS,
        BLOCK_N=block_n, BLOCK_K=block_k, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=num_warps, num_stages=num_stages)
    return y


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`skinny_linear` at any row count with settings chosen by the weight's shape alone: a row's
    result depends on that row alone (`--numerics exact`)."""
    n, k = weight.shape
    if n * k <= SKINNY_MIN_WEIGHT:
        return skinny_linear(x, weight, bias, block_n=32, block_k=128, num_stages=5)
    return skinny_linear(x, weight, bias, block_n=64, block_k=128, num_stages=3)
