"""GPU: a decode round's timeline, part by part, as the loop runs it (no added syncs).

Each part the loop calls (propose, commit, forward, verify, update) is wrapped with a CUDA event
on each side and a host clock. After the decode the events give, per part, the device's span
(start event to end event: the part's kernels, plus any time the device waited on the host
inside it) and the gap before it (the device idle between the previous part's end and this
part's start, which is host time the loop did not hide). Medians over the decode's rounds, the
first left out. A part that reads the device (the verifier) ends after the host's read, so its
span holds the read's wait and the host work after it.

    usage: python scripts/gpu_timeline.py --shape qwen3-8b --methods ar,dflash,ddtree@64
           python scripts/gpu_timeline.py --bundled --methods ar,ddtree@64
           python scripts/gpu_timeline.py --methods ddtree@64,ddtree@256 --compare-padding
             (each method padded to the next bucket first, then in a bucket of its largest tree)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from gpu_profile import build_pair

from specdiff import native
from specdiff.config import DecodeConfig
from specdiff.engine import build_decoder, make_target
from specdiff.target import graphed

PARTS = ("propose", "commit", "forward", "verify", "update")


def instrument(dec) -> list[tuple[str, float, float, torch.cuda.Event, torch.cuda.Event]]:
    """Wraps the decoder's parts in place -> the list each call appends (part, host t0, t1, events)."""
    log = []

    def wrap(name, fn):
        def timed(*a, **k):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            e0.record()
            out = fn(*a, **k)
            e1.record()
            log.append((name, t0, time.perf_counter(), e0, e1))
            return out
        return timed

    wrap_parts(dec, wrap)
    return log


def wrap_parts(dec, wrap) -> None:
    """Replaces each part the decode loop calls (PARTS) by wrap(name, the part)."""
    p, t = dec.proposer, dec.target
    p.propose, p.update = wrap("propose", p.propose), wrap("update", p.update)
    t.commit, t.forward = wrap("commit", t.commit), wrap("forward", t.forward)
    dec.verifier = wrap("verify", dec.verifier)
    # a round whose next draft is queued before its read: the verify part holds that draft's
    # launch (its device work runs during the next parts), and no update
    dec._verify_drafting_ahead = wrap("verify", dec._verify_drafting_ahead)


def timeline(dec, prompt: list[int]) -> str:
    dec.generate(prompt)  # warm-up: graphs captured
    log = instrument(dec)
    t = time.perf_counter()
    r = dec.generate(prompt)
    wall = time.perf_counter() - t
    torch.cuda.synchronize()
    # a round starts at its propose (AR's overlapped steps propose nothing: at its forward); the
    # calls before the first are the prefill's
    first = "propose" if any(e[0] == "propose" for e in log) else "forward"
    rounds, cur = [], None
    for entry in log:
        if entry[0] == first:
            cur = []
            rounds.append(cur)
        if cur is not None:
            cur.append(entry)
    rounds = rounds[1:-1]  # the first pays its captures' leftovers; the last ends without a next
    span, gap, host = ({p: [] for p in PARTS} for _ in range(3))
    total = []
    prev_end = None  # the gap before a propose is the one after the last round's update
    for i, rd in enumerate(rounds):
        for name, h0, h1, e0, e1 in rd:
            span[name].append(e0.elapsed_time(e1))
            host[name].append(1000 * (h1 - h0))
            if prev_end is not None:
                gap[name].append(prev_end.elapsed_time(e0))
            prev_end = e1
        nxt = rounds[i + 1][0][3] if i + 1 < len(rounds) else None
        if nxt is not None:
            total.append(rd[0][3].elapsed_time(nxt))
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    lines = [f"  {r.rounds} rounds, tau {r.tau:.2f}, {1000 * wall / r.num_new_tokens:.3f} ms/token; "
             f"round on the device ({first} to next {first}) {med(total):.3f} ms median",
             "  part      device span ms  idle gap before ms  host ms"]
    for p in PARTS:
        if span[p]:
            lines.append(f"  {p:8s}  {med(span[p]):14.3f}  {med(gap[p]):19.3f}  {med(host[p]):7.3f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-8b")
    p.add_argument("--bundled", action="store_true")
    p.add_argument("--methods", default="ar,ddtree@64")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--no-overlap", action="store_true", help="ar one step at a time (DecodeConfig.overlap off)")
    p.add_argument("--compare-padding", action="store_true",
                   help="each method without, then with, a bucket of its largest tree")
    args = p.parse_args()
    if args.bundled:
        args.shape = "bundled"
    model, drafter = build_pair(args.shape)
    target = make_target(model, "graph", native.load())
    prompt = torch.randint(2, 1000, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    runs = [(m, False) for m in args.methods.split(",")] if args.compare_padding else []
    runs += [(m, True) for m in args.methods.split(",")]
    for m, tree_bucket in runs:
        graphed.FULL_TREE_BUCKET = tree_bucket  # read by `prepare`: the padded runs go first
        method, _, budget = m.partition("@")
        cfg = DecodeConfig(method=method, budget=int(budget or 1), engine="graph", max_new_tokens=args.new_tokens,
                           overlap=not args.no_overlap, stop_at_eos=False)
        dec = build_decoder(target, cfg, drafter)
        dec.prepare(len(prompt))
        print(f"{args.shape}: {m}" + ("" if tree_bucket else " (padded to the next bucket)"), flush=True)
        print(timeline(dec, prompt), flush=True)
        del dec


if __name__ == "__main__":
    main()
