"""The device prefix search on a GPU: correctness against the host heap, and its cost next to the
host search it replaces (one CUDA graph replay per call, as in the drafter's graph).
    usage: python3 scripts/prefix_search_bench.py [--vocab 8192] [--reps 300]"""

from __future__ import annotations

import argparse
import time

import torch

from specdiff import native
from specdiff.methods.ddtree import build_ddtree
from specdiff.methods.device_search import PrefixSearch, fetch, reference_top_prefixes
from specdiff.types import DraftProposal

ap = argparse.ArgumentParser()
ap.add_argument("--vocab", type=int, default=8192)
ap.add_argument("--depth", type=int, default=15)
ap.add_argument("--reps", type=int, default=300)
a = ap.parse_args()
dev = torch.device("cuda")
g = torch.Generator(device="cpu").manual_seed(0)


def paths(p):
    out = []
    for parent, token in zip(p.parents, p.tokens):
        out.append((out[parent - 1] if parent else ()) + (token,))
    return set(out)


print("| width | scale | same top prefixes | max |logp diff| |")
print("|---|---|---|---|")
for width in (16, 32, 64, 96, 128, 256):
    for scale in (0.5, 2.0, 5.0):
        logits = (torch.randn(a.depth, a.vocab, generator=g) * scale).to(dev)
        got = fetch(PrefixSearch(width, a.depth, dev).run(logits), a.depth, width)
        ref = reference_top_prefixes(logits.cpu(), width)
        diff = max(abs(x - y) for x, y in zip(got.logp, ref.logp))
        print(f"| {width} | {scale} | {paths(got) == paths(ref)} | {diff:.2e} |")


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / reps


logits = (torch.randn(a.depth, a.vocab, generator=g) * 2.0).to(dev)
print("\n| what | ms per call |")
print("|---|---|")
for width in (16, 32, 64, 96, 128, 256):
    s = PrefixSearch(width, a.depth, dev)
    for _ in range(2):
        s.run(logits)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        s.run(logits)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(a.reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    print(f"| device search M={width}: GPU time of the graph | {start.elapsed_time(end) / a.reps:.4f} |")
    kernel = torch.cuda.CUDAGraph()
    with torch.cuda.graph(kernel):
        s.search()
    start.record()
    for _ in range(a.reps):
        kernel.replay()
    end.record()
    torch.cuda.synchronize()
    print(f"| device search M={width}: the kernel alone (GPU) | {start.elapsed_time(end) / a.reps:.4f} |")
    print(f"| device search M={width}: replay + fetch (host) | {timed(lambda: fetch(graph.replay() or s.out, a.depth, width), a.reps):.4f} |")
    pre = fetch(s.out, a.depth, width)
    print(f"| prefixes.tree n={width} (host) | {timed(lambda: pre.tree(0, width), a.reps):.4f} |")
backend = native.load()  # the decoder's host search: in C where it builds
for budget in (16, 32, 64, 128):
    prop = DraftProposal(logits)
    print(f"| host search build_ddtree B={budget} (topk, fetch, heap, tree) | {timed(lambda: build_ddtree(0, prop, budget, a.depth, backend), a.reps):.4f} |")


def graph_ms(fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


print("\n| kernel alone (GPU ms) | warps=1 | 2 | 4 | 8 |")
print("|---|---|---|---|---|")
for width in (32, 48, 56, 64, 96, 128):
    row = []
    for w in (1, 2, 4, 8):
        s = PrefixSearch(width, a.depth, dev, num_warps=w)
        s.load(logits)
        row.append(f"{graph_ms(s.search, a.reps):.4f}")
    print(f"| M={width} (P={s.pairs.shape[1]}) | " + " | ".join(row) + " |")
print("\n| load part (GPU ms) | ms |")
print("|---|---|")
for k in (32, 96):
    print(f"| log_softmax [15, V] | {graph_ms(lambda: torch.log_softmax(logits.float(), -1), a.reps):.4f} |")
    lp = torch.log_softmax(logits.float(), -1)
    print(f"| topk k={k} of [15, V] | {graph_ms(lambda: torch.topk(lp, k, dim=-1), a.reps):.4f} |")
    print(f"| topk k={k} sorted=False | {graph_ms(lambda: torch.topk(lp, k, dim=-1, sorted=False), a.reps):.4f} |")
    print(f"| logsumexp [15, V] | {graph_ms(lambda: torch.logsumexp(logits, -1), a.reps):.4f} |")
    bf = logits.bfloat16()
    print(f"| topk k={k} of bf16 logits | {graph_ms(lambda: torch.topk(bf, k, dim=-1), a.reps):.4f} |")
