"""GPU: `kernels.tree_attention` launch settings at Qwen3-8B's attention shape (32 query heads, 8 KV
heads, head size 128), trees of NODES nodes after 256 committed slots (span 512): microseconds
per call (inside a CUDA graph) per row block, warps, key splits and pipelining stages, fastest
first, next to what the launch rule (`kernels.attention_launch`) picks.

    usage: python scripts/gpu_attention.py [--nodes 1,16,64,65,256,257] [--stages 2,3,4]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from triton.testing import do_bench_cudagraph

from specdiff import kernels
from specdiff.kernels.attention import attention_launch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="1,16,64,256")
    ap.add_argument("--stages", default="3", help="pipelining depths to try (Triton's default: 3)")
    args = ap.parse_args()
    torch.manual_seed(0)
    hq, hkv, d, start, span = 32, 8, 128, 256, 512
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    k = torch.randn(hkv, 1024, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    st = torch.tensor([start], device="cuda")
    for n in (int(x) for x in args.nodes.split(",")):
        q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16)
        anc = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
        want = kernels.tree_attention_reference(q, k, v, st, anc, span, d ** -0.5)
        rule = attention_launch(n * hq // hkv, hkv, span, sms)
        rows = []
        stages = [int(x) for x in args.stages.split(",")]
        for bm, w, sp, ns in itertools.product((16, 32, 64, 128), (4, 8), (None, 1, 2, 4), stages):
            try:
                fn = lambda: kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5, splits=sp, block_m=bm,  # noqa: E731
                                                    num_warps=w, num_stages=ns)
                torch.testing.assert_close(fn(), want, atol=3e-2, rtol=3e-2)
                rows.append((1000 * do_bench_cudagraph(fn, rep=40), bm, w, sp, ns))
            except Exception as e:
                print(f"  n={n} block_m={bm} warps={w} splits={sp} stages={ns}: {type(e).__name__}")
        rows.sort()
        ruled = 1000 * do_bench_cudagraph(lambda: kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5), rep=40)
        print(f"n={n}: the rule's setting (block_m {rule[0]}, splits {rule[1]}, warps 8) {ruled:.1f} us; fastest: "
              + "; ".join(f"{us:.1f} us (block_m {bm}, warps {w}, splits {sp}, stages {ns})"
                          for us, bm, w, sp, ns in rows[:5]), flush=True)


if __name__ == "__main__":
    main()
