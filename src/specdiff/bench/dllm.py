"""`specdiff dllm bench` (`python -m specdiff.bench.dllm`): baseline masked-diffusion decoding
vs Spiffy on held-out prompts.

Two settings, each with its own baseline on the same prompts:
- fixed: LLaDA low-confidence at one token per step (steps = gen_length), Spiffy at each D;
- threshold: Fast-dLLM threshold unmasking (default 0.9), Spiffy on top of it.
Spiffy's graph for each (setting, D) comes from --graphs (calibrated, `specdiff dllm
calibrate`), else the model's graphs/ folder, else `default_graph`; the source is recorded.

Every Spiffy run's state trajectory is compared with its baseline's on the fly: a mismatch is
counted, printed to stderr and kept in results.json, never hidden. Mean NFE, NFE ratio
(baseline / Spiffy), steps and accepted steps come from the decoders; tokens/s times each decode
(CUDA synchronised), with --warmup decodes of the first prompt before each method untimed.
fp32 by default: a wider verification forward may otherwise flip a near-tie (notes 2.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from specdiff.bench.harness import environment
from specdiff.dllm import commands as dc
from specdiff.errors import SpecdiffError
from specdiff.sampling import derive_seed

SETTINGS = ("fixed", "threshold")


def add_arguments(p: argparse.ArgumentParser) -> None:
    dc.add_model_args(p)
    p.add_argument("--prompts", type=Path, action="append",
                   help="JSONL prompt set, repeatable (default data/prompts/function_completion.jsonl)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--num-prompts", type=int, default=16, help="prompts per set")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = argmax; else finite and >= 1e-30")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="auto", choices=["auto", "none", "dual"],
                   help="auto: dual cache for LLaDA and Dream, block-causal (none) otherwise")
    p.add_argument("--settings", default=",".join(SETTINGS), help="fixed, threshold or both")
    p.add_argument("--budgets", default="3,5,8,10")
    p.add_argument("--graphs", type=Path, help="folder of calibrated graphs (default: the model's graphs/)")
    p.add_argument("--warmup", type=int, default=1, help="untimed decodes of the first prompt per method")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")


def _settings(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SETTINGS]
    if bad or not names:
        raise SpecdiffError(f"--settings takes {' and/or '.join(SETTINGS)}, got {text!r}")
    return names


def _timed(loaded, ids, cfg, graph, cache: str, sync):
    sync()
    t0 = time.perf_counter()
    result = dc.decode(loaded, ids, cfg, graph, cache)
    sync()
    return result, time.perf_counter() - t0


def run_method(loaded, prompts, cfg, graph, cache: str, warmup: int, sync) -> list[tuple]:
    """[(result, seconds)] per prompt, after `warmup` untimed decodes of the first prompt. Each
    prompt decodes with its own seed, derive_seed(cfg.seed, prompt id)."""
    for _ in range(warmup):
        dc.decode(loaded, prompts[0][1], cfg, graph, cache)
    return [_timed(loaded, ids, dataclasses.replace(cfg, seed=derive_seed(cfg.seed, pid)), graph, cache, sync)
            for pid, ids in prompts]


def summarise(name: str, setting: str, budget: int | None, source: str, graph, runs, base_runs, prompts,
              cfg_seed: int) -> dict:
    nfe = [r.nfe for r, _ in runs]
    seconds = sum(s for _, s in runs)
    tokens = sum(r.token_ids.numel() for r, _ in runs)
    mismatches = [pid for (pid, _), (r, _), (b, _) in zip(prompts, runs, base_runs) if r.trajectory != b.trajectory]
    base_nfe = sum(b.nfe for b, _ in base_runs)
    base_s = sum(s for _, s in base_runs)
    return {
        "setting": setting, "method": name, "budget": budget, "graph": source,
        "graph_nodes": len(graph.nodes) if graph is not None else 0,
        "mean_nfe": statistics.mean(nfe), "mean_steps": statistics.mean(r.steps for r, _ in runs),
        "mean_accepted": statistics.mean(r.accepted for r, _ in runs),
        "nfe_ratio": base_nfe / max(1, sum(nfe)),
        "drafts_per_forward": sum(r.drafted for r, _ in runs) / max(1, sum(nfe)),
        "seconds": round(seconds, 4), "tokens_per_s": tokens / seconds if seconds else 0.0,
        "time_speedup": base_s / seconds if seconds else 0.0,
        "mismatches": len(mismatches), "mismatched_prompts": mismatches,
        "per_prompt": [{"id": pid, "seed": derive_seed(cfg_seed, pid), "nfe": r.nfe, "steps": r.steps, "accepted": r.accepted, "seconds": round(s, 5)}
                       for (pid, _), (r, s) in zip(prompts, runs)],
    }


def bench(args: argparse.Namespace) -> dict:
    budgets = dc.parse_budgets(args.budgets)
    settings = _settings(args.settings)
    loaded = dc.load_model(args)
    args.cache = dc.resolve_cache(args.cache, loaded)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    files = args.prompts or [dc.PROMPT_SETS / "function_completion.jsonl"]
    rows, t_start = [], time.perf_counter()
    for setting in settings:
        ns = argparse.Namespace(gen_length=args.gen_length, block_length=args.block_length, steps=None,
                                remasking="low_confidence" if setting == "fixed" else "threshold",
                                threshold=args.threshold, temperature=args.temperature, seed=args.seed)
        cfg = dc.decode_config(ns, loaded.mask_id)
        prompts = [(pid, dc.encode_prompt(loaded, text, cfg, truncate=True))
                   for pid, text in dc.read_prompts(files, args.offset, args.num_prompts)]
        base = run_method(loaded, prompts, cfg, None, args.cache, args.warmup, sync)
        rows.append(summarise("baseline", setting, None, "-", None, base, base, prompts, cfg.seed))
        _progress(rows[-1], t_start)
        for budget in budgets:
            graph, source = dc.resolve_graph(args.graphs, loaded, cfg, args.cache, budget)
            spec = run_method(loaded, prompts, cfg, graph, args.cache, args.warmup, sync)
            rows.append(summarise("spiffy", setting, budget, source, graph, spec, base, prompts, cfg.seed))
            _progress(rows[-1], t_start)
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if not callable(v) and k not in ("func", "dllm_func")},
        "model": str(loaded.path), "environment": environment(args.device),
        "mismatches": sum(r["mismatches"] for r in rows), "rows": rows,
        "wall_s": round(time.perf_counter() - t_start, 2),
    }


def _progress(row: dict, t_start: float) -> None:
    d = f" D={row['budget']}" if row["budget"] else ""
    print(f"[{time.perf_counter() - t_start:6.1f}s] {row['setting']:9} {row['method']}{d}: NFE {row['mean_nfe']:.1f} "
          f"(x{row['nfe_ratio']:.2f}), {row['tokens_per_s']:.1f} tok/s, graph {row['graph']}", file=sys.stderr)
    if row["mismatches"]:
        print(f"MISMATCH: {row['method']}{d} ({row['setting']}) differs from the baseline on "
              f"{row['mismatches']} prompts: {', '.join(row['mismatched_prompts'])}", file=sys.stderr)


def report(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    lines = [
        "# specdiff dLLM bench: baseline vs Spiffy", "",
        f"model `{result['model']}`, device {env.get('gpu', env['device'])}, {cfg['dtype']}, cache {cfg['cache']}, "
        f"torch {env['torch']}, transformers {env['transformers']}; {cfg['num_prompts']} prompts per set, "
        f"gen length {cfg['gen_length']}, block {cfg['block_length']}, T={cfg['temperature']:g}; "
        f"threshold setting at {cfg['threshold']:g}.",
        f"Spiffy trajectories that differ from the baseline's: **{result['mismatches']}**.", "",
        "| setting | method | D | graph | mean NFE | NFE ratio | steps | accepted | drafts/forward | tok/s | time speed-up | mismatches |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        graph = Path(r["graph"]).name if r["graph"] not in ("-", "default_graph") else r["graph"]
        lines.append(f"| {r['setting']} | {r['method']} | {r['budget'] or '-'} | {graph} | {r['mean_nfe']:.1f} | "
                     f"{r['nfe_ratio']:.2f} | {r['mean_steps']:.1f} | {r['mean_accepted']:.1f} | "
                     f"{r['drafts_per_forward']:.1f} | {r['tokens_per_s']:.1f} | {r['time_speedup']:.2f} | "
                     f"{r['mismatches']} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    result = bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "results.md").write_text(report(result), encoding="utf-8")
    print(report(result))
    return 1 if result["mismatches"] else 0


def main(argv: list[str] | None = None) -> int:
    from specdiff.cli import standalone

    return standalone("specdiff dllm bench", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
