"""Measured round costs against the profile's prediction, per method and tree-size bucket.

The bench records every round's wall time and tree size. Grouped by the bucket a tree pads to
(the profile's buckets; where it has none, powers of two, each round priced at its own size), the
median round of each method is set against what the profile predicts for it at the round's
context: C_d + `CostProfile.tree_step` (AR and a decode's last token: C_v(1, context)), C_d
including D²SD's VP re-draft where the profile measured it. A ratio
that drifts with the bucket is what caddtree's choice cannot see: its constant measured overhead
(`cost_model.RoundOverhead`) shifts every size alike.

    usage: specdiff round-costs RESULTS(.json|.json.gz|DIR) PROFILE.json
"""

from __future__ import annotations

import statistics

from specdiff.methods.caddtree.cost_model import CostProfile


def drafter_ms(profile: CostProfile, method: str) -> float:
    """A drafted round's drafter work for a bench's method label ("ddtree@64", "d2sd-hybrid@16"):
    the DFlash pass, and for D²SD's methods the VP re-draft where the profile measured it."""
    from specdiff.methods import REGISTRY

    base = REGISTRY.get(method.split("@")[0].split("/")[0])
    return profile.draft_ms + (profile.redraft_ms if base is not None and base.vp_drafter else 0.0)


def bucket_of(n: int, buckets: list[int]) -> int:
    return next((b for b in buckets if b >= n), 1 << (n - 1).bit_length())


def round_cost_table(result: dict, profile: CostProfile) -> list[dict]:
    """One row per (prompt set, T, method, bucket): rounds, median measured and predicted ms."""
    buckets = profile.buckets or [1 << k for k in range(12)]
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for run in result["runs"]:
        context = run.get("prompt_tokens", 0) - 1
        sizes = run.get("tree_sizes", [])
        for i, (size, ms, accepted) in enumerate(zip(sizes, run.get("round_ms", []), run["accept_lengths"])):
            b = bucket_of(size, buckets)
            ctx = max(1, context)
            if run["method"] == "ar" or (size == 1 and i == len(sizes) - 1):
                predicted = profile.verify(1, ctx)  # no drafter: AR, or a decode's last token
            else:  # drafted: a tree at its bucket, or caddtree's root alone after the candidate fetch
                predicted = drafter_ms(profile, run["method"]) + profile.tree_step(size, ctx)
            groups.setdefault((run["prompt_set"], run["temperature"], run["method"], b), []).append((ms, predicted))
            context += accepted
    rows = []
    for (pset, temp, method, b), pairs in groups.items():
        measured = statistics.median(ms for ms, _ in pairs)
        predicted = statistics.median(p for _, p in pairs)
        rows.append({"prompt_set": pset, "temperature": temp, "method": method, "bucket": b, "rounds": len(pairs),
                     "measured_ms": measured, "predicted_ms": predicted, "ratio": measured / predicted})
    return rows
