"""GEMMs for decoding: a weight-streaming kernel for a few rows, its glued form (a layer's norm,
SiLU-multiply or residual add inside), and the per-card tables of which runs where, this kernel,
a tree's rows' GEMM (`tree_gemm`) or cuBLAS (exact numerics' use of them: `exact_gemm`)."""

from __future__ import annotations

import copy
import functools
import os

import torch
import torch.nn.functional as F

from specdiff.kernels.common import pdl, triton, tl
from specdiff.kernels.elementwise import silu_mul
from specdiff.kernels.tree_gemm import TreeSetting, tree_linear_at

if triton is not None:
    from specdiff.kernels.common import _pdl_release, _pdl_wait, _prefetch_l2, _round

    @triton.jit
    def _decode_gemm_kernel(x_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, M, N, K, eps,
                            NORM: tl.constexpr, BIAS: tl.constexpr, RESIDUAL: tl.constexpr, SWIGLU: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                            INTERPRETED: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr):
        # one row block per program: any M. Row blocks vary fastest, so the programs that read one
        # weight tile run side by side and can share it through L2. With no flag this is the plain
        # weight-streaming GEMM (`skinny_linear`); the flags fold a layer's glue in. NORM: RMSNorm
        # of the input rows in the prologue (each program sums its rows' squares itself,
        # elementwise until one reduction at the end: the rows are a few KB, read from L2), rounded
        # as `add_rms_norm` rounds. SWIGLU: the weight holds 2N rows, gate then up; a program reads its BLOCK_N gate
        # rows and the matching up rows as one tile and multiplies SiLU(gate) by up in the
        # epilogue. RESIDUAL: the product is added into y in place (the residual stream). No split
        # over K: one program owns an output tile.
        TILE_N: tl.constexpr = 2 * BLOCK_N if SWIGLU else BLOCK_N
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, TILE_N)
        if SWIGLU:
            rn = tl.program_id(1) * BLOCK_N + cols % BLOCK_N  # the output feature of each tile column
            wrow = tl.where(cols < BLOCK_N, rn, N + rn)  # its weight row (the up half past N)
        else:
            rn = tl.program_id(1) * BLOCK_N + cols
            wrow = rn
        mmask, nmask = rm < M, rn < N
        dt = x_ptr.dtype.element_ty
        if PDL:  # the weight is no kernel's output: its first tiles head for L2 before the wait
            for k in tl.static_range(0, PREFETCH * BLOCK_K, 64):
                _prefetch_l2(w_ptr + wrow * K + k, mask=nmask & (k < K))
        _pdl_wait(PDL)
        if NORM:
            sq = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
            for k in range(0, K, BLOCK_K):
                rk = k + tl.arange(0, BLOCK_K)
                xs = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=mmask[:, None] & (rk < K)[None, :],
                             other=0.0).to(tl.float32)
                sq += xs * xs
            rstd = tl.rsqrt(tl.sum(sq, axis=1) / K + eps)[:, None]
        acc = tl.zeros([BLOCK_M, TILE_N], tl.float32)
        for k in range(0, K, BLOCK_K):
            rk = k + tl.arange(0, BLOCK_K)
            kmask = rk < K
            x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
            if NORM:  # HF's rounding: normalise in fp32, cast, then scale by the weight
                nw = tl.load(nw_ptr + rk, mask=kmask, other=0.0).to(tl.float32)[None, :]
                if INTERPRETED:  # its casts truncate: `_round` rounds as the GPU's casts do
                    x = _round(_round(x.to(tl.float32) * rstd, dt).to(tl.float32) * nw, dt)
                else:
                    x = ((x.to(tl.float32) * rstd).to(dt).to(tl.float32) * nw).to(dt)
            w = tl.load(w_ptr + wrow[None, :] * K + rk[:, None], mask=nmask[None, :] & kmask[:, None], other=0.0)
            if INTERPRETED:  # bf16 bit patterns multiplied as integers, and a BLAS whose order of
                # sums follows the tile's shape: fp64 sums rounded to fp32, as in `_tree_gemm_kernel`
                acc += tl.dot(x.to(tl.float64), w.to(tl.float64)).to(tl.float32)
            else:
                acc += tl.dot(x, w, input_precision=PRECISION)  # [BLOCK_M, TILE_N]
        _pdl_release(PDL)
        if BIAS:
            acc += tl.load(b_ptr + wrow, mask=nmask, other=0.0).to(tl.float32)[None, :]
        if SWIGLU:  # `silu_mul`'s rounding: the projections, SiLU(gate), then the product
            gate, up = tl.split(tl.permute(tl.reshape(acc, [BLOCK_M, 2, BLOCK_N]), (0, 2, 1)))
            g = _round(gate, dt).to(tl.float32)
            s = _round(g / (1.0 + tl.exp(-g)), dt)
            out = _round(s.to(tl.float32) * _round(up, dt).to(tl.float32), dt)
            on = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        else:
            out = _round(acc, dt)
            on = rn
        ptrs = y_ptr + rm[:, None] * N + on[None, :]
        omask = mmask[:, None] & (on < N)[None, :]
        if RESIDUAL:
            out = _round(tl.load(ptrs, mask=omask, other=0.0).to(tl.float32) + out.to(tl.float32), dt)
        tl.store(ptrs, out, mask=omask)


# k tiles of its weight a GEMM launched dependently prefetches into L2 before it waits for the
# kernel before it (0: none). 4 tiles did not help the Qwen3-8B forward on an H100 (5.82 -> 5.87
# ms, `scripts/gpu_pdl.sh`).
PREFETCH_TILES = 0

SKINNY_ROWS = 16  # rows up to which `skinny_linear` reads the weight once for all of them
# the smallest weight `linear` streams itself: below it cuBLAS was as fast or faster on an H100
# (scripts/gpu_gemv.py: 3-15% faster from Qwen3-8B's 4096 x 4096, parity or slower at 1.7B's;
# streaming 1.7B's too took its 16-row forward from 1.94 to 2.11 ms, `scripts/gpu_pdl.sh`)
SQUARE_8B = 4096 * 4096  # Qwen3-8B's hidden x hidden (o) projection
SKINNY_MIN_WEIGHT = SQUARE_8B

# The streaming kernel's settings for up to SKINNY_ROWS rows, measured per card: {card name:
# {(rows, K): {row count: (block_n, block_k, warps, stages) or "cublas"}}}, the card's name as
# torch reports it (its longest listed prefix applies). A row count takes the smallest measured
# one at or above it; "cublas" where cuBLAS was faster at that count. Shapes and row counts a
# card does not list take `linear`'s settings by shape class, measured on an H100. Measured in
# bf16 (`scripts/gpu_decode_gemm.py`, GLUE=0); other dtypes take the defaults.
StreamSetting = tuple[int, int, int, int] | str
MEASURED_STREAM_SETTINGS: dict[str, dict[tuple[int, int], dict[int, StreamSetting]]] = {
    # Qwen3-8B's and 1.7B's weights. At 8B it took the 16-row forward 6.11 -> 6.04 ms and the drafter
    # step 1.33 -> 1.30 (dflash's round 7.85 -> 7.62); at 1.7B the one-row forward 1.87 -> 1.77
    # (ar 2.02 -> 1.86 ms/token). Streaming 1.7B's narrow weights at 16 rows, though faster alone,
    # took its 16-row forward 1.94 -> 2.06 ms: cuBLAS keeps them there, except gate/up, which with
    # SiLU-multiply in its epilogue (`swiglu`) took that forward 2.06 -> 1.94 ms (scripts/gpu_forward_ab.py).
    "NVIDIA H100 80GB HBM3": {
        (6144, 4096): {1: (32, 128, 4, 5), 16: (64, 256, 4, 3)}, (4096, 4096): {16: (32, 512, 4, 3)},
        (24576, 4096): {16: (64, 128, 4, 3)}, (4096, 12288): {16: (32, 512, 4, 3)},
        (151936, 4096): {16: (128, 256, 4, 3)},  # a count's setting covers the counts below it
        (4096, 2048): {1: (32, 128, 4, 7), 16: "cublas"}, (2048, 2048): {1: (32, 128, 4, 5), 16: "cublas"},
        (12288, 2048): {16: (32, 128, 4, 3)}, (2048, 6144): {1: (16, 512, 4, 3), 16: "cublas"},
        (151936, 2048): {1: (128, 256, 4, 3)},
    },
}
STREAM_SETTINGS = copy.deepcopy(MEASURED_STREAM_SETTINGS)  # what runs (`scripts/ab.py` may change it)


@functools.lru_cache(maxsize=None)
def _card_name(device_index: int) -> str:
    return torch.cuda.get_device_name(device_index)  # asked once: an eager forward's every GEMM needs it


def _card_key(device: torch.device) -> str:
    if device.type != "cuda":
        return "interpreter"
    return _card_name(torch.cuda.current_device() if device.index is None else device.index)


def _card_table(tables: dict, device: torch.device) -> dict:
    """From per-card tables ({card name: table}), the table of the device's card (its longest
    listed prefix; "interpreter" off a GPU), {} where none is listed."""
    if not tables:
        return {}
    name = _card_key(device)
    cards = sorted((c for c in tables if name.startswith(c)), key=len)
    return tables[cards[-1]] if cards else {}


def _measured(tables: dict, device: torch.device, n: int, k: int, m: int):
    """From per-card tables ({card name: {(n, k): {row count: setting}}}), the device card's entry
    for m rows of an [n, k] weight: the smallest measured row count at or above m; None where none
    is listed."""
    table = _card_table(tables, device).get((n, k), {})
    return next((table[rows] for rows in sorted(table) if m <= rows), None)


def stream_settings(device: torch.device, n: int, k: int, m: int) -> StreamSetting | None:
    """The card's measured choice for m rows of an [n, k] weight, None where it lists none."""
    return _measured(STREAM_SETTINGS, device, n, k, m)


# A tree's rows (past SKINNY_ROWS), per card as `MEASURED_STREAM_SETTINGS` is: {card name:
# {(rows, K): {row count: `tree_linear`'s (block_n, block_k, k splits, warps, stages) or None}}},
# None where cuBLAS was as fast (within 3%; scripts/gpu_gemm_rows.py). A row count takes the
# smallest measured one at or above it; past the largest, and for shapes and cards not listed,
# cuBLAS.
_H100_TREE_SETTINGS: dict[tuple[int, int], dict[int, TreeSetting | None]] = {
    # Qwen3-8B at ddtree@16's 17 rows and @64's 65: gate/up at 17 (69.6 against cuBLAS's 73.5 us),
    # down (37.8 against 40.6; 41.3 against 43.0) and the LM head (410 against 441; 429 against
    # 453); the forward of 17 nodes 6.69 -> 6.36 ms, of 65 7.18 -> 7.04 (tree_gemm_h100/call1)
    (24576, 4096): {17: (64, 128, 1, 4, 3), 65: None},
    (4096, 12288): {17: (128, 128, 4, 4, 3), 65: (64, 256, 2, 4, 3)},
    (151936, 4096): {65: (128, 128, 1, 4, 3)},
    # Qwen3-1.7B: o at 17 (6.4 against 6.7 us), gate/up (19.3 against 20.1; 21.1 against 22.1), down
    # (11.8 against 14.0; 12.8 against 15.0), the LM head (208 against 222; 224 against 232); the
    # forward of 17 nodes 2.13 -> 1.96 ms, of 65 2.41 -> 2.26 (invariant_gemm_h100/call1)
    (4096, 2048): {17: None, 65: None}, (2048, 2048): {17: (64, 128, 4, 4, 4), 65: None},
    (12288, 2048): {65: (64, 128, 1, 4, 3)}, (2048, 6144): {65: (64, 128, 4, 4, 4)},
    (151936, 2048): {17: (128, 128, 1, 4, 3), 65: (64, 128, 1, 4, 3)},
}
MEASURED_TREE_SETTINGS: dict[str, dict[tuple[int, int], dict[int, TreeSetting | None]]] = {
    "NVIDIA H100 80GB HBM3": _H100_TREE_SETTINGS,
    # the H100's table, not measured on an H200: the same SMs and shared memory, more bandwidth
    "NVIDIA H200": _H100_TREE_SETTINGS,
}
TREE_GEMM_SETTINGS = copy.deepcopy(MEASURED_TREE_SETTINGS)  # what runs (`scripts/ab.py` may change it)


def tree_tables_apply(x: torch.Tensor) -> bool:
    """Whether the `tree_linear` tables apply to x's dtype: they were measured in bf16, and another
    dtype's tiles may not fit a GPU's shared memory (the interpreter takes any)."""
    return x.dtype == torch.bfloat16 or not x.is_cuda


def tree_gemm_settings(device: torch.device, n: int, k: int, m: int) -> TreeSetting | None:
    """The card's measured `tree_linear` setting for m rows of an [n, k] weight, None for cuBLAS."""
    return _measured(TREE_GEMM_SETTINGS, device, n, k, m)


def _stream_setting(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int, int] | None:
    """The streaming kernel's (block_n, block_k, warps, stages) for x's rows of `weight`, measured
    fastest for its shape; None where cuBLAS runs them (past SKINNY_ROWS rows, or off a GPU
    without Triton's interpreter)."""
    n, k = weight.shape
    if x.shape[0] > SKINNY_ROWS or not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    card = stream_settings(x.device, n, k, x.shape[0]) if x.dtype == torch.bfloat16 and x.is_cuda else None
    if card == "cublas":
        return None
    if card is not None:
        return card
    if n * k < SKINNY_MIN_WEIGHT:
        return None
    if n * k < SQUARE_8B:  # narrower than Qwen3-8B (streamed only where SKINNY_MIN_WEIGHT is lowered)
        return DECODE_GEMM_SETTINGS.get((n, k), DECODE_GEMM_DEFAULT)  # the one-row settings measured for its shape
    if n * k == SQUARE_8B:  # a square hidden x hidden projection (o)
        return 32, 128, 4, 5
    if 16384 <= n < 65536:  # the fused gate/up projection
        return 64, 128, 4, 3
    return 64, 256, 4, 5


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` for a decoding forward: `skinny_linear` for a few rows of a large weight on a
    GPU and `tree_linear` for a tree's rows where each was measured faster, with the launch
    settings measured fastest for its shape; cuBLAS otherwise."""
    n, k = weight.shape
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return F.linear(x, weight, bias)
    if x.shape[0] > SKINNY_ROWS:
        tree = tree_gemm_settings(x.device, n, k, x.shape[0]) if tree_tables_apply(x) else None
        return F.linear(x, weight, bias) if tree is None else tree_linear_at(x, weight, bias, tree)
    setting = _stream_setting(x, weight)
    if setting is None:
        return F.linear(x, weight, bias)
    return decode_gemm(x, weight, bias, settings=setting)


# SiLU(gate) * up in the epilogue of the gate/up GEMM wherever that GEMM streams its weight: one
# launch where `linear` then `silu_mul` take two, the kernel boundaries being most of what a
# decoding forward spends beyond reading its weights.
SWIGLU_EPILOGUE = True


def swiglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K], a fused gate/up weight [2I, K] (gate rows, then up) -> SiLU(gate) * up [M, I]:
    one streaming GEMM with the product in its epilogue where `linear` would stream this weight
    for M rows (Triton's interpreter included), else `linear` then `silu_mul` (a tree's rows: the
    epilogue there measured no faster than cuBLAS then `silu_mul` on an H100, +0.23 to -0.003 ms
    of an 8B forward). Rounds as `silu_mul` does: the projections, SiLU(gate), then the
    product."""
    setting = _stream_setting(x, weight) if SWIGLU_EPILOGUE and x.shape[0] <= SKINNY_ROWS else None
    if setting is None:
        return silu_mul(linear(x, weight, bias))
    bn, bk, warps, stages = setting  # a tile of bn / 2 gate rows and their up rows: the same bytes in flight
    return decode_gemm(x, weight, bias, swiglu=True, settings=(max(16, bn // 2), bk, warps, stages))


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, block_n: int = 32,
                  block_k: int = 256, num_warps: int = 4, num_stages: int = 4, block_m: int = SKINNY_ROWS
                  ) -> torch.Tensor:
    """`F.linear` as a weight-streaming kernel: each program owns block_n output features of one
    block of SKINNY_ROWS rows and reads their weight rows once (a decode step of up to that many
    rows reads each weight once; the arithmetic is free). A row's result depends on that row
    alone: every tile has the same shape and sums K in the same order, whatever M is. A larger
    block_m reads the weight once for that many rows."""
    return decode_gemm(x, weight, bias, settings=(block_n, block_k, num_warps, num_stages), block_m=block_m)


# Launch settings of the glued GEMM by weight shape (rows, K): (block_n, block_k, warps, stages),
# each the fastest for one row on an H100 (scripts/gpu_decode_gemm.py); other shapes take DEFAULT
DECODE_GEMM_DEFAULT = (32, 128, 4, 4)
DECODE_GEMM_SETTINGS: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (6144, 4096): (64, 256, 4, 3), (4096, 4096): (32, 512, 4, 3), (24576, 4096): (64, 128, 8, 4),  # Qwen3-8B
    (4096, 12288): (32, 512, 4, 3), (151936, 4096): (64, 256, 4, 5),
    (4096, 2048): (32, 256, 4, 5), (2048, 2048): (16, 512, 4, 3), (12288, 2048): (64, 128, 8, 4),  # Qwen3-1.7B
    (2048, 6144): (16, 512, 4, 3), (151936, 2048): (64, 256, 4, 3),
}


def decode_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                norm: tuple[torch.Tensor, float] | None = None, swiglu: bool = False,
                residual: torch.Tensor | None = None,
                settings: tuple[int, int, int, int] | None = None, block_m: int = SKINNY_ROWS) -> torch.Tensor:
    """A decoding GEMM with its glue, one kernel: x [M, K] -> y = RMSNorm(x) (norm: (weight,
    eps)) @ weight.T + bias; swiglu: weight [2I, K] (gate then up) gives SiLU(gate) * up [M, I];
    residual [M, N]: y is added into it in place (and returned). Each step rounds as the separate
    kernels do (`add_rms_norm`, `silu_mul`), so only the order of the sums differs."""
    m, k = x.shape
    rows = weight.shape[0]
    n = rows // 2 if swiglu else rows
    bn, bk, warps, stages = settings or DECODE_GEMM_SETTINGS.get((rows, k), DECODE_GEMM_DEFAULT)
    y = residual if residual is not None else torch.empty(m, n, dtype=x.dtype, device=x.device)
    nw, eps = norm if norm is not None else (weight, 0.0)
    _decode_gemm_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, bn))](
        x, nw, weight, weight if bias is None else bias, y, m, n, k, eps, NORM=norm is not None,
        BIAS=bias is not None, RESIDUAL=residual is not None, SWIGLU=swiglu, BLOCK_M=block_m, BLOCK_N=bn,
        BLOCK_K=bk, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", num_warps=warps, num_stages=stages,
        PREFETCH=PREFETCH_TILES, **pdl(x.device))
    return y
