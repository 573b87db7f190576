"""Offline replay of caddtree's per-round choice against fixed budgets, without timing noise.

Decodes held-out prompts with DDTree (CPU, fp32, static engine) and keeps, per round, the
drafter's top-512 marginals per depth (every tree up to 512 nodes is then exact) and the realised
continuation: the output, which is the target's own greedy text (T=0) or its own sample (T>0;
the draws are keyed by position, so the walk accepts, in any tree, the longest prefix of that
sample that the tree holds). For every round and every tree size n it then knows the predicted
accepted tokens Phi(n) (the sum of the top-n prefix probabilities) and the realised ones (the
deepest node of the top-n tree on the greedy path). Scored with a cost profile (+ a per-round
overhead), it compares tokens per ms of caddtree's choice with every fixed budget, and prints how
well the marginals predict acceptance.

    python scripts/caddtree_replay.py --profile PROFILE.json [--overhead 0.5] [--limit 12] [--temperature 1]
        [--root-alone-ms 1.2] [--context 512] [--extra-ms 0,0.07]
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from specdiff.bench.harness import read_prompt_file
from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.drafters.dflash import load_drafter
from specdiff.engine import build_decoder
from specdiff.models.bundled import default_path
from specdiff.target.hf_causal import load_target
from specdiff.methods.caddtree.cost_model import CostProfile
from specdiff.methods.caddtree.tree import DEVICE_WIDTH
from specdiff.methods.ddtree import iter_best_first

SETS = ["data/prompts/function_completion.jsonl", "data/prompts/file_continuation.jsonl"]
MAX_NODES = 512


def collect(path: str, limit: int, model, tok, drafter, temperature: float) -> list[dict]:
    """Per round: top-MAX_NODES log-probs and ids per depth, the tokens that followed the root and
    whether it is its sequence's first round."""
    rounds: list[dict] = []
    plain_draft = type(drafter).draft.__get__(drafter)
    for p in read_prompt_file(Path(path), limit):
        ids = list(tok(p["prompt"], add_special_tokens=False)["input_ids"])
        cfg = DecodeConfig(method="ddtree", budget=64, max_new_tokens=128, engine="static",
                           sampling=SamplingConfig(temperature=temperature))
        decoder = build_decoder(model, cfg, drafter, [])
        seen: list[tuple[int, torch.Tensor]] = []
        state_tokens: list[int] = []

        def draft(root, depth):
            logits = plain_draft(root, depth)
            seen.append((len(state_tokens), logits.float()))
            return logits

        def propose(state, _propose=decoder.proposer.propose):
            state_tokens[:] = state.tokens
            return _propose(state)

        drafter.draft, decoder.proposer.propose = draft, propose
        out = decoder.generate(ids)
        full = ids + out.token_ids
        for j, (n_tok, logits) in enumerate(seen):
            top = torch.topk(torch.log_softmax(logits, -1), min(MAX_NODES, logits.shape[-1]), -1)
            rounds.append({"logp": top.values, "ids": top.indices.tolist(), "future": full[n_tok:n_tok + len(logits)],
                           "context": n_tok - 1, "first": j == 0})  # the root's slot, as caddtree reads its costs
    drafter.__dict__.pop("draft", None)
    return rounds


def stream(r: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per pop n = 1..len: its delta, its depth, and the realised accepted draft tokens of the
    tree of the first n pops; and the round's context."""
    depths, on_path, deepest = [0], {0}, 0
    delta, realised = [], []
    for j, (parent, rank, score) in enumerate(itertools.islice(iter_best_first(r["logp"]), MAX_NODES), 1):
        d = depths[parent] + 1
        depths.append(d)
        if parent in on_path and d <= len(r["future"]) and r["future"][d - 1] == r["ids"][d - 1][rank]:
            on_path.add(j)
            deepest = max(deepest, d)
        delta.append(math.exp(score))
        realised.append(deepest)
    return np.asarray(delta), np.asarray(depths[1:]), np.asarray(realised), r["context"]


def replay_caddtree(streams, cost, root_cost, buckets, calibrate: bool = False,
                    root_price=None, extra_ms: float = 0.0, late: list[bool] | None = None,
                    ) -> tuple[float, float, float]:
    """caddtree's choice per round (theta compared at the buckets), in round order; with
    `calibrate`, each depth's deltas are scaled by realised / predicted acceptance at that depth
    over the rounds before (prior: 2 rounds' worth at 1x). A round of n nodes costs cost(n, context),
    a root-alone round root_cost(context); the choice prices that at root_price(context) (default:
    the same); every round also pays `extra_ms` (its own host work). `late` (per round, whether it is
    its sequence's first): each other round keeps the size its predecessor chose, at least one node
    and at most the device search's width, as caddtree searched on the device does. Returns (tokens
    per ms, mean nodes, share of root-alone rounds)."""
    root_price = root_cost if root_price is None else root_price
    pred, real = np.full(17, 2.0), np.full(17, 2.0)  # per depth, summed over past rounds
    tokens = ms = 0.0
    sizes, previous = [], 0
    for i, (delta, depth, realised, ctx) in enumerate(streams):
        weight = real / pred if calibrate else np.ones(17)
        phi = np.cumsum(weight[depth] * delta)
        best, chosen = 0.0, 0
        for b in buckets:  # theta from one draft node on, as caddtree; the root alone weighed last
            if b < 2 or b - 1 > len(phi):
                continue
            theta = (1 + phi[b - 2]) / cost(b, ctx)
            if theta <= best:
                break
            best, chosen = theta, b - 1
        if best <= 1.0 / root_price(ctx):
            chosen = 0
        if late is not None:
            chosen, previous = (chosen if late[i] else min(max(previous, 1), DEVICE_WIDTH, len(phi))), chosen
        accepted = realised[chosen - 1] if chosen else 0
        np.add.at(pred, depth[:chosen], delta[:chosen])
        real[1:accepted + 1] += 1
        tokens += 1 + accepted
        ms += (cost(chosen + 1, ctx) if chosen else root_cost(ctx)) + extra_ms
        sizes.append(chosen)
    return tokens / ms, float(np.mean(sizes)), float(np.mean(np.asarray(sizes) == 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--overhead", type=float, default=0.0, help="ms added to every round's profiled cost")
    ap.add_argument("--context", type=int, help="read every cost at this context (default: each round's own)")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--root-alone-ms", type=float, help="the root-alone step's cost (default: the profile's)")
    ap.add_argument("--extra-ms", default="0",
                    help="what a caddtree round costs beyond a fixed budget's round of its size (its search); "
                         "a comma-separated list replays each")
    args = ap.parse_args()
    prof = CostProfile.load(args.profile)
    buckets = [b for b in (prof.buckets or range(1, MAX_NODES + 2)) if b <= MAX_NODES + 1]

    def at(ctx: int) -> int:
        return ctx if args.context is None else args.context

    def cost(n: int, ctx: int) -> float:  # a tree of n nodes (root included) costs its bucket
        b = next((b for b in buckets if b >= n), n)
        return prof.draft_ms + args.overhead + prof.verify(b, at(ctx))

    def root_cost(ctx: int) -> float:
        step = prof.root_alone(at(ctx)) if args.root_alone_ms is None else args.root_alone_ms
        return prof.draft_ms + args.overhead + step

    def ar_price(ctx: int) -> float:
        return prof.draft_ms + args.overhead + prof.verify(1, at(ctx))

    torch.manual_seed(0)
    model, tok = load_target(default_path("target"), "cpu", "float32")
    drafter = load_drafter(default_path("dflash"), "cpu", torch.float32)
    for path in SETS:
        rounds = collect(path, args.limit, model, tok, drafter, args.temperature)
        streams, firsts = [stream(r) for r in rounds], [r["first"] for r in rounds]
        print(f"{Path(path).stem}, T={args.temperature:g}: {len(streams)} rounds")
        for n in (1, 4, 16, 32, 64, 128, 512):
            pred = np.mean([np.cumsum(d)[min(n, len(d)) - 1] for d, _, _, _ in streams])
            real = np.mean([a[min(n, len(a)) - 1] for _, _, a, _ in streams])
            print(f"  {n:4d} nodes: predicted {pred:.2f}, realised {real:.2f} accepted draft tokens ({real / pred:.2f}x)")
        fixed = {}
        for n in (16, 32, 64, 128, 256, 512):
            fixed[n] = (sum(1 + a[min(n, len(a)) - 1] for _, _, a, _ in streams)
                        / sum(cost(n + 1, ctx) for _, _, _, ctx in streams))
        top = max(fixed, key=fixed.get)
        print("  tokens/ms: " + ", ".join(f"ddtree@{n} {v:.3f}" for n, v in fixed.items()))
        for extra in (float(x) for x in args.extra_ms.split(",")):
            for label, kwargs in [("", {}), (" (calibrated by depth)", {"calibrate": True}),
                                  (" (root alone priced as AR's step)", {"root_price": ar_price}),
                                  (" (searched on the device: sized one round late)", {"late": firsts})]:
                rate, nodes, alone = replay_caddtree(streams, cost, root_cost, buckets, extra_ms=extra, **kwargs)
                print(f"  caddtree{label}, +{extra:g} ms a round: {rate:.3f} ({rate / fixed[top] - 1:+.1%} vs "
                      f"ddtree@{top}, {nodes:.1f} nodes, root alone in {alone:.0%} of rounds)")


if __name__ == "__main__":
    main()
