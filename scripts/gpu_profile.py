"""GPU: where a graphed forward's time goes, kernel by kernel (torch.profiler over CUDA graph replays).

Builds a random-weight model of a public shape (as `specdiff speed` does), replays the target's
graph at N nodes and the drafter's step, and prints per kernel name: calls per forward, total
microseconds per forward and share, largest first.

    usage: python scripts/gpu_profile.py --shape qwen3-8b --nodes 1,64 [--kernels triton]
           python scripts/gpu_profile.py --bundled --nodes 1,64 --rounds 64   # the bundled pair
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from specdiff import native
from specdiff.bench.speed import random_drafter, random_target
from specdiff.config import DecodeConfig
from specdiff.engine import build_decoder, make_target
from specdiff.types import DraftTree


def kernel_table(fn, reps: int, top: int) -> str:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type.name == "CUDA" and e.device_time_total > 0:
            name = e.name[:90]
            per[name][0] += 1
            per[name][1] += e.device_time_total
    total = sum(us for _, us in per.values())
    lines = [f"  device total {total / reps:.0f} us per call, {sum(c for c, _ in per.values()) / reps:.0f} kernels"]
    for name, (calls, us) in sorted(per.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"  {us / reps:8.1f} us {100 * us / total:5.1f}%  x{calls / reps:5.1f}  {name}")
    return "\n".join(lines)


def build_pair(shape: str):
    """-> (target model, drafter) on the GPU in bf16: the bundled pair (shape "bundled"), else
    random weights of a public shape with a random 5-layer drafter."""
    if shape == "bundled":
        from specdiff.loading import load_models

        model, _, drafter = load_models(None, None, "cuda", "bfloat16")
        return model, drafter
    torch.manual_seed(0)  # as `specdiff speed` seeds it: the load-time probe checks these weights' logits
    model = random_target(shape, "cuda", torch.bfloat16)
    return model, random_drafter(model.config, 5, 16, torch.device("cuda"), torch.bfloat16)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-8b")
    p.add_argument("--bundled", action="store_true", help="the bundled target and drafter instead of --shape")
    p.add_argument("--nodes", default="1,64")
    p.add_argument("--kernels", default="triton")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--rounds", default="", help="ddtree budgets whose whole decode to profile: host ops and GPU busy time")
    args = p.parse_args()
    if args.bundled:
        args.shape = "bundled"
    model, drafter = build_pair(args.shape)
    target = make_target(model, "graph", native.load(), args.kernels)
    prompt = torch.randint(2, 1000, (200,)).tolist()
    dec = build_decoder(target, DecodeConfig(method="dflash", engine="graph", kernels=args.kernels,
                                             max_new_tokens=64, stop_at_eos=False), drafter)
    dec.prepare(len(prompt))
    dec.generate(prompt)
    step = dec.proposer.drafters[0]
    print(f"{args.shape}, {args.kernels} kernels: drafter step")
    print(kernel_table(lambda: step.propose(prompt[-1], 15), args.reps, args.top), flush=True)
    nodes = [int(n) for n in args.nodes.split(",")]
    target.reset(len(prompt) + 64 + max(nodes))
    target.prefill(prompt)
    for n in nodes:
        tree = DraftTree.chain(prompt[-1], [prompt[-1]] * (n - 1))
        print(f"{args.shape}, {args.kernels} kernels: target forward of {n} nodes")
        print(kernel_table(lambda: target.forward(tree), args.reps, args.top), flush=True)
    for budget in [int(b) for b in args.rounds.split(",") if b]:
        cfg = DecodeConfig(method="ddtree", budget=budget, engine="graph", kernels=args.kernels, max_new_tokens=48,
                           stop_at_eos=False)
        dec = build_decoder(target, cfg, drafter)
        dec.prepare(len(prompt))
        dec.generate(prompt)
        print(f"{args.shape}, {args.kernels} kernels: ddtree@{budget} decode, host ops by self CPU time")
        print(round_table(lambda: dec.generate(prompt), args.top), flush=True)


def round_table(fn, top: int) -> str:
    """One decode under the profiler: wall time per round, the GPU's busy time in it, and the host
    ops that take the most CPU time (self), per round."""
    import time

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        r = fn()
        torch.cuda.synchronize()
        wall = 1000 * (time.perf_counter() - t)
    n = r.rounds
    gpu = sum(e.device_time_total for e in prof.events() if e.device_type.name == "CUDA") / 1000
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    lines = [f"  {n} rounds, {wall / n:.2f} ms per round under the profiler, GPU busy {gpu / n:.2f} ms per round"]
    for e in rows:
        lines.append(f"  {e.self_cpu_time_total / 1000 / n:8.3f} ms  x{e.count / n:6.1f}  {e.key[:80]}")
    per = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type.name == "CUDA" and e.device_time_total > 0:
            per[e.name[:80]][0] += 1
            per[e.name[:80]][1] += e.device_time_total
    lines.append("  GPU kernels per round, largest first:")
    for name, (calls, us) in sorted(per.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"  {us / 1000 / n:8.3f} ms  x{calls / n:6.1f}  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
