"""caddtree against the best fixed DDTree budget of the same run, with a confidence interval.

Per (prompt set, T): the best fixed budget is the ddtree@B with the most tokens/s over the set
(total new tokens / total decode time). caddtree's advantage is its tokens/s over that one's,
and its 95% interval comes from a paired bootstrap over prompts (each resample draws prompts and
keeps both methods' decodes of each, so prompt-to-prompt variation cancels). Picking the best of
several noisy budgets after the fact favours the fixed side by a little: the interval says whether
a gap is more than that noise.

    usage: specdiff versus RESULTS(.json|.json.gz|DIR) [--method caddtree/round]
"""

from __future__ import annotations


import numpy as np


RESAMPLES = 2000


def versus_best_fixed(result: dict, method: str = "caddtree", seed: int = 0) -> list[dict]:
    """One row per (prompt set, T) holding `method` and at least one ddtree@B run."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, float], dict[str, dict[str, tuple[int, float]]]] = {}
    for r in result["runs"]:
        per_method = groups.setdefault((r["prompt_set"], r["temperature"]), {})
        per_method.setdefault(r["method"], {})[r["prompt_id"]] = (r["num_new_tokens"], r["decode_s"])
    rows = []
    for (pset, temp), per_method in groups.items():
        fixed = {m: d for m, d in per_method.items() if m.startswith("ddtree@")}
        if method not in per_method or not fixed:
            continue
        best = max(fixed, key=lambda m: _tokens_per_s(fixed[m]))
        ids = sorted(set(per_method[method]) & set(fixed[best]))
        a = np.array([per_method[method][i] for i in ids], dtype=float)  # [P, 2]: tokens, seconds
        b = np.array([fixed[best][i] for i in ids], dtype=float)
        ratio = (a[:, 0].sum() / a[:, 1].sum()) / (b[:, 0].sum() / b[:, 1].sum())
        picks = rng.integers(0, len(ids), size=(RESAMPLES, len(ids)))
        boot = (a[picks, 0].sum(1) / a[picks, 1].sum(1)) / (b[picks, 0].sum(1) / b[picks, 1].sum(1))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        rows.append({"prompt_set": pset, "temperature": temp, "best_fixed": best, "prompts": len(ids),
                     "best_tokens_per_s": _tokens_per_s(fixed[best]), "tokens_per_s": _tokens_per_s(per_method[method]),
                     "advantage": float(ratio - 1), "ci95": [float(lo - 1), float(hi - 1)]})
    return rows


def _tokens_per_s(decodes: dict[str, tuple[int, float]]) -> float:
    """Total new tokens over total decode seconds of {prompt id: (tokens, seconds)}."""
    return sum(t for t, _ in decodes.values()) / max(1e-12, sum(s for _, s in decodes.values()))


def versus_table(rows: list[dict], method: str = "caddtree") -> list[str]:
    lines = [f"| prompt set | T | best fixed budget | its tokens/s | {method} tokens/s | {method} vs best | 95% CI |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['prompt_set']} | {r['temperature']:g} | {r['best_fixed']} | {r['best_tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s']:.0f} | {100 * r['advantage']:+.1f}% | {100 * lo:+.1f}% .. {100 * hi:+.1f}% |")
    return lines
