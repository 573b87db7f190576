"""Exact numerics against fast from two bench folders of the same prompts: per (prompt set, T,
method) the median round's ms and the ms per token in each, and their ratios; prefill ms too.
    usage: python scripts/numerics_cost.py EXACT_DIR FAST_DIR"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path


def load(folder: str) -> dict:
    path = Path(folder) / "results.json.gz"
    runs = json.load(gzip.open(path) if path.exists() else open(Path(folder) / "results.json"))["runs"]
    out: dict = {}
    for r in runs:
        key = (r["prompt_set"], r["temperature"], r["method"])
        g = out.setdefault(key, {"rounds": [], "tokens": 0, "decode_s": 0.0, "prefill": []})
        g["rounds"] += r["round_ms"]
        g["tokens"] += r["num_new_tokens"]
        g["decode_s"] += r["decode_s"]
        g["prefill"].append(1000 * r["prefill_s"])
    return out


def main(exact_dir: str, fast_dir: str) -> None:
    exact, fast = load(exact_dir), load(fast_dir)
    print("| prompt set | T | method | round ms exact / fast | ratio | ms/token exact / fast | ratio | prefill ms exact / fast |")
    print("|---|---|---|---|---|---|---|---|")
    for key in exact:
        if key not in fast:
            continue
        e, f = exact[key], fast[key]
        re, rf = statistics.median(e["rounds"]), statistics.median(f["rounds"])
        te, tf = 1000 * e["decode_s"] / e["tokens"], 1000 * f["decode_s"] / f["tokens"]
        pe, pf = statistics.median(e["prefill"]), statistics.median(f["prefill"])
        print(f"| {key[0]} | {key[1]:g} | {key[2]} | {re:.2f} / {rf:.2f} | {re / rf:.2f} | {te:.2f} / {tf:.2f} | "
              f"{te / tf:.2f} | {pe:.1f} / {pf:.1f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
