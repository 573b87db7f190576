"""A tree's rows' GEMM (`tree_linear`): tens to hundreds of rows against a weight read once per
row group, the weight tile on the MMA's wide side, an optional K split summed in a fixed order
(inside the launch by the tile's last split, or by a second launch). Which weights run here, per
card: `gemm` (fast numerics) and `exact_gemm` (exact numerics)."""

from __future__ import annotations

import functools
import os

import torch

from specdiff.kernels.common import _next_pow2, pdl, triton, tl

TreeSetting = tuple[int, int, int, int, int]  # (block_n, block_k, k splits, warps, stages)

if triton is not None:
    from specdiff.kernels.common import _pdl_release, _pdl_wait, _round

    @triton.jit
    def _tree_gemm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, out_ptr, cnt_ptr, M, N, K, K_SPLIT, BIAS: tl.constexpr,
                          ROWS_A: tl.constexpr, ROWS_B: tl.constexpr, ROWS_T: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, PARTIAL: tl.constexpr, SPLITS: tl.constexpr, FIXUP: tl.constexpr,
                          PRECISION: tl.constexpr, INTERPRETED: tl.constexpr, PDL: tl.constexpr):
        # ROWS_T > 0: the last row group holds the rows past the full groups in a dot that wide (a
        # power of two from 16), so 257 rows compute as 128 + 128 + 16 rather than 3 x 128
        r0 = tl.program_id(0) * ROWS_A
        if ROWS_T > 0 and tl.program_id(0) == tl.num_programs(0) - 1:
            _tree_gemm_rows(x_ptr, w_ptr, b_ptr, y_ptr, out_ptr, cnt_ptr, M, N, K, K_SPLIT, r0, BIAS, ROWS_T, 0,
                            BLOCK_N, BLOCK_K, PARTIAL, SPLITS, FIXUP, PRECISION, INTERPRETED, PDL)
        else:
            _tree_gemm_rows(x_ptr, w_ptr, b_ptr, y_ptr, out_ptr, cnt_ptr, M, N, K, K_SPLIT, r0, BIAS, ROWS_A, ROWS_B,
                            BLOCK_N, BLOCK_K, PARTIAL, SPLITS, FIXUP, PRECISION, INTERPRETED, PDL)

    @triton.jit
    def _tree_gemm_rows(x_ptr, w_ptr, b_ptr, y_ptr, out_ptr, cnt_ptr, M, N, K, K_SPLIT, r0, BIAS: tl.constexpr,
                        ROWS_A: tl.constexpr, ROWS_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PARTIAL: tl.constexpr, SPLITS: tl.constexpr, FIXUP: tl.constexpr,
                        PRECISION: tl.constexpr, INTERPRETED: tl.constexpr, PDL: tl.constexpr):
        # program (row group, n block, k split) on rows r0 onwards. The weight tile is the MMA's
        # wide side and the tree's rows its narrow one, in two dots (ROWS_A a power of two, then ROWS_B more): 65 rows
        # run as 64 + 16, where one row block would pad them to 128. Each program reads its group's
        # rows once per k tile from L2, so a wide BLOCK_N keeps that read small against the
        # weight's; the split over K gives a narrow weight enough programs to fill the SMs. More
        # rows than two dots hold go in groups of ROWS_A, the groups of one weight tile side by side
        # (the fastest grid axis) so that it streams from HBM once. PARTIAL: fp32 sums of this k
        # slice go to y[split] ([splits, M, N]) for `_split_sum_kernel`; else rounded into y [M, N].
        # FIXUP: no second launch; the tile's last split to finish (a counter per tile in cnt_ptr,
        # zero between launches) adds the slices in split order into out [M, N] and resets it.
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < N
        ra = r0 + tl.arange(0, ROWS_A)
        k0 = tl.program_id(2) * K_SPLIT
        dt = x_ptr.dtype.element_ty
        _pdl_wait(PDL)
        acc_a = tl.zeros([BLOCK_N, ROWS_A], tl.float32)
        if ROWS_B > 0:
            rb = r0 + ROWS_A + tl.arange(0, ROWS_B)  # ROWS_B > 0: one group
            acc_b = tl.zeros([BLOCK_N, ROWS_B], tl.float32)
        for k in range(k0, k0 + K_SPLIT, BLOCK_K):
            rk = k + tl.arange(0, BLOCK_K)
            kmask = rk < K
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
            xa = tl.load(x_ptr + ra[None, :] * K + rk[:, None], mask=(ra < M)[None, :] & kmask[:, None], other=0.0)
            if INTERPRETED:  # the interpreter's dot multiplies bf16 bit patterns as integers, and its
                # fp32 BLAS may sum a row's products in an order set by the tile's shape; fp64
                # sums rounded to fp32 give a row the same bits in any call, as an MMA does
                acc_a += tl.dot(w.to(tl.float64), xa.to(tl.float64)).to(tl.float32)
            else:
                acc_a += tl.dot(w, xa, input_precision=PRECISION)  # [BLOCK_N, ROWS_A]
            if ROWS_B > 0:
                xb = tl.load(x_ptr + rb[None, :] * K + rk[:, None], mask=(rb < M)[None, :] & kmask[:, None],
                             other=0.0)
                if INTERPRETED:
                    acc_b += tl.dot(w.to(tl.float64), xb.to(tl.float64)).to(tl.float32)
                else:
                    acc_b += tl.dot(w, xb, input_precision=PRECISION)
        _pdl_release(PDL)
        _tree_gemm_store(acc_a, ra, rn, b_ptr, y_ptr, M, N, BIAS, PARTIAL, dt)
        if ROWS_B > 0:
            _tree_gemm_store(acc_b, rb, rn, b_ptr, y_ptr, M, N, BIAS, PARTIAL, dt)
        if FIXUP:
            tl.debug_barrier()  # every thread's slice stored before the count says so
            tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
            if tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu") == SPLITS - 1:
                _split_fixup(y_ptr, b_ptr, out_ptr, ra, rn, M, N, SPLITS, BIAS)
                if ROWS_B > 0:
                    _split_fixup(y_ptr, b_ptr, out_ptr, rb, rn, M, N, SPLITS, BIAS)
                tl.store(cnt_ptr + tile, 0)  # the next launch waits for this one's end

    @triton.jit
    def _split_fixup(p_ptr, b_ptr, out_ptr, rows, rn, M, N, SPLITS: tl.constexpr, BIAS: tl.constexpr):
        """The k slices of [rows, rn] ([SPLITS, M, N] fp32, read from L2: other SMs wrote them)
        added in split order, + bias, rounded into out: `_split_sum_kernel`'s sum, tile by tile."""
        mask = (rn < N)[:, None] & (rows < M)[None, :]
        offs = rows[None, :] * N + rn[:, None]
        acc = tl.load(p_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        for s in tl.static_range(1, SPLITS):
            acc += tl.load(p_ptr + s * M * N + offs, mask=mask, other=0.0, cache_modifier=".cg")
        if BIAS:
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + offs, _round(acc, out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _tree_gemm_store(acc, rows, rn, b_ptr, y_ptr, M, N, BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                         dt: tl.constexpr):
        """acc [BLOCK_N, rows] (features by rows) to y's [rows, features]."""
        mask = (rn < N)[:, None] & (rows < M)[None, :]
        offs = rows[None, :] * N + rn[:, None]
        if PARTIAL:
            tl.store(y_ptr + tl.program_id(2) * M * N + offs, acc, mask=mask)
        else:
            if BIAS:
                acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
            tl.store(y_ptr + offs, _round(acc, dt), mask=mask)

    @triton.jit
    def _split_sum_kernel(p_ptr, b_ptr, y_ptr, MN, N, SPLITS: tl.constexpr, BIAS: tl.constexpr,
                          BLOCK: tl.constexpr, PDL: tl.constexpr):
        # y = the k splits' fp32 sums added in split order (the same bits every run), + bias, rounded
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < MN
        _pdl_wait(PDL)
        acc = tl.load(p_ptr + i, mask=mask, other=0.0)
        for s in tl.static_range(1, SPLITS):
            acc += tl.load(p_ptr + s * MN + i, mask=mask, other=0.0)
        _pdl_release(PDL)
        if BIAS:
            acc += tl.load(b_ptr + i % N, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + i, _round(acc, y_ptr.dtype.element_ty), mask=mask)


# A K split's slices added inside `tree_linear`'s own launch by the tile's last split to finish
# (a counter per tile), not by a second launch: the same bits, one launch fewer per split GEMM.
# The counters live per device and are shared by every call: the kernels of a device's decode run
# on one stream, one after the other (a later launch waits for the one before to end, dependent
# launches included).
TREE_SPLIT_FIXUP = True
_COUNTERS: dict[torch.device, list[torch.Tensor]] = {}


def _fixup_counters(device: torch.device, tiles: int) -> torch.Tensor | None:
    """A zeroed int32 counter per tile, kept for the process (a captured graph holds its address);
    None where a larger buffer would have to be made during a graph capture."""
    held = _COUNTERS.setdefault(device, [])
    if held and held[-1].numel() >= tiles:
        return held[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    held.append(torch.zeros(max(tiles, 1 << 16), dtype=torch.int32, device=device))
    return held[-1]


TREE_DOT_ROWS = 80  # rows `tree_linear` runs in one or two dots (64 + 16); past them, row groups
# rows of one group of `tree_linear`'s programs past TREE_DOT_ROWS, widest first: the widest whose
# pipelined tiles fit shared memory. A group of 128 reads each weight tile half as often as one of
# 64 (8B gate/up at 257 rows on an H100: 187 against 200 us); the tiles that fit at 65 rows
# (64 + 16) fit a group of 64 at any row count.
TREE_GROUP_ROWS = (128, 64)
TREE_TAIL = True  # the rows past the last full group in a dot padded to 16 only, not a whole group


@functools.cache
def _shared_memory(device: torch.device) -> int:
    """Bytes of shared memory one program may take on `device` (no limit under the interpreter)."""
    if device.type != "cuda":
        return 1 << 30
    return getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 0)


def tiles_fit(rows: int, block_n: int, block_k: int, stages: int, itemsize: int, shared: int) -> bool:
    """Whether `stages` pipelined buffers of a row block and a weight tile fit `shared` bytes."""
    return stages * (rows + block_n) * block_k * itemsize <= shared


def tree_group_rows(block_n: int, block_k: int, stages: int, itemsize: int, device: torch.device) -> int:
    """The widest of TREE_GROUP_ROWS whose `stages` buffers of a weight tile and a row group fit."""
    shared = _shared_memory(device)
    return next((g for g in TREE_GROUP_ROWS if tiles_fit(g, block_n, block_k, stages, itemsize, shared)),
                TREE_GROUP_ROWS[-1])


def tree_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, block_n: int = 128,
                block_k: int = 128, splits: int = 1, num_warps: int = 4, num_stages: int = 3,
                group_rows: int | None = None) -> torch.Tensor:
    """`F.linear` for a tree's rows (tens to hundreds): x [M, K] @ weight [N, K].T -> [M, N], the
    weight tile on the MMA's wide side and the rows padded to 16 only (`_tree_gemm_kernel`); with
    splits > 1 the K range is cut in that many slices whose fp32 sums one more launch adds in a
    fixed order (the same launch's last split, under TREE_SPLIT_FIXUP), so the same input gives
    the same bits every run. Past TREE_DOT_ROWS the rows go in groups of group_rows (a power of two;
    default `tree_group_rows`), one dot each, the rows past the last full one in a narrower dot."""
    x = x.contiguous()  # the kernel steps through rows by K
    m, k = x.shape
    n = weight.shape[0]
    rows = -(-m // 16) * 16
    rows_b = rows_t = 0
    if rows > TREE_DOT_ROWS:
        rows_a = group_rows or tree_group_rows(block_n, block_k, num_stages, x.element_size(), x.device)
        tail = max(16, _next_pow2(m % rows_a)) if TREE_TAIL and m % rows_a else 0
        rows_t = tail if tail < rows_a else 0  # a tail as wide as a group is a group
    else:
        rows_a = 1 << (rows.bit_length() - 1)
        rows_b = _next_pow2(rows - rows_a) if rows > rows_a else 0
    k_split = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    splits = triton.cdiv(k, k_split)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    part = torch.empty(splits, m, n, dtype=torch.float32, device=x.device) if splits > 1 else y
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    launch = pdl(x.device)
    grid = (triton.cdiv(m, rows_a) if rows_b == 0 else 1, triton.cdiv(n, block_n), splits)
    counters = _fixup_counters(x.device, grid[0] * grid[1]) if TREE_SPLIT_FIXUP and splits > 1 else None
    _tree_gemm_kernel[grid](
        x, weight, weight if bias is None else bias, part, y, y if counters is None else counters, m, n, k, k_split,
        BIAS=bias is not None and (splits == 1 or counters is not None), ROWS_A=rows_a, ROWS_B=rows_b, ROWS_T=rows_t,
        BLOCK_N=block_n, BLOCK_K=block_k, PARTIAL=splits > 1, SPLITS=splits, FIXUP=counters is not None,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", INTERPRETED=interpreted, num_warps=num_warps,
        num_stages=num_stages, **launch)
    if splits > 1 and counters is None:
        block = 1024
        _split_sum_kernel[(triton.cdiv(m * n, block),)](
            part, weight if bias is None else bias, y, m * n, n, SPLITS=splits, BIAS=bias is not None, BLOCK=block,
            **launch)
    return y


def tree_linear_at(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, setting: TreeSetting
                   ) -> torch.Tensor:
    """`tree_linear` at a table's setting (block_n, block_k, splits, warps, stages)."""
    bn, bk, splits, warps, stages = setting
    return tree_linear(x, weight, bias, block_n=bn, block_k=bk, splits=splits, num_warps=warps, num_stages=stages)
