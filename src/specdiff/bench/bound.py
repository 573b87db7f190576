"""Overhead against the bound that the measured parts set (issue 4's "speed where it counts").

For a method with tau tokens per round on trees of n nodes, the parts of a round that `specdiff
profile` measures are the drafter step C_d and the target step C_v(n) (tree build, forward, draw
and walk). Their sum over tau is the per-token time the loop would reach if it spent nothing
else; the measured per-token time over that bound is the loop's own overhead:

    bound = (C_d + C_v(n, l)) / tau          (AR: C_v(1, l), no drafter)
    overhead = measured ms/token / bound - 1

PROFILE is a steps profile (`specdiff profile --measure steps`): a whole-round profile already
holds the loop's own work, and its bound would hide the overhead this table is for.

    usage: specdiff bound RESULTS(.json|.json.gz|DIR) PROFILE.json [--context 512]
"""

from __future__ import annotations


from specdiff.bench.round_costs import drafter_ms
from specdiff.methods.caddtree.cost_model import CostProfile


def bound_table(result: dict, profile: CostProfile, context: int) -> list[dict]:
    rows = []
    for r in result["summary"]:
        n = max(1, round(r["mean_tree_nodes"]))
        draft = 0.0 if r["method"] == "ar" else drafter_ms(profile, r["method"])
        bound = (draft + profile.verify(n, context)) / r["tau"]
        rows.append({**r, "bound_ms_per_token": bound, "overhead": r["ms_per_token"] / bound - 1.0})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| prompt set | T | method | tau | nodes | ms/token | bound ms/token | overhead |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prompt_set']} | {r['temperature']:g} | {r['method']} | {r['tau']:.2f} | "
                     f"{r['mean_tree_nodes']:.0f} | {r['ms_per_token']:.2f} | {r['bound_ms_per_token']:.2f} | "
                     f"{100 * r['overhead']:+.0f}% |")
    return "\n".join(lines) + "\n"
