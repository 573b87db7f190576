"""Tree attention: N tree rows over the committed cache slots and their tree ancestors, split over
the keys (fast numerics), or each row over its own keys in position order (exact numerics); the
PyTorch reference both must equal."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specdiff.kernels.common import BLOCK_N, _next_pow2, pdl, triton, tl

if triton is not None:
    from specdiff.kernels.common import _pdl_release, _pdl_wait, _round


def tree_visibility(ancestors: torch.Tensor, start: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[N, N] ancestor block, the tree's first slot, cache slots cols [S] -> [N, S] bool: row i sees
    every slot below start and the tree slots its ancestor row marks, nothing at or past start + N."""
    n = ancestors.shape[0]
    rel = cols - start  # [S] slot relative to the tree's first slot
    in_tree = (rel >= 0) & (rel < n)
    return (cols < start) | (ancestors.gather(1, rel.clamp(0, n - 1).expand(n, -1)) & in_tree)


def tree_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                             ancestors: torch.Tensor, span: int, scale: float) -> torch.Tensor:
    """q [N, Hq, D]; caches [Hkv, S, D]; start [1] long (the tree's first slot); ancestors [N, N]
    bool (row i sees tree slot j); span >= start + N -> [N, Hq, D]. Row i sees every slot below
    start and the tree slots its ancestor row marks; nothing at or past start + N."""
    visible = tree_visibility(ancestors, start, torch.arange(span, device=q.device))  # [N, span]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k_cache[None, :, :span], v_cache[None, :, :span],
                                         attn_mask=visible[None, None], scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)


@functools.lru_cache(maxsize=None)
def _flex(device_type: str):
    """FlexAttention and its block-mask builder: compiled on a GPU (its fused kernel), eager on a
    CPU (its reference loop, for tests)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if device_type == "cuda":
        return torch.compile(flex_attention, dynamic=False), create_block_mask
    return flex_attention, create_block_mask


def tree_attention_flex(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                        ancestors: torch.Tensor, span: int, scale: float, block_mask=None) -> torch.Tensor:
    """`tree_attention_reference` by FlexAttention: the visibility rule as its mask_mod (reading
    `start` and the ancestor block on the device), its block mask over [N, span] built per call
    unless one is passed (`tree_block_mask`). The Triton kernel's alternative, measured against it
    by `scripts/gpu_attention.py --flex`."""
    flex, _ = _flex(q.device.type)
    if block_mask is None:
        block_mask = tree_block_mask(start, ancestors, span)
    out = flex(q.transpose(0, 1)[None], k_cache[None, :, :span], v_cache[None, :, :span], block_mask=block_mask,
               scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)


def tree_block_mask(start: torch.Tensor, ancestors: torch.Tensor, span: int):
    """FlexAttention's block mask of `tree_visibility` for N tree rows over `span` slots."""
    n = ancestors.shape[0]

    def mask_mod(b, h, q_idx, kv_idx):
        rel = kv_idx - start[0]
        return (kv_idx < start[0]) | ((rel >= 0) & (rel < n) & ancestors[q_idx, rel.clamp(0, n - 1)])

    return _flex(ancestors.device.type)[1](mask_mod, 1, 1, n, span, device=ancestors.device)


if triton is not None:

    @triton.jit
    def _softmax_step(s, v, m_i, l_i, acc, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
        """One key block of online softmax: scores s [M, BN] (-inf where hidden), values v [BN, D]
        -> the updated running max, sum and unnormalised output."""
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_ref)
        p = tl.exp(s - m_ref[:, None])
        if INTERPRETED:  # the interpreter's dot multiplies bf16 bit patterns as integers
            pv = tl.dot(_round(p, v.dtype).to(tl.float32), v.to(tl.float32))
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + pv

    @triton.jit
    def _tree_attention_kernel(q_ptr, k_ptr, v_ptr, start_ptr, anc_ptr, out_ptr, part_ptr, ml_ptr,
                               N, HQ, HKV, cache_sh, cache_ss, scale,
                               G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               DIRECT: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
                               PDL: tl.constexpr):
        _pdl_wait(PDL)
        kvh = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # row = token * G + group member
        split = tl.program_id(2)
        rmask = rows < N * G
        tok = rows // G
        head = kvh * G + rows % G
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (tok[:, None] * HQ + head[:, None]) * D + d[None, :], mask=rmask[:, None], other=0.0)
        if INTERPRETED:  # the interpreter's dot multiplies bf16 bit patterns as integers
            q = q.to(tl.float32)
        start = tl.load(start_ptr)
        # the splits share the keys a row can see (start + N, read on the device), not the span
        # bucket's: a tree in a half-full bucket would leave its last splits idle and its first
        # with all the work
        keys = tl.cdiv(tl.cdiv(start + N, BLOCK_N), tl.num_programs(2)) * BLOCK_N
        lo = split * keys
        hi = tl.minimum(lo + keys, start + N)  # no slot at or past the tree's end is visible
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        k_base = k_ptr + kvh * cache_sh
        v_base = v_ptr + kvh * cache_sh
        for j in range(lo, hi, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            cmask = cols < hi
            k = tl.load(k_base + cols[None, :] * cache_ss + d[:, None], mask=cmask[None, :], other=0.0)  # [D, BN]
            if INTERPRETED:
                k = k.to(tl.float32)
            s = tl.dot(q, k, input_precision=PRECISION) * scale
            rel = cols - start
            tree = (rel >= 0) & cmask
            anc = tl.load(anc_ptr + tok[:, None] * N + rel[None, :], mask=rmask[:, None] & tree[None, :], other=0)
            visible = ((cols < start)[None, :] | (anc != 0)) & cmask[None, :]
            s = tl.where(visible, s, float("-inf"))
            v = tl.load(v_base + cols[:, None] * cache_ss + d[None, :], mask=cmask[:, None], other=0.0)  # [BN, D]
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, PRECISION, INTERPRETED)
        _pdl_release(PDL)
        if DIRECT:  # one split: normalise here
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows of the tile see nothing
            dst = out_ptr + (tok[:, None] * HQ + head[:, None]) * D + d[None, :]
            tl.store(dst, _round(out, out_ptr.dtype.element_ty), mask=rmask[:, None])
        else:  # partial (unnormalised) output, its running max and sum: `_combine_kernel` merges
            idx = (split * HKV + kvh) * (N * G) + rows
            tl.store(part_ptr + idx[:, None] * D + d[None, :], acc, mask=rmask[:, None])
            tl.store(ml_ptr + 2 * idx, m_i, mask=rmask)
            tl.store(ml_ptr + 2 * idx + 1, l_i, mask=rmask)

    @triton.jit
    def _combine_kernel(part_ptr, ml_ptr, out_ptr, N, HQ, HKV, SPLITS,
                        G: tl.constexpr, D: tl.constexpr, SPLITS_P2: tl.constexpr, PDL: tl.constexpr):
        _pdl_wait(PDL)
        _pdl_release(PDL)
        kvh = tl.program_id(0)
        row = tl.program_id(1)
        s = tl.arange(0, SPLITS_P2)
        smask = s < SPLITS
        idx = (s * HKV + kvh) * (N * G) + row
        m = tl.load(ml_ptr + 2 * idx, mask=smask, other=float("-inf"))
        l_s = tl.load(ml_ptr + 2 * idx + 1, mask=smask, other=0.0)
        w = tl.exp(m - tl.max(m, axis=0))  # splits that saw nothing: exp(-inf) = 0
        d = tl.arange(0, D)
        o = tl.load(part_ptr + idx[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
        out = tl.sum(o * w[:, None], axis=0) / tl.sum(l_s * w, axis=0)
        tok, head = row // G, kvh * G + row % G
        tl.store(out_ptr + (tok * HQ + head) * D + d, _round(out, out_ptr.dtype.element_ty))

    @triton.jit
    def _position_attention_kernel(q_ptr, k_ptr, v_ptr, start_ptr, path_ptr, depth_ptr, out_ptr, HQ, PATH_W,
                                   cache_sh, cache_ss, scale, G: tl.constexpr, D: tl.constexpr,
                                   BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                                   INTERPRETED: tl.constexpr):
        kvh = tl.program_id(0)
        row = tl.program_id(1).to(tl.int64)
        g = tl.arange(0, BLOCK_G)
        gmask = g < G
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (row * HQ + kvh * G + g)[:, None] * D + d[None, :], mask=gmask[:, None], other=0.0)
        if INTERPRETED:
            q = q.to(tl.float32)
        start = tl.load(start_ptr)
        total = start + tl.load(depth_ptr + row) + 1  # the row's keys: positions 0 .. its own
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        k_base = k_ptr + kvh * cache_sh
        v_base = v_ptr + kvh * cache_sh
        for p0 in range(0, total, BLOCK_N):  # blocks aligned in position space, as an AR step's
            pos = p0 + tl.arange(0, BLOCK_N)
            pmask = pos < total
            tree = pos >= start
            node = tl.load(path_ptr + row * PATH_W + (pos - start), mask=pmask & tree, other=0)
            slot = tl.where(tree, start + node, pos)
            k = tl.load(k_base + slot[None, :] * cache_ss + d[:, None], mask=pmask[None, :], other=0.0)
            if INTERPRETED:
                k = k.to(tl.float32)
            s = tl.where(pmask[None, :], tl.dot(q, k, input_precision=PRECISION) * scale, float("-inf"))
            v = tl.load(v_base + slot[:, None] * cache_ss + d[None, :], mask=pmask[:, None], other=0.0)
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, PRECISION, INTERPRETED)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + (row * HQ + kvh * G + g)[:, None] * D + d[None, :], _round(out, out_ptr.dtype.element_ty),
                 mask=gmask[:, None])


def _multiprocessors(device: torch.device) -> int:
    """0 off a GPU: the interpreter runs programs one by one, so splitting only adds work."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


# (row block, key splits, pipelining depth, warps) for trees of lo..hi nodes, each None for the
# rule's or Triton's choice; empty by default. A launch's cost alone and inside a forward differ,
# so the forward's A/B (`scripts/gpu_forward_ab.py`) sets this to price a launch where it runs.
LAUNCH_SETTINGS: dict[tuple[int, int], tuple[int | None, int | None, int | None, int | None]] = {}


def launch_setting(n: int) -> tuple[int | None, int | None, int | None, int | None]:
    """`LAUNCH_SETTINGS`' entry for a tree of n nodes, or the rule's (all None)."""
    return next((v for (lo, hi), v in LAUNCH_SETTINGS.items() if lo <= n <= hi), (None, None, None, None))


def attention_launch(rows: int, hkv: int, span: int, sms: int,
                     block_m: int | None = None) -> tuple[int, int, int]:
    """(row block, key splits, warps) for `rows` query rows (tokens x heads per KV head) per KV
    head over `span` slots on `sms` multiprocessors (0: the interpreter); `block_m` fixes the row
    block. The smallest row block (16, 32, 64) whose programs fit one wave of 8-warp programs (one
    per SM), else 32-row blocks of 4 warps (several share an SM); the keys unsplit where the
    blocks give half the SMs a program, else split to fill the GPU twice over. Measured alone on
    an H100 at Qwen3-8B's heads (`scripts/gpu_attention.py`): the best setting at 1, 16, 64 and
    256 nodes; at 65 nodes within 1.5 us of the best (32 rows: 18 us, where 16-row blocks, 136
    programs, took 26); at 257, 32 rows of 4 warps took 40 us, 128 rows of 8 warps 93 and 64
    rows 99."""
    programs = lambda m: hkv * -(-rows // m)  # noqa: E731
    warps = 8
    if block_m is None:
        if not sms:  # the interpreter runs programs one by one: the smallest tile that covers the rows
            block_m = 16 if rows <= 256 else 64
        else:
            block_m = next((m for m in (16, 32, 64) if programs(m) <= sms), None)
            if block_m is None:
                block_m, warps = 32, 4
    if 2 * programs(block_m) >= sms:
        return block_m, 1, warps
    return block_m, max(1, min(-(-span // BLOCK_N), 2 * sms // programs(block_m))), warps


@dataclass
class SplitAttention:
    """Tree attention over keys split into parts, not merged yet (`merge` merges them). Row r of
    KV head h is query row r // G, query head h * G + r % G."""

    part: torch.Tensor  # [splits, Hkv, N * G, D] fp32: each split's unnormalised output
    ml: torch.Tensor  # [splits, Hkv, N * G, 2] fp32: its running max and sum
    out: torch.Tensor  # [N, Hq, D], q's dtype: where `merge` writes

    @property
    def splits(self) -> int:
        return self.part.shape[0]

    @property
    def kv_heads(self) -> int:
        return self.part.shape[1]

    @property
    def group(self) -> int:
        return self.out.shape[1] // self.part.shape[1]

    @property
    def head_dim(self) -> int:
        return self.part.shape[3]

    def merge(self) -> torch.Tensor:
        """The attention's output [N, Hq, D] (`_combine_kernel`)."""
        hq, d = self.out.shape[1], self.head_dim
        _combine_kernel[(self.kv_heads, self.part.shape[2])](
            self.part, self.ml, self.out, self.out.shape[0], hq, self.kv_heads, self.splits, G=self.group, D=d,
            SPLITS_P2=_next_pow2(self.splits), **pdl(self.out.device))
        return self.out


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                   ancestors: torch.Tensor, span: int, scale: float, splits: int | None = None,
                   block_m: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                   defer_merge: bool = False) -> torch.Tensor | SplitAttention:
    """`tree_attention_reference` as one kernel (plus a merge when the keys are split). `span` (a
    host int, the most slots any row can see) sizes the launch; the kernel stops at start + N.
    splits: key splits (None: the rule's, `attention_launch`), sharing the start + N keys on the
    device; num_warps: None for the rule's; num_stages: the key
    loop's software pipelining depth (None: Triton's default); defer_merge: split keys are left
    unmerged (a `SplitAttention`) for the caller to merge."""
    n, hq, d = q.shape
    hkv = k_cache.shape[0]
    g = hq // hkv
    rows = n * g
    set_m, set_splits, set_stages, set_warps = launch_setting(n)
    block_m, splits, num_stages = block_m or set_m, splits or set_splits, num_stages or set_stages
    block_m, auto_splits, auto_warps = attention_launch(rows, hkv, span, _multiprocessors(q.device), block_m)
    splits, num_warps = splits or auto_splits, num_warps or set_warps or auto_warps
    row_blocks = triton.cdiv(rows, block_m)
    splits = min(splits, triton.cdiv(span, BLOCK_N))  # no more splits than key tiles
    out = torch.empty_like(q)
    direct = splits == 1
    part = ml = out  # unused when direct
    if not direct:
        part = torch.empty(splits, hkv, rows, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(splits, hkv, rows, 2, dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _tree_attention_kernel[(hkv, row_blocks, splits)](
        q, k_cache, v_cache, start, ancestors.view(torch.uint8), out, part, ml,
        n, hq, hkv, k_cache.stride(0), k_cache.stride(1), scale,
        G=g, D=d, BLOCK_M=block_m, BLOCK_N=BLOCK_N, DIRECT=direct, PRECISION=precision,
        INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", num_warps=num_warps,
        **({} if num_stages is None else {"num_stages": num_stages}), **pdl(q.device))
    if direct:
        return out
    split = SplitAttention(part, ml, out)
    return split if defer_merge else split.merge()


def tree_index(start: torch.Tensor, ancestors: torch.Tensor) -> dict:
    """What `tree_attention` reads beyond start and the ancestor block: nothing."""
    return {}


def ancestor_paths(ancestors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, N] bool -> (path [N, N + 1] int32: row i's ancestor at each depth, itself last; depth
    [N] int32), by device ops only (graph-capturable). A node's depth is its ancestor count - 1."""
    n = ancestors.shape[0]
    depth = ancestors.sum(1) - 1
    column = torch.where(ancestors, depth[None, :], n)  # where each ancestor goes; n: nowhere
    path = torch.zeros(n, n + 1, dtype=torch.int32, device=ancestors.device)
    path.scatter_(1, column, torch.arange(n, dtype=torch.int32, device=ancestors.device).expand(n, n))
    return path, depth.to(torch.int32)


def position_tree_index(start: torch.Tensor, ancestors: torch.Tensor) -> dict:
    """`position_attention`'s path table, made once per forward."""
    return {"paths": ancestor_paths(ancestors)}


def position_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                       ancestors: torch.Tensor, span: int, scale: float,
                       paths: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`tree_attention_reference`'s contract with each row computed as the AR step at its
    position would be: one program per (KV head, row) reads the row's keys in position order (the
    committed slots, then its path by depth) in blocks aligned at position 0, so a token's output
    is bitwise the same alone or in any tree (`--numerics exact`). paths: `ancestor_paths`, made
    already."""
    n, hq, d = q.shape
    hkv = k_cache.shape[0]
    g = hq // hkv
    path, depth = paths if paths is not None else ancestor_paths(ancestors)
    out = torch.empty_like(q)
    _position_attention_kernel[(hkv, n)](
        q, k_cache, v_cache, start, path, depth, out, hq, path.shape[1], k_cache.stride(0), k_cache.stride(1),
        scale, G=g, D=d, BLOCK_G=max(16, _next_pow2(g)), BLOCK_N=BLOCK_N,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", num_warps=4)
    return out
