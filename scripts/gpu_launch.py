"""GPU: is a bundled round bound by the host's launches or by the device? For each CUDA graph a
ddtree@64 decode replays (the target's buckets, the drafter's span buckets, the commit), the host
time of a replay (the launch call alone) against the time a replay takes back to back (synced
once after many): where the two are close, the host sets the pace.

    usage: python scripts/gpu_launch.py [--budget 64] [--reps 200]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from specdiff.config import DecodeConfig
from specdiff.engine import build_decoder
from specdiff.loading import encode, load_models


def per_replay(graph: "torch.cuda.CUDAGraph", reps: int) -> tuple[float, float]:
    """-> (host us per replay call, us per replay back to back)."""
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    host = time.perf_counter() - t
    torch.cuda.synchronize()
    return 1e6 * host / reps, 1e6 * (time.perf_counter() - t) / reps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--prompts", default="data/prompts/function_completion.jsonl")
    args = p.parse_args()
    model, tok, drafter = load_models(None, None, "cuda", "bfloat16")
    prompt = encode(tok, json.loads(open(args.prompts).readline())["prompt"])
    for method in ("ar", "ddtree"):
        cfg = DecodeConfig(method=method, budget=args.budget, engine="graph", max_new_tokens=128, stop_at_eos=False)
        dec = build_decoder(model, cfg, drafter)
        dec.prepare(len(prompt))
        dec.generate(prompt)
        r = dec.generate(prompt)
        print(f"{method}: {r.rounds} rounds, {1e3 * r.decode_s / r.rounds:.3f} ms per round (decode wall / rounds)")
        graphs = [(f"target bucket {k}", b.graph) for k, b in dec.target._buckets.items() if b.graph is not None]
        if dec.target._commit_graph is not None:
            graphs.append(("commit", dec.target._commit_graph))
        for d in getattr(dec.proposer, "drafters", ()):
            graphs += [(f"drafter span {s}", g) for s, g in d._graphs.items()]
        for name, g in graphs:
            host, total = per_replay(g, args.reps)
            print(f"  {name:28s} host {host:7.1f} us per launch, {total:7.1f} us per replay back to back")


if __name__ == "__main__":
    main()
