"""Where a decode round's time goes, per method: each part of the loop timed on its own.

Wraps the drafter pass, the tree build (candidate fetch + search), the target forward, the walk,
the commit and the drafter's update with a device sync on each side, and reports the median ms
per part, apart for each decode's first round and its prefill; methods are interleaved per prompt, as in the bench. The syncs serialise host and
device, so the parts add up to more than an unwrapped round: compare methods with each other,
not with the bench.
    usage: python scripts/round_anatomy.py --device cuda --dtype bfloat16 --profile P.json \
        --methods ddtree@32,caddtree --prompts data/prompts/file_continuation.jsonl --limit 8
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

import torch

from specdiff import native
from specdiff.bench.harness import read_prompt_file
from specdiff.loading import eos_ids, load_models
from specdiff.config import CaDDTreeOptions, DecodeConfig, SamplingConfig
from specdiff.methods import caddtree, ddtree
from specdiff.engine import build_decoder, make_target


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--engine", default="graph")
    p.add_argument("--profile", required=True)
    p.add_argument("--methods", default="ddtree@32,caddtree")
    p.add_argument("--prompts", default="data/prompts/file_continuation.jsonl")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--target", default=None)
    p.add_argument("--drafter", default=None)
    args = p.parse_args()
    model, tok, drafter = load_models(args.target, args.drafter, args.device, args.dtype)
    target = make_target(model, args.engine, native.load())  # build_decoder's backend
    dev = target.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    parts: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    current = [""]  # the method decoding now
    inner = [0.0]  # ms of timed parts inside the current propose call
    round_no = [0]  # rounds begun in the current decode (a part before the second is the first round's)

    def timed(name, fn):
        def wrapper(*a, **k):
            if name == "propose":
                round_no[0] += 1
            sync()
            t = time.perf_counter()
            before = inner[0]
            out = fn(*a, **k)
            sync()
            ms = 1000 * (time.perf_counter() - t)
            phase = current[0] + {0: " prefill", 1: " first round"}.get(round_no[0], "")
            parts[phase][name].append(ms)
            if name == "propose":  # the proposer's own work around its timed parts
                parts[phase]["propose rest"].append(ms - (inner[0] - before))
                inner[0] = 0.0
            else:
                inner[0] += ms
            return out
        return wrapper

    ddtree.build_ddtree = timed("tree", ddtree.build_ddtree)
    caddtree.proposer.build_caddtree = timed("tree", caddtree.proposer.build_caddtree)
    prompts = read_prompt_file(Path(args.prompts), args.limit)
    encoded = [list(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in prompts]
    decoders = []
    for spec in args.methods.split(","):
        method, _, budget = spec.partition("@")
        cfg = DecodeConfig(method=method, budget=int(budget or 64), max_new_tokens=args.max_new_tokens,
                           caddtree=CaDDTreeOptions(profile=args.profile), engine=args.engine,
                           sampling=SamplingConfig(temperature=args.temperature, seed=0))
        dec = build_decoder(target, cfg, drafter, eos_ids(model, tok))
        dec.prepare(max(len(e) for e in encoded))
        prop = dec.proposer
        for name in ("catch_up", "propose", "update"):
            if hasattr(prop, name):  # ar has no drafter to catch up
                setattr(prop, name, timed(name, getattr(prop, name)))
        if getattr(prop, "drafter", None) is not None and not hasattr(prop.drafter.draft, "timed"):  # drafters shared by decoders: wrap once
            prop.drafter.draft = timed("draft", prop.drafter.draft)
            prop.drafter.draft.timed = True
        decoders.append((spec, dec))
    target.forward, target.commit = timed("forward", target.forward), timed("commit", target.commit)
    for _, dec in decoders:
        dec.verifier = timed("walk", dec.verifier)
    stats = collections.defaultdict(lambda: ([], []))  # method -> (tau per prompt, round ms)
    for i, ids in enumerate([encoded[0]] + encoded):  # the first prompt again: a warm-up, dropped
        k = i % len(decoders)  # rotated order, as the bench: a drift lands on every method alike
        for spec, dec in decoders[k:] + decoders[:k]:
            current[0], round_no[0] = (spec if i else "warm-up"), 0
            r = dec.generate(ids)
            if i:
                stats[spec][0].append(r.tau)
                stats[spec][1].extend(r.round_ms[1:])
                stats[spec + " first round"][1].append(r.round_ms[0])
                stats[spec + " first round"][0].append(r.tau)
    for spec in [s + phase for s, _ in decoders for phase in ("", " first round", " prefill")]:
        med = collections.defaultdict(float, {k: statistics.median(v) for k, v in parts[spec].items()})
        head = "its parts alone"  # the prefill: no round of its own
        if spec in stats:
            tau, rounds = stats[spec]
            head = f"tau {statistics.mean(tau):.2f}, round (synced parts) {statistics.median(rounds):.3f} ms"
        print(f"{spec}: {head} | " + " | ".join(f"{k} {med[k]:.3f}" for k in
                                                 ("catch_up", "draft", "tree", "propose rest", "forward", "walk",
                                                  "commit", "update")))


if __name__ == "__main__":
    main()
