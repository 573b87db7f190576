"""`specdiff bench`: runs methods over prompt sets in one process and records what they did.

For every (prompt set, temperature) each prompt is decoded by AR first and then by every other
method, in an order rotated from prompt to prompt (methods interleaved, so that drift of the
machine during a run does not favour whichever method ran in a quiet stretch); every other
method's output is checked against AR's on the fly (at any temperature: sampling noise is keyed by
position, so a lossless method reproduces AR's tokens exactly). A mismatch is counted and printed,
never hidden. Per-token time excludes prefill; speed-up is AR ms/token over the method's, from
the same run.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from specdiff import native
from specdiff.bench.config import BenchConfig
from specdiff.bench.tables import environment_line, markdown_table
from specdiff.errors import SpecdiffError
from specdiff.methods import REGISTRY
from specdiff.methods.caddtree.profiler import device_name
from specdiff.sampling import derive_seed
from specdiff.types import GenerationResult


@dataclass
class Run:
    prompt_set: str
    prompt_id: str
    method: str  # "ddtree@64" for budgeted methods
    temperature: float
    num_new_tokens: int
    rounds: int
    tau: float
    decode_s: float
    prefill_s: float
    mean_tree_nodes: float
    accept_lengths: list[int]
    matches_ar: bool | None
    mean_candidate_rows: float = 0.0  # d2sd: the paper's (K+1)·γ rows per round; else = mean_tree_nodes
    round_overhead_ms: float | None = None  # caddtree: its measured per-round cost beyond the profile, after this run
    prompt_tokens: int = 0  # the first round's root sits at position prompt_tokens - 1
    tree_sizes: list[int] = field(default_factory=list)  # per round: nodes verified (root included)
    round_ms: list[float] = field(default_factory=list)  # per round: wall time (`bench.round_costs` reads both)
    seed: int = 0  # the sampling seed this prompt ran with: sampling.derive_seed(config seed, prompt set, prompt id)

    @staticmethod
    def of(prompt_set: str, prompt_id: str, label: str, temperature: float, r: GenerationResult,
           matches_ar: bool | None, prompt_tokens: int, seed: int, round_overhead_ms: float | None) -> Run:
        return Run(prompt_set, prompt_id, label, temperature, r.num_new_tokens, r.rounds, r.tau, r.decode_s,
                   r.prefill_s, sum(r.tree_sizes) / max(1, len(r.tree_sizes)), r.accept_lengths, matches_ar,
                   sum(r.candidate_rows) / max(1, len(r.candidate_rows)), round_overhead_ms, prompt_tokens,
                   r.tree_sizes, [round(ms, 4) for ms in r.round_ms], seed)


def variants(cfg: BenchConfig) -> list[tuple[str, str, int]]:
    """(label, method, budget); budgets apply to tree methods only; ar first."""
    out = [("ar", "ar", 1)]
    for m in cfg.methods:
        if m == "ar":
            continue
        if REGISTRY[m].budgeted:
            out += [(f"{m}@{b}", m, b) for b in cfg.budgets]
        elif m == "caddtree":
            out += [("caddtree" if i == 0 else f"caddtree/{h}", m, 1) for i, h in enumerate(cfg.caddtree_horizons)]
        else:
            out.append((m, m, 1))
    return out


def read_prompt_file(path: Path, limit: int) -> list[dict]:
    """The first `limit` rows of a JSONL prompt file as {"id", "prompt"} (`loading.read_prompt_rows`)."""
    from specdiff.loading import read_prompt_rows

    return [{"id": pid, "prompt": text} for pid, text in read_prompt_rows(path)[:limit]]


# after every finished decode: (what ran, decodes done, decodes in all)
Progress = Callable[[str, int, int], None]


def run_bench(cfg: BenchConfig, model, tokenizer, drafter, out_dir: Path, progress: Progress | None = None,
              vp_drafter=None) -> dict:
    from specdiff.loading import eos_ids
    from specdiff.engine import build_decoder, make_target

    backend = native.load()  # the one build_decoder hands each decoder
    target = make_target(model, cfg.engine, backend, cfg.kernels, cfg.numerics)
    eos = eos_ids(model, tokenizer)
    # every prompt file is read (and refused, if bad) before the first decode
    sets = [(Path(pfile).stem, read_prompt_file(Path(pfile), cfg.limit)) for pfile in cfg.prompt_files]
    runs: list[Run] = []
    mismatches = 0
    profiled_on: dict = {}  # caddtree's cost profile: the device it was measured on
    decodes = len(cfg.temperatures) * len(variants(cfg)) * sum(len(prompts) for _, prompts in sets)

    def result_so_far(complete: bool) -> dict:
        return {
            "config": dataclasses.asdict(cfg),
            # the same trees either way, not the same host time
            "environment": {**environment(cfg.device), "host_tree_search": "c" if backend is not None else "python",
                            # what the target ran, where the config says "auto"
                            "kernels": target.kernels_ran, "numerics": target.numerics, **profiled_on},
            "complete": complete,
            "mismatches": mismatches,
            "summary": summarize(runs),
            "runs": [dataclasses.asdict(r) for r in runs],
        }

    def save(result: dict) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(result, indent=1))
        (out_dir / "report.md").write_text(report(result))

    try:
        for set_name, prompts in sets:
            encoded = [(p["id"], list(tokenizer(p["prompt"], add_special_tokens=False)["input_ids"])) for p in prompts]
            longest = max(len(ids) for _, ids in encoded)
            for temp in cfg.temperatures:
                decoders = []
                for label, method, budget in variants(cfg):
                    decoder = build_decoder(target, cfg.decode_config(label, method, budget, temp), drafter, eos,
                                            vp_drafter=vp_drafter)
                    decoder.prepare(longest)  # no allocation or graph capture while timed
                    profile = getattr(decoder.proposer, "profile", None)
                    if profile is not None:
                        profiled_on.update(caddtree_profile_device=profile.device,
                                           device_name=device_name(target.device))
                    for _, ids in encoded[: cfg.warmup]:
                        decoder.generate(ids)
                    decoders.append((label, method, decoder))
                ar_tokens: dict[str, list[int]] = {}
                for i, (pid, ids) in enumerate(encoded):
                    # ar first (its tokens are the reference), then the others in an order rotated per
                    # prompt: a slow drift of the machine (clocks, other load) lands on every method alike
                    others = decoders[1:]
                    k = i % max(1, len(others))
                    seed = derive_seed(cfg.seed, set_name, pid)
                    for label, method, decoder in decoders[:1] + others[k:] + others[:k]:
                        decoder.cfg.sampling.seed = seed
                        r = decoder.generate(ids)
                        if method == "ar":
                            ar_tokens[pid], match = r.token_ids, None
                        else:
                            match = r.token_ids == ar_tokens[pid]
                            if not match:
                                mismatches += 1
                                print(f"MISMATCH: {label} T={temp} on {set_name}/{pid} differs from ar",
                                      file=sys.stderr)
                        overhead = getattr(decoder.proposer, "overhead", None)  # caddtree's, when it measures one
                        runs.append(Run.of(set_name, pid, label, temp, r, match, len(ids), seed,
                                           overhead.ms if overhead is not None else None))
                        if progress is not None:
                            progress(f"{set_name} T={temp:g} {pid} {label}", len(runs), decodes)
    except KeyboardInterrupt:  # keep every finished run
        save(result_so_far(complete=False))
        print(f"interrupted: {len(runs)} finished runs saved in {out_dir}", file=sys.stderr)
        raise
    result = result_so_far(complete=True)
    save(result)
    try:
        from specdiff.bench.plots import plot_results

        plot_results(result, out_dir)
    except ImportError:
        print("note: matplotlib is not installed, so no PNG plots (`specdiff plot DIR` draws them later)",
              file=sys.stderr)
    return result


def load_results(path: Path) -> dict:
    """A bench's results: `path` is results.json, its gzip (how committed runs are stored), or a
    folder holding either."""
    import gzip

    if path.is_dir():
        path = path / "results.json" if (path / "results.json").is_file() else path / "results.json.gz"
    if not path.is_file():
        raise SpecdiffError(f"no bench results at {path}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        result = json.loads(raw)
    except (OSError, EOFError, ValueError) as e:  # gzip, UTF-8 and JSON errors
        raise SpecdiffError(f"{path} is not a bench's results ({e})") from None
    if not isinstance(result, dict) or not isinstance(result.get("runs", []), list):
        raise SpecdiffError(f"{path} is not a bench's results (no runs)")
    return result


def summarize(runs: list[Run]) -> list[dict]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.prompt_set, r.temperature, r.method), []).append(r)
    rows = []
    for (pset, temp, method), rs in groups.items():
        tokens = sum(r.num_new_tokens for r in rs)
        rounds = sum(r.rounds for r in rs)
        ms = 1000 * sum(r.decode_s for r in rs) / max(1, tokens)
        rows.append({
            "prompt_set": pset, "temperature": temp, "method": method, "prompts": len(rs),
            "tau": tokens / max(1, rounds),  # token-weighted: total new tokens / total rounds
            "tau_mean_per_prompt": statistics.fmean(r.tau for r in rs),
            "ms_per_token": ms,
            # the target's prompt forward and the drafters' intake of its features, per prompt
            "prefill_ms": 1000 * statistics.fmean(r.prefill_s for r in rs),
            "mean_tree_nodes": statistics.fmean(r.mean_tree_nodes for r in rs),
            "mean_candidate_rows": statistics.fmean(r.mean_candidate_rows for r in rs),
            "mismatches": sum(1 for r in rs if r.matches_ar is False),
        })
    for row in rows:
        ar = next(x for x in rows if x["method"] == "ar" and x["prompt_set"] == row["prompt_set"]
                  and x["temperature"] == row["temperature"])
        row["speedup_vs_ar"] = ar["ms_per_token"] / row["ms_per_token"] if row["ms_per_token"] else 0.0
    return rows


def environment(device: str) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "platform": platform.platform(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        from specdiff import kernels

        env["gpu"] = torch.cuda.get_device_name()
        env["kernel_switches"] = kernels.switches(torch.device("cuda"))
    return env


def search_note(cfg: dict, env: dict) -> str:
    """Where the graph engine's tree searches ran, for the report's first line (the device search
    needs a CUDA GPU: elsewhere every search ran on the host)."""
    if cfg.get("engine") != "graph" or "tree_search" not in cfg:
        return ""
    if env.get("device") != "cuda":
        return ", trees searched on the host"
    if cfg["tree_search"] == "auto":
        from specdiff.methods.ddtree import DEVICE_BUDGET

        return f", trees searched on the device for ddtree up to {DEVICE_BUDGET} nodes, else on the host"
    return f", trees searched on the {cfg['tree_search']}"


def profile_note(env: dict) -> list[str]:
    """A line naming the device caddtree's cost profile was measured on, where another: its costs,
    and so its tree sizes, may not hold on this one."""
    measured, here = env.get("caddtree_profile_device"), env.get("device_name")
    if measured is None or measured == here:
        return []
    return [f"caddtree's cost profile was measured on {measured}, not on this run's {here}: its tree sizes "
            "follow that device's costs (`specdiff profile` measures this one).", ""]


def report(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    lines = [
        "# specdiff bench", "",
        f"target `{cfg['target']}`, drafter `{cfg['drafter']}`, {environment_line(env)}, {cfg['dtype']}, "
        f"engine {cfg.get('engine', 'hf')} ({env.get('kernels', 'torch')} kernels, {env.get('numerics', 'fast')} "
        f"numerics{search_note(cfg, env)}); {cfg['limit']} prompts per set, {cfg['max_new_tokens']} new tokens; "
        + ("ar launches each step before reading the last; on the graph engine dflash and ddtree queue each "
           "round's next draft before reading the round (overlap)." if cfg.get("overlap", False)
           else "ar one step at a time, every round read before the next is drafted.")
        + (f" The drafters' head covers the first {cfg['draft_vocab']:,} token ids (`--draft-vocab`)."
           if cfg.get("draft_vocab") else ""),
        f"Greedy/seeded outputs that differ from ar: **{result['mismatches']}**.", "",
        *profile_note(env),
        *([] if result.get("complete", True) else ["**Interrupted**: the finished runs only.", ""]),
        *markdown_table(["prompt set", "T", "method", "tau", "nodes/round", "ms/token", "speed-up vs ar",
                         "prefill ms"],
                        ([r["prompt_set"], f"{r['temperature']:g}", r["method"], f"{r['tau']:.2f}",
                          f"{r['mean_tree_nodes']:.1f}", f"{r['ms_per_token']:.2f}", f"{r['speedup_vs_ar']:.2f}",
                          f"{r['prefill_ms']:.2f}" if "prefill_ms" in r else "-"]
                         for r in result["summary"])),
        "", "ms/token and the speed-up time the decode after the prefill; prefill ms is the target's prompt "
        "forward with the drafters' intake of its features, per prompt.",
    ]
    from specdiff.bench.versus import versus_best_fixed, versus_table

    versus = versus_best_fixed(result)
    if versus:  # the cost-aware tree against the budget it was not told (paired bootstrap over prompts)
        lines += ["", "caddtree against the best fixed DDTree budget of this run:", ""] + versus_table(versus)
    return "\n".join(lines) + "\n"
