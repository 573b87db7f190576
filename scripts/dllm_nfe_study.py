"""Why Spiffy's NFE ratio stops where it does on the bundled dLLM: CPU, T = 0.

Records baseline traces on held-out prompts, then, offline and exactly (at T = 0 the trajectory
does not depend on the graph), replays Spiffy's acceptance walk for any graph: a forward at state
s accepts the drafts of states s+1, s+2, ... while each one's formula under the anchor of s is a
graph node. Prints the top-1 hit rate of the stale anchor, per-level coverage, and the simulated
NFE of graphs calibrated on 16 or --calib prompts (degree-1 accumulation, and a greedy search that
minimises the replayed NFE on the calibration traces). Prompts: calibration = function_completion
128.., validation = function_completion 192..; the bench's 0..15 are never read here. Usage:

  OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/dllm_nfe_study.py --setting fixed --out /tmp/study
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections import Counter
from pathlib import Path

from specdiff.cli.dllm import add_model_args
from specdiff.dllm import pipeline as dc
from specdiff.dllm.config import DLLMConfig
from specdiff.dllm.calibration import calibrate, counts_of, futures, replay_nfe, search
from specdiff.dllm.spiffy import DraftGraph


def record(loaded, files, offset, num, cfg, depth: int) -> list:
    """-> per prompt, `futures` of its baseline trace (per block, per state: next states' formulas)."""
    out = []
    for n, (_, text) in enumerate(dc.read_prompts(files, offset, num)):
        print(f"  trace {offset + n}", file=sys.stderr, flush=True)
        ids = dc.encode_prompt(loaded, text, cfg, truncate=True)
        trace: list = []
        dc.decode(loaded, ids, cfg, None, "none", trace=trace)
        out.append(futures(trace, cfg, depth))
    return out


def flat(prompts: list) -> list:
    return [states for blocks in prompts for states in blocks]


def main() -> int:
    p = argparse.ArgumentParser()
    add_model_args(p)
    p.add_argument("--setting", default="fixed", choices=["fixed", "threshold"])
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--calib", type=int, default=48, help="calibration prompts (function_completion 128..)")
    p.add_argument("--valid", type=int, default=16, help="validation prompts (function_completion 192..)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    loaded = dc.load_model(args.model, args.device, args.dtype)
    cfg = DLLMConfig(gen_length=args.gen_length, block_length=args.block_length, steps=args.gen_length,
                     remasking="low_confidence" if args.setting == "fixed" else "threshold",
                     threshold=0.9, temperature=0.0, seed=0, mask_id=loaded.mask_id)
    cfg.validate()
    fc = dc.PROMPT_SETS / "function_completion.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / f"traces-{args.setting}-{args.gen_length}-{args.calib}-{args.valid}.pkl"
    if cache.is_file():
        sets = pickle.loads(cache.read_bytes())
    else:
        t0 = time.perf_counter()
        sets = {"valid": record(loaded, [fc], 192, args.valid, cfg, args.depth),
                "calib": record(loaded, [fc], 128, args.calib, cfg, args.depth)}
        cache.write_bytes(pickle.dumps(sets))
        print(f"traces in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    calib16, calib = flat(sets["calib"][:16]), flat(sets["calib"])
    valid, prompts = flat(sets["valid"]), len(sets["valid"])
    report: dict = {"setting": args.setting, "gen_length": args.gen_length, "calib": args.calib, "valid": args.valid}

    # 1. how often the stale anchor's formulas name the next states
    level1 = Counter(fs[0] for states in valid for fs in states[1:] if fs)
    total = sum(level1.values())
    top = [(sorted(f), c / total) for f, c in level1.most_common(8)]
    report["level1_top"] = top
    report["level1_top1_rate"] = level1[frozenset({(0, 0)})] / total
    for k in (1, 3, 8, 10):
        report[f"level1_covered_by_top{k}"] = sum(c for _, c in level1.most_common(k)) / total

    # 2. graphs: as bundled, degree-1 on 16 / 64 / 128 prompts, greedy replay on 64 / 128
    bundled = {}
    for f in sorted((loaded.path / "graphs").glob("*.json")):
        g, key = DraftGraph.from_json(f.read_text())
        if key["remasking"] == cfg.remasking:
            bundled[key["budget"]] = g.nodes
    base_nfe = replay_nfe(valid, set())
    report["valid_baseline_nfe_per_prompt"] = base_nfe / prompts
    rows = []
    variants = {"bundled (16 prompts, degree-1)": lambda d: bundled[d],
                "degree-1, 16 prompts": lambda d: calibrate(counts_of(calib16), d).nodes,
                f"degree-1, {len(sets['calib'])} prompts": lambda d: calibrate(counts_of(calib), d).nodes,
                "greedy replay, 16 prompts": lambda d: search(calib16, d).nodes,
                f"greedy replay, {len(sets['calib'])} prompts": lambda d: search(calib, d).nodes}
    graphs = {}
    for name, make in variants.items():
        for d in (3, 5, 8, 10):
            nodes = make(d)
            graphs[name, d] = nodes
            nfe = replay_nfe(valid, set(nodes))
            rows.append({"graph": name, "D": d, "nfe_per_prompt": nfe / prompts, "ratio": base_nfe / nfe,
                         "nodes": [sorted(q) for q in nodes]})
            print(f"{name:32} D={d:2}: valid NFE {nfe / prompts:6.1f}  x{base_nfe / nfe:.2f}", file=sys.stderr)
    report["graphs"] = rows
    # 3. optimistic ceiling: the greedy graph fitted on the validation traces themselves (in-sample)
    for d in (8, 10):
        nfe = replay_nfe(valid, set(search(valid, d).nodes))
        report[f"in_sample_greedy_D{d}_ratio"] = base_nfe / nfe
    # 4. the same replay on the calibration prompts with the bundled graph (in-sample check of the replay)
    report["bundled_D8_ratio_on_calib16"] = replay_nfe(calib16, set()) / replay_nfe(calib16, set(bundled[8]))
    (args.out / f"study-{args.setting}-{args.gen_length}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"graphs-{args.setting}-{args.gen_length}.pkl").write_bytes(pickle.dumps(graphs))
    print(json.dumps({k: v for k, v in report.items() if k != "graphs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
