"""The glue between a layer's GEMMs, each kernel beside its PyTorch reference: the residual add
with RMSNorm, the QKV split with q/k norms, RoPE and the cache write, and SwiGLU's SiLU-multiply."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from specdiff.kernels.common import _next_pow2, pdl, triton, tl
from specdiff.ops import apply_rope

if triton is not None:
    from specdiff.kernels.common import _pdl_release, _pdl_wait, _round


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face's Llama/Qwen RMSNorm: normalise in fp32, cast back, then scale."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def add_rms_norm_reference(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                           eps: float) -> torch.Tensor:
    """x [N, H] += delta (in place; None: no add) -> RMSNorm(x) [N, H]."""
    if delta is not None:
        x.add_(delta)
    return rms_norm_reference(x, weight, eps)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE as Hugging Face computes it: x [N, heads, D], cos/sin [N, D]."""
    return apply_rope(x, cos[:, None], sin[:, None])


def qkv_rope_store_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             norm_weight: torch.Tensor | None, eps: float, k_cache: torch.Tensor,
                             v_cache: torch.Tensor, slots: torch.Tensor, num_heads: int) -> torch.Tensor:
    """qkv [N, (Hq + 2 Hkv) * D] (one fused projection); cos/sin [N, D]; norm_weight [2, D] (q, k
    RMSNorm weights) or None; caches [Hkv, S, D]; slots [N] -> q [N, Hq, D] after norm and RoPE.
    K (normed, rotated) and V are written to the caches at `slots`."""
    n, hkv, d = qkv.shape[0], k_cache.shape[0], k_cache.shape[-1]
    q, k, v = qkv.view(n, -1, d).split([num_heads, hkv, hkv], dim=1)
    if norm_weight is not None:
        q, k = rms_norm_reference(q, norm_weight[0], eps), rms_norm_reference(k, norm_weight[1], eps)
    q, k = rope_reference(q, cos, sin), rope_reference(k, cos, sin)
    k_cache.index_copy_(1, slots, k.transpose(0, 1))
    v_cache.index_copy_(1, slots, v.transpose(0, 1))
    return q


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """[N, 2I] (gate then up) -> SiLU(gate) * up [N, I], each op rounded as eager PyTorch does."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, d_ptr, w_ptr, out_ptr, N, H, eps, ADD: tl.constexpr, ROWS: tl.constexpr,
                             BLOCK: tl.constexpr, PDL: tl.constexpr):
        # ROWS rows a program, each normalised on its own
        _pdl_wait(PDL)
        _pdl_release(PDL)
        row = (tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS))[:, None]
        offs = tl.arange(0, BLOCK)[None, :]
        m = (offs < H) & (row < N)
        dt = x_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * H + offs, mask=m, other=0.0)
        if ADD:
            d = tl.load(d_ptr + row * H + offs, mask=m, other=0.0)
            x = _round(x.to(tl.float32) + d.to(tl.float32), dt)
            tl.store(x_ptr + row * H + offs, x, mask=m)
        xf = x.to(tl.float32)
        y = _round(xf * tl.rsqrt(tl.sum(xf * xf, axis=1) / H + eps)[:, None], dt)
        w = tl.load(w_ptr + offs, mask=offs < H, other=0.0)
        tl.store(out_ptr + row * H + offs, _round(y.to(tl.float32) * w.to(tl.float32), dt), mask=m)

    @triton.jit
    def _qkv_rope_store_kernel(qkv_ptr, cos_ptr, sin_ptr, nw_ptr, q_ptr, kc_ptr, vc_ptr, slot_ptr, N,
                               HQ, HKV, cache_sh, cache_ss, eps, ROW, nw_sl, cache_sl, NORM: tl.constexpr,
                               D: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
        # program (block of head rows, layer): head row r is token r // H's head r % H (H = HQ + 2
        # HKV, in [q | k | v] order), so a block may span tokens; a token's row holds every layer's
        # heads, ROW elements; a layer's norm weights and caches sit nw_sl and cache_sl elements apart
        _pdl_wait(PDL)
        _pdl_release(PDL)
        H = HQ + 2 * HKV
        r = tl.program_id(0).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
        n, hh = r // H, r % H  # [BLOCK_H] tokens and heads
        layer = tl.program_id(1).to(tl.int64)
        nw_ptr += layer * nw_sl
        kc_ptr += layer * cache_sl
        vc_ptr += layer * cache_sl
        HALF: tl.constexpr = D // 2
        dt = qkv_ptr.dtype.element_ty
        i = tl.arange(0, HALF)[None, :]
        live = n < N
        is_q, is_v = live & (hh < HQ), live & (hh >= HQ + HKV)
        is_k = live & ~is_q & ~is_v
        src = qkv_ptr + (n * ROW + layer * H * D + hh * D)[:, None]
        x1 = tl.load(src + i, mask=live[:, None], other=0.0)  # [BLOCK_H, D/2]
        x2 = tl.load(src + HALF + i, mask=live[:, None], other=0.0)
        r1, r2 = x1, x2
        if NORM:
            f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
            rs = tl.rsqrt((tl.sum(f1 * f1, axis=1) + tl.sum(f2 * f2, axis=1)) / D + eps)[:, None]
            woff = tl.where(is_q, 0, D)[:, None]
            w1 = tl.load(nw_ptr + woff + i, mask=(is_q | is_k)[:, None], other=0.0).to(tl.float32)
            w2 = tl.load(nw_ptr + woff + HALF + i, mask=(is_q | is_k)[:, None], other=0.0).to(tl.float32)
            r1 = _round(_round(f1 * rs, dt).to(tl.float32) * w1, dt)
            r2 = _round(_round(f2 * rs, dt).to(tl.float32) * w2, dt)
        ro = (tl.where(live, n, 0) * D)[:, None] + i  # the token's angles
        c1 = tl.load(cos_ptr + ro).to(tl.float32)
        c2 = tl.load(cos_ptr + ro + HALF).to(tl.float32)
        s1 = tl.load(sin_ptr + ro).to(tl.float32)
        s2 = tl.load(sin_ptr + ro + HALF).to(tl.float32)
        a1, a2 = r1.to(tl.float32), r2.to(tl.float32)
        o1 = _round(_round(a1 * c1, dt).to(tl.float32) + _round(-a2 * s1, dt).to(tl.float32), dt)
        o2 = _round(_round(a2 * c2, dt).to(tl.float32) + _round(a1 * s2, dt).to(tl.float32), dt)
        slot = tl.load(slot_ptr + n, mask=live, other=0)[:, None]
        q_dst = q_ptr + (n * HQ + tl.where(is_q, hh, 0))[:, None] * D
        tl.store(q_dst + i, o1, mask=is_q[:, None])
        tl.store(q_dst + HALF + i, o2, mask=is_q[:, None])
        k_dst = kc_ptr + tl.where(is_k, hh - HQ, 0)[:, None] * cache_sh + slot * cache_ss
        tl.store(k_dst + i, o1, mask=is_k[:, None])
        tl.store(k_dst + HALF + i, o2, mask=is_k[:, None])
        v_dst = vc_ptr + tl.where(is_v, hh - HQ - HKV, 0)[:, None] * cache_sh + slot * cache_ss
        tl.store(v_dst + i, x1, mask=is_v[:, None])  # V goes to the cache as projected
        tl.store(v_dst + HALF + i, x2, mask=is_v[:, None])

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, N, I, ROWS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        _pdl_wait(PDL)
        _pdl_release(PDL)
        row = (tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS))[:, None]
        offs = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK))[None, :]
        m = (offs < I) & (row < N)
        dt = gu_ptr.dtype.element_ty
        g = tl.load(gu_ptr + row * 2 * I + offs, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * I + I + offs, mask=m, other=0.0).to(tl.float32)
        s = _round(g / (1.0 + tl.exp(-g)), dt)
        tl.store(out_ptr + row * I + offs, _round(s.to(tl.float32) * u, dt), mask=m)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`add_rms_norm_reference` in one kernel: x [N, H] contiguous, updated in place."""
    n, h = x.shape
    out = torch.empty_like(x)
    rows = _rows_per_program()
    _add_rms_norm_kernel[(triton.cdiv(n, rows),)](x, x if delta is None else delta, weight, out, n, h, eps,
                                                  ADD=delta is not None, ROWS=rows, BLOCK=_next_pow2(h),
                                                  num_warps=8 if h >= 2048 else 4, **pdl(x.device))
    return out


def _rows_per_program() -> int:
    """Rows per program of the row-wise kernels (norm, SiLU-multiply): one on a GPU, where a row
    fills a program; 16 under Triton's interpreter, which runs each program's every op in Python."""
    return 16 if os.environ.get("TRITON_INTERPRET") == "1" else 1


def _head_rows() -> int:
    """Head rows per `_qkv_rope_store_kernel` program: 8 keeps a GPU's programs small and many;
    Triton's interpreter runs each program's every op in Python, so there fewer, wider ones."""
    return 128 if os.environ.get("TRITON_INTERPRET") == "1" else 8


def qkv_rope_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor | None,
                   eps: float, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                   num_heads: int) -> torch.Tensor:
    """`qkv_rope_store_reference` in one kernel: one program per `_head_rows()` head rows, the
    tokens' heads in a row."""
    n = qkv.shape[0]
    hkv, _, d = k_cache.shape
    q = torch.empty(n, num_heads, d, dtype=qkv.dtype, device=qkv.device)
    block_h = _head_rows()
    _qkv_rope_store_kernel[(triton.cdiv(n * (num_heads + 2 * hkv), block_h), 1)](
        qkv, cos, sin, qkv if norm_weight is None else norm_weight, q, k_cache, v_cache, slots, n,
        num_heads, hkv, k_cache.stride(0), k_cache.stride(1), eps, qkv.stride(0), 0, 0, NORM=norm_weight is not None,
        D=d, BLOCK_H=block_h, **pdl(qkv.device))
    return q


def kv_rope_store_layers_reference(kv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                   norm_weights: torch.Tensor | None, eps: float, k_caches: torch.Tensor,
                                   v_caches: torch.Tensor, slots: torch.Tensor) -> None:
    """kv [N, L * 2 Hkv * D]: every layer's K and V projections of the same rows (one GEMM over the
    layers' stacked K/V weights); norm_weights [L, 2, D] (q, k RMSNorm weights; k's are read) or
    None; caches [L, Hkv, S, D] -> each layer's K (normed, rotated) and V at `slots`."""
    layers = k_caches.shape[0]
    for i, part in enumerate(kv.chunk(layers, dim=1)):
        qkv_rope_store_reference(part, cos, sin, None if norm_weights is None else norm_weights[i], eps, k_caches[i],
                                 v_caches[i], slots, 0)


def kv_rope_store_layers(kv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weights: torch.Tensor | None,
                         eps: float, k_caches: torch.Tensor, v_caches: torch.Tensor, slots: torch.Tensor) -> None:
    """`kv_rope_store_layers_reference` in one kernel: every layer of a context fusion in one
    launch, where one `qkv_rope_store` per layer took one each."""
    n = kv.shape[0]
    layers, hkv, _, d = k_caches.shape
    block_h = _head_rows()
    _qkv_rope_store_kernel[(triton.cdiv(n * 2 * hkv, block_h), layers)](
        kv, cos, sin, kv if norm_weights is None else norm_weights, kv, k_caches, v_caches, slots, n,
        0, hkv, k_caches.stride(1), k_caches.stride(2), eps, kv.stride(0),
        0 if norm_weights is None else norm_weights.stride(0), k_caches.stride(0), NORM=norm_weights is not None,
        D=d, BLOCK_H=block_h, **pdl(kv.device))


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu_mul_reference` in one kernel."""
    n, two_i = gate_up.shape
    i = two_i // 2
    out = torch.empty(n, i, dtype=gate_up.dtype, device=gate_up.device)
    block, rows = min(2048, _next_pow2(i)), _rows_per_program()
    _silu_mul_kernel[(triton.cdiv(n, rows), triton.cdiv(i, block))](gate_up, out, n, i, ROWS=rows, BLOCK=block,
                                                                   **pdl(gate_up.device))
    return out
