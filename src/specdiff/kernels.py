"""Fused Triton kernels of a decoding forward, each beside the PyTorch function it must equal.

At decoding sizes a large model's forward is bound by reading its weights, and every kernel
between two GEMMs adds launch and tail latency: the eager static forward runs about 35 kernels
per layer, most of them elementwise. These fold a layer's glue into five launches beside its four
GEMMs (fused QKV, o, fused gate/up, down):

- `add_rms_norm`: the residual add and the next RMSNorm in one pass over each row;
- `qkv_rope_store`: the fused QKV projection split into heads, per-head q/k RMSNorm (Qwen3),
  RoPE, and the K/V rows written into the static cache;
- `silu_mul`: SwiGLU's SiLU(gate) * up from the fused gate/up projection;
- `tree_attention`: N tree rows over the committed cache slots and their tree ancestors, split
  over the keys (flash-decoding) so that a single query row still fills the GPU, reading no slot
  at or past start + N.

Each `*_reference` is the same contract in eager PyTorch, with Hugging Face's rounding order
(normalise in fp32, cast, then scale by the weight; each RoPE product rounded before the sum). The
kernels round the same way, so they differ from their references only in the order of their sums.
On a CPU the tests run the kernels under Triton's interpreter against the references.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from specdiff.errors import SpecdiffError
from specdiff.ops import apply_rope

try:  # the CPU install has no Triton: the forward then runs the references
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None

BLOCK_N = 64  # keys per attention tile


def runnable(device: torch.device) -> str | None:
    """Why the kernels cannot run on `device` (None: they can): a CUDA GPU, or Triton's interpreter."""
    if triton is None:
        return "Triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"Triton kernels need a CUDA device (this forward runs on {device.type})"
    return None


def use_triton(kernels_choice: str, why_not: str | None, device: torch.device, what: str = "") -> bool:
    """Whether `--kernels` runs the Triton kernels for a model that `why_not` says cannot take
    them (None: it can): "triton" (refused in one line where they cannot run), "torch" (no),
    "auto" (on a CUDA GPU where they can run). what: the model named in the refusal."""
    if kernels_choice == "torch":
        return False
    if kernels_choice == "auto":
        return why_not is None and device.type == "cuda"
    if why_not is not None:
        raise SpecdiffError(f"--kernels triton cannot run{what} here: {why_not}")
    return True


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# -- references ------------------------------------------------------------------------------------


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


# -- kernels ---------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _round(x, dt: tl.constexpr):
        """fp32 -> dt, to nearest even. Spelled out for bf16 because Triton's interpreter truncates
        there (the GPU's cvt rounds the same as this), so the CPU tests see the GPU's rounding."""
        if dt == tl.bfloat16:
            b = x.to(tl.uint32, bitcast=True)
            b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
            return b.to(tl.float32, bitcast=True).to(dt)
        else:
            return x.to(dt)

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, d_ptr, w_ptr, out_ptr, H, eps, ADD: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        m = offs < H
        dt = x_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * H + offs, mask=m, other=0.0)
        if ADD:
            d = tl.load(d_ptr + row * H + offs, mask=m, other=0.0)
            x = _round(x.to(tl.float32) + d.to(tl.float32), dt)
            tl.store(x_ptr + row * H + offs, x, mask=m)
        xf = x.to(tl.float32)
        y = _round(xf * tl.rsqrt(tl.sum(xf * xf, axis=0) / H + eps), dt)
        w = tl.load(w_ptr + offs, mask=m, other=0.0)
        tl.store(out_ptr + row * H + offs, _round(y.to(tl.float32) * w.to(tl.float32), dt), mask=m)

    @triton.jit
    def _qkv_rope_store_kernel(qkv_ptr, cos_ptr, sin_ptr, nw_ptr, q_ptr, kc_ptr, vc_ptr, slot_ptr,
                               HQ, HKV, cache_sh, cache_ss, eps, NORM: tl.constexpr, D: tl.constexpr,
                               BLOCK_H: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # heads in [q | k | v] order
        HALF: tl.constexpr = D // 2
        dt = qkv_ptr.dtype.element_ty
        i = tl.arange(0, HALF)[None, :]
        live = hh < HQ + 2 * HKV
        is_q, is_v = hh < HQ, hh >= HQ + HKV
        is_k = live & ~is_q & ~is_v
        src = qkv_ptr + n * (HQ + 2 * HKV) * D + hh[:, None] * D
        x1 = tl.load(src + i, mask=live[:, None], other=0.0)  # [BLOCK_H, D/2]
        x2 = tl.load(src + HALF + i, mask=live[:, None], other=0.0)
        r1, r2 = x1, x2
        if NORM:
            f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
            r = tl.rsqrt((tl.sum(f1 * f1, axis=1) + tl.sum(f2 * f2, axis=1)) / D + eps)[:, None]
            woff = tl.where(is_q, 0, D)[:, None]
            w1 = tl.load(nw_ptr + woff + i, mask=(is_q | is_k)[:, None], other=0.0).to(tl.float32)
            w2 = tl.load(nw_ptr + woff + HALF + i, mask=(is_q | is_k)[:, None], other=0.0).to(tl.float32)
            r1 = _round(_round(f1 * r, dt).to(tl.float32) * w1, dt)
            r2 = _round(_round(f2 * r, dt).to(tl.float32) * w2, dt)
        c1 = tl.load(cos_ptr + n * D + i).to(tl.float32)
        c2 = tl.load(cos_ptr + n * D + HALF + i).to(tl.float32)
        s1 = tl.load(sin_ptr + n * D + i).to(tl.float32)
        s2 = tl.load(sin_ptr + n * D + HALF + i).to(tl.float32)
        a1, a2 = r1.to(tl.float32), r2.to(tl.float32)
        o1 = _round(_round(a1 * c1, dt).to(tl.float32) + _round(-a2 * s1, dt).to(tl.float32), dt)
        o2 = _round(_round(a2 * c2, dt).to(tl.float32) + _round(a1 * s2, dt).to(tl.float32), dt)
        slot = tl.load(slot_ptr + n)
        q_dst = q_ptr + (n * HQ + tl.where(is_q, hh, 0))[:, None] * D
        tl.store(q_dst + i, o1, mask=is_q[:, None])
        tl.store(q_dst + HALF + i, o2, mask=is_q[:, None])
        k_dst = kc_ptr + tl.where(is_k, hh - HQ, 0)[:, None] * cache_sh + slot * cache_ss
        tl.store(k_dst + i, o1, mask=is_k[:, None])
        tl.store(k_dst + HALF + i, o2, mask=is_k[:, None])
        v_dst = vc_ptr + tl.where(is_v & live, hh - HQ - HKV, 0)[:, None] * cache_sh + slot * cache_ss
        tl.store(v_dst + i, x1, mask=(is_v & live)[:, None])  # V goes to the cache as projected
        tl.store(v_dst + HALF + i, x2, mask=(is_v & live)[:, None])

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, I, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < I
        dt = gu_ptr.dtype.element_ty
        g = tl.load(gu_ptr + row * 2 * I + offs, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * I + I + offs, mask=m, other=0.0).to(tl.float32)
        s = _round(g / (1.0 + tl.exp(-g)), dt)
        tl.store(out_ptr + row * I + offs, _round(s.to(tl.float32) * u, dt), mask=m)

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
                               N, HQ, HKV, cache_sh, cache_ss, scale, KEYS,
                               G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               DIRECT: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
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
        lo = split * KEYS
        hi = tl.minimum(lo + KEYS, start + N)  # no slot at or past the tree's end is visible
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
                        G: tl.constexpr, D: tl.constexpr, SPLITS_P2: tl.constexpr):
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
    def _skinny_linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                              INTERPRETED: tl.constexpr):
        # one row block per program: any M. Row blocks vary fastest, so the programs that read one
        # weight tile run side by side and all but the first find it in L2
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

# -- launchers -------------------------------------------------------------------------------------


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`add_rms_norm_reference` in one kernel: x [N, H] contiguous, updated in place."""
    n, h = x.shape
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(n,)](x, x if delta is None else delta, weight, out, h, eps,
                               ADD=delta is not None, BLOCK=_next_pow2(h), num_warps=8 if h >= 2048 else 4)
    return out


def qkv_rope_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor | None,
                   eps: float, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                   num_heads: int) -> torch.Tensor:
    """`qkv_rope_store_reference` in one kernel: one program per token and 8 heads."""
    n = qkv.shape[0]
    hkv, _, d = k_cache.shape
    q = torch.empty(n, num_heads, d, dtype=qkv.dtype, device=qkv.device)
    block_h = 8
    _qkv_rope_store_kernel[(n, triton.cdiv(num_heads + 2 * hkv, block_h))](
        qkv, cos, sin, qkv if norm_weight is None else norm_weight, q, k_cache, v_cache, slots,
        num_heads, hkv, k_cache.stride(0), k_cache.stride(1), eps, NORM=norm_weight is not None, D=d,
        BLOCK_H=block_h)
    return q


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu_mul_reference` in one kernel."""
    n, two_i = gate_up.shape
    i = two_i // 2
    out = torch.empty(n, i, dtype=gate_up.dtype, device=gate_up.device)
    block = min(2048, _next_pow2(i))
    _silu_mul_kernel[(n, triton.cdiv(i, block))](gate_up, out, i, BLOCK=block)
    return out


def _multiprocessors(device: torch.device) -> int:
    """0 off a GPU: the interpreter runs programs one by one, so splitting only adds work."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                   ancestors: torch.Tensor, span: int, scale: float, splits: int | None = None,
                   block_m: int | None = None, num_warps: int = 8) -> torch.Tensor:
    """`tree_attention_reference` as one kernel (plus a merge when the keys are split). `span` (a
    host int, the most slots any row can see) sizes the split; the kernel stops at start + N.
    splits: key splits (None: enough programs to fill the GPU twice over)."""
    n, hq, d = q.shape
    hkv = k_cache.shape[0]
    g = hq // hkv
    rows = n * g
    # measured on an H100 at Qwen3-8B's heads (scripts/gpu_attention.py): small row blocks up to
    # 256 rows, and no key split once the row blocks alone give half the SMs a program
    block_m = block_m or (16 if rows <= 256 else 64)
    row_blocks = triton.cdiv(rows, block_m)
    tiles = triton.cdiv(span, BLOCK_N)
    if splits is None:
        sms, programs = _multiprocessors(q.device), hkv * row_blocks
        splits = 1 if 2 * programs >= sms else max(1, min(tiles, 2 * sms // programs))
    keys = triton.cdiv(tiles, splits) * BLOCK_N
    splits = triton.cdiv(span, keys)
    out = torch.empty_like(q)
    direct = splits == 1
    part = ml = out  # unused when direct
    if not direct:
        part = torch.empty(splits, hkv, rows, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(splits, hkv, rows, 2, dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _tree_attention_kernel[(hkv, row_blocks, splits)](
        q, k_cache, v_cache, start, ancestors.view(torch.uint8), out, part, ml,
        n, hq, hkv, k_cache.stride(0), k_cache.stride(1), scale, keys,
        G=g, D=d, BLOCK_M=block_m, BLOCK_N=BLOCK_N, DIRECT=direct, PRECISION=precision,
        INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1", num_warps=num_warps)
    if not direct:
        _combine_kernel[(hkv, rows)](part, ml, out, n, hq, hkv, splits, G=g, D=d, SPLITS_P2=_next_pow2(splits))
    return out


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


def tree_index(start: torch.Tensor, ancestors: torch.Tensor) -> dict:
    """What `tree_attention` reads beyond start and the ancestor block: nothing."""
    return {}


# The op set `target.fused.FusedForward` runs by default (`invariant.OPS` is the exact mode's).
# `tree_index` runs once per forward; its result goes to every layer's `tree_attention`.
OPS = SimpleNamespace(linear=linear, add_rms_norm=add_rms_norm, qkv_rope_store=qkv_rope_store, silu_mul=silu_mul,
                      tree_index=tree_index, tree_attention=tree_attention)


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


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`skinny_linear` at any row count with settings chosen by the weight's shape alone: a row's
    result depends on that row alone (`--numerics exact`)."""
    n, k = weight.shape
    if n * k <= SKINNY_MIN_WEIGHT:
        return skinny_linear(x, weight, bias, block_n=32, block_k=128, num_stages=5)
    return skinny_linear(x, weight, bias, block_n=64, block_k=128, num_stages=3)


# Exact numerics in Triton: every op computes a row as it would alone (norms, QKV/RoPE and SiLU
# kernels already do: one program per row or element)
EXACT_OPS = SimpleNamespace(linear=invariant_linear, add_rms_norm=add_rms_norm, qkv_rope_store=qkv_rope_store,
                            silu_mul=silu_mul, tree_index=position_tree_index, tree_attention=position_attention)
