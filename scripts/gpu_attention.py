"""GPU: `kernels.tree_attention` launch settings at Qwen3-8B's attention shape (32 query heads, 8 KV
heads, head size 128), trees of 1-256 nodes after 256 committed slots (span 512): microseconds
per call (inside a CUDA graph) per row block, warps and key splits, fastest first.

    usage: python scripts/gpu_attention.py
"""

from __future__ import annotations

import itertools

import torch
from triton.testing import do_bench_cudagraph

from specdiff import kernels


def main() -> None:
    torch.manual_seed(0)
    hq, hkv, d, start, span = 32, 8, 128, 256, 512
    k = torch.randn(hkv, 1024, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    st = torch.tensor([start], device="cuda")
    for n in (1, 16, 64, 256):
        q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16)
        anc = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
        want = kernels.tree_attention_reference(q, k, v, st, anc, span, d ** -0.5)
        rows = []
        for bm, w, sp in itertools.product((16, 32, 64, 128), (4, 8), (None, 1, 2, 4, 8)):
            try:
                fn = lambda: kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5, splits=sp, block_m=bm, num_warps=w)
                torch.testing.assert_close(fn(), want, atol=3e-2, rtol=3e-2)
                rows.append((1000 * do_bench_cudagraph(fn, rep=40), bm, w, sp))
            except Exception as e:
                print(f"  n={n} block_m={bm} warps={w} splits={sp}: {type(e).__name__}")
        rows.sort()
        default = next(r for r in rows if r[3] is None and r[1] == (16 if n * 4 <= 16 else 32 if n * 4 <= 32 else 64)
                       and r[2] == 4)
        print(f"n={n}: current default {default[0]:.1f} us; fastest: "
              + "; ".join(f"{us:.1f} us (block_m {bm}, warps {w}, splits {sp})" for us, bm, w, sp in rows[:4]),
              flush=True)


if __name__ == "__main__":
    main()
