"""`specdiff dllm bench`: baseline masked-diffusion decoding vs Spiffy on held-out prompts.

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

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specdiff.bench.harness import environment
from specdiff.bench.tables import environment_line, markdown_table
from specdiff.dllm import pipeline as dc
from specdiff.dllm.config import DLLMConfig
from specdiff.errors import SpecdiffError
from specdiff.sampling import derive_seed

SETTINGS = ("fixed", "threshold")


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
        "per_prompt": [{"id": pid, "seed": derive_seed(cfg_seed, pid), "nfe": r.nfe, "steps": r.steps,
                        "accepted": r.accepted, "seconds": round(s, 5)} for (pid, _), (r, s) in zip(prompts, runs)],
    }


@dataclass
class DLLMBenchConfig:
    """Every setting of a dLLM bench, saved with its results."""

    model: str | None = None  # dLLM folder (None: the bundled one)
    device: str = "cpu"
    dtype: str = "float32"
    prompts: list[str] = field(default_factory=list)  # JSONL prompt sets (empty: function completion)
    offset: int = 0
    num_prompts: int = 16  # per set
    gen_length: int = 128
    block_length: int = 32
    threshold: float = 0.9
    temperature: float = 0.0
    seed: int = 0  # each prompt decodes with derive_seed(seed, prompt id)
    cache: str = "auto"  # resolved to the model's mode before the run (auto: dual for LLaDA and Dream)
    settings: str = ",".join(SETTINGS)
    budgets: str = "3,5,8,10"
    graphs: str | None = None  # folder of calibrated graphs (None: the model's graphs/)
    warmup: int = 1


def bench(cfg: DLLMBenchConfig) -> dict:
    budgets = dc.parse_budgets(cfg.budgets)
    settings = _settings(cfg.settings)
    loaded = dc.load_model(cfg.model, cfg.device, cfg.dtype)
    cfg = dataclasses.replace(cfg, cache=dc.resolve_cache(cfg.cache, loaded))
    sync = torch.cuda.synchronize if cfg.device == "cuda" else (lambda: None)
    files = [Path(f) for f in cfg.prompts] or [dc.PROMPT_SETS / "function_completion.jsonl"]
    graphs = Path(cfg.graphs) if cfg.graphs else None
    rows, t_start = [], time.perf_counter()
    for setting in settings:
        dcfg = DLLMConfig(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.gen_length,
                          remasking="low_confidence" if setting == "fixed" else "threshold",
                          threshold=cfg.threshold, temperature=cfg.temperature, seed=cfg.seed, mask_id=loaded.mask_id)
        dcfg.validate()
        prompts = [(pid, dc.encode_prompt(loaded, text, dcfg, truncate=True))
                   for pid, text in dc.read_prompts(files, cfg.offset, cfg.num_prompts)]
        base = run_method(loaded, prompts, dcfg, None, cfg.cache, cfg.warmup, sync)
        rows.append(summarise("baseline", setting, None, "-", None, base, base, prompts, dcfg.seed))
        _progress(rows[-1], t_start)
        for budget in budgets:
            graph, source = dc.resolve_graph(graphs, loaded, dcfg, cfg.cache, budget)
            spec = run_method(loaded, prompts, dcfg, graph, cfg.cache, cfg.warmup, sync)
            rows.append(summarise("spiffy", setting, budget, source, graph, spec, base, prompts, dcfg.seed))
            _progress(rows[-1], t_start)
    return {
        "config": dataclasses.asdict(cfg),
        "model": str(loaded.path), "environment": environment(cfg.device),
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
        f"model `{result['model']}`, {environment_line(env)}, {cfg['dtype']}, cache {cfg['cache']}; "
        f"{cfg['num_prompts']} prompts per set, gen length {cfg['gen_length']}, block {cfg['block_length']}, "
        f"T={cfg['temperature']:g}; threshold setting at {cfg['threshold']:g}.",
        f"Spiffy trajectories that differ from the baseline's: **{result['mismatches']}**.", "",
    ]
    columns = ["setting", "method", "D", "graph", "mean NFE", "NFE ratio", "steps", "accepted", "drafts/forward",
               "tok/s", "time speed-up", "mismatches"]
    rows = []
    for r in result["rows"]:
        graph = Path(r["graph"]).name if r["graph"] not in ("-", "default_graph") else r["graph"]
        rows.append([r["setting"], r["method"], r["budget"] or "-", graph, f"{r['mean_nfe']:.1f}",
                     f"{r['nfe_ratio']:.2f}", f"{r['mean_steps']:.1f}", f"{r['mean_accepted']:.1f}",
                     f"{r['drafts_per_forward']:.1f}", f"{r['tokens_per_s']:.1f}", f"{r['time_speedup']:.2f}",
                     r["mismatches"]])
    lines += markdown_table(columns, rows)
    return "\n".join(lines) + "\n"


def write_results(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(report(result), encoding="utf-8")
