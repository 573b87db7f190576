"""GPU: `kernels.tree_attention` launch settings at Qwen3-8B's attention shape (32 query heads, 8 KV
heads, head size 128), trees of NODES nodes after 256 committed slots (span: the graph engine's
bucket, 512 or more): microseconds per call (inside a CUDA graph) per row block, warps, key
splits and pipelining stages, fastest first, next to what the launch rule
(`kernels.attention_launch`) picks. --out writes the fastest setting per node count as an
`attention.LAUNCH_SETTINGS` literal, for `scripts/ab.py` and `scripts/gpu_forward_ab.py`.

With --flex it times, instead of the sweep, the launch rule's kernel against FlexAttention
(`kernels.tree_attention_flex`, compiled): its block mask built in every call (as a round would
build it) and built once (its kernel alone).

    usage: python scripts/gpu_attention.py [--nodes 1,16,64,65,256,257] [--stages 2,3,4] [--flex]
                                           [--out launch_settings.txt]
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton
from triton.testing import do_bench_cudagraph

from specdiff import kernels
from specdiff.kernels.attention import attention_launch
from specdiff.target.graphed import span_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="1,16,64,256")
    ap.add_argument("--stages", default="3", help="pipelining depths to try (Triton's default: 3)")
    ap.add_argument("--flex", action="store_true", help="the Triton kernel against FlexAttention")
    ap.add_argument("--out", help="write the fastest setting per node count (LAUNCH_SETTINGS)")
    args = ap.parse_args()
    if args.flex:
        flex_against_triton([int(x) for x in args.nodes.split(",")])
        return
    torch.manual_seed(0)
    hq, hkv, d, start = 32, 8, 128, 256
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    k = torch.randn(hkv, 2048, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    st = torch.tensor([start], device="cuda")
    best = {}
    for n in (int(x) for x in args.nodes.split(",")):
        span = span_for(start + n, 2048)
        q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16)
        anc = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
        want = kernels.tree_attention_reference(q, k, v, st, anc, span, d ** -0.5)
        rule = attention_launch(n * hq // hkv, hkv, span, sms)
        rows = []
        stages = [int(x) for x in args.stages.split(",")]
        for bm, sp, ns, w in itertools.product((16, 32, 64, 128), (None, 1, 2, 4), stages, (4, 8)):
            try:
                fn = lambda: kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5, splits=sp, block_m=bm,  # noqa: E731
                                                    num_warps=w, num_stages=ns)
                torch.testing.assert_close(fn(), want, atol=3e-2, rtol=3e-2)
                rows.append((1000 * do_bench_cudagraph(fn, rep=40), bm, sp, ns, w))
            except Exception as e:
                print(f"  n={n} block_m={bm} warps={w} splits={sp} stages={ns}: {type(e).__name__}")
        rows.sort()
        best[(n, n)] = rows[0][1:] if rows else (None, None, None, None)
        ruled = 1000 * do_bench_cudagraph(lambda: kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5), rep=40)
        print(f"n={n}: the rule's setting (block_m {rule[0]}, splits {rule[1]}, warps {rule[2]}) {ruled:.1f} us; "
              "fastest: " + "; ".join(f"{us:.1f} us (block_m {bm}, warps {w}, splits {sp}, stages {ns})"
                                      for us, bm, sp, ns, w in rows[:5]), flush=True)
    if args.out:
        open(args.out, "w").write(repr(best))


def flex_against_triton(nodes: list[int]) -> None:
    torch.manual_seed(0)
    hq, hkv, d, start, span = 32, 8, 128, 256, 512
    k = torch.randn(hkv, 1024, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    st = torch.tensor([start], device="cuda")
    for n in nodes:
        q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16)
        anc = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
        want = kernels.tree_attention_reference(q, k, v, st, anc, span, d ** -0.5)
        triton_us = 1000 * do_bench_cudagraph(lambda: kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5), rep=40)
        cells = [f"n={n}: triton kernel (the launch rule) {triton_us:.1f} us"]
        mask = kernels.tree_block_mask(st, anc, span)
        for name, fn in (("flex, mask built per call", lambda: kernels.tree_attention_flex(q, k, v, st, anc, span,
                                                                                             d ** -0.5)),
                         ("flex, mask built once", lambda: kernels.tree_attention_flex(q, k, v, st, anc, span,
                                                                                         d ** -0.5, mask))):
            try:
                torch.testing.assert_close(fn(), want, atol=3e-2, rtol=3e-2)
                try:
                    us = 1000 * do_bench_cudagraph(fn, rep=40)
                except Exception:  # not capturable in a graph: timed eagerly
                    us = 1000 * triton.testing.do_bench(fn, rep=40)
                    name += " (eager timing)"
                cells.append(f"{name} {us:.1f} us")
            except Exception as e:
                cells.append(f"{name}: {type(e).__name__}: {str(e)[:100]}")
        print("; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
