"""Two methods of one bench, prompt by prompt: method B's tau over method A's per (prompt set, T),
with a paired bootstrap 95% interval (prompts resampled), and on how many prompts B's tau is higher
and lower. tau here is the set's new tokens over its rounds, as the bench's table gives it.

    python scripts/paired_tau.py BENCH_DIR_OR_RESULTS_JSON ddtree@64 ddtree-pld@64
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> dict:
    if path.is_dir():
        path = next((p for p in (path / "results.json", path / "results.json.gz") if p.is_file()), path / "results.json")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a bench's output folder or its results.json(.gz)")
    ap.add_argument("a", help="the baseline method label, e.g. ddtree@64")
    ap.add_argument("b", help="the method compared with it, e.g. ddtree-pld@64")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    try:
        runs = load(args.results)["runs"]
    except (OSError, ValueError, KeyError) as e:
        print(f"paired_tau: cannot read a bench's results from {args.results}: {e}", file=sys.stderr)
        sys.exit(2)
    per = defaultdict(dict)  # (set, T, method) -> prompt -> (new tokens, rounds)
    for r in runs:
        per[(r["prompt_set"], r["temperature"], r["method"])][r["prompt_id"]] = (r["num_new_tokens"], r["rounds"])
    groups = sorted({(s, t) for s, t, m in per if m == args.a and (s, t, args.b) in per})
    if not groups:
        print(f"paired_tau: no prompt set holds both {args.a} and {args.b}", file=sys.stderr)
        sys.exit(2)
    print(f"| prompt set | T | tau {args.a} | tau {args.b} | ratio (95% interval) | higher / lower / prompts |")
    print("|---|---|---|---|---|---|")
    for s, t in groups:
        a, b = per[(s, t, args.a)], per[(s, t, args.b)]
        ids = sorted(set(a) & set(b))

        def tau(d: dict, sample: list) -> float:
            return sum(d[i][0] for i in sample) / sum(d[i][1] for i in sample)

        rng = random.Random(0)
        boot = sorted(tau(b, x) / tau(a, x) for x in ([rng.choice(ids) for _ in ids] for _ in range(args.resamples)))
        lo, hi = boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]
        higher = sum(tau(b, [i]) > tau(a, [i]) + 1e-9 for i in ids)
        lower = sum(tau(b, [i]) < tau(a, [i]) - 1e-9 for i in ids)
        print(f"| {s} | {t:g} | {tau(a, ids):.2f} | {tau(b, ids):.2f} | {tau(b, ids) / tau(a, ids):.3f} "
              f"({lo:.3f} .. {hi:.3f}) | {higher} / {lower} / {len(ids)} |")


if __name__ == "__main__":
    main()
