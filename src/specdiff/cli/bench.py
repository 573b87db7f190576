"""`specdiff bench`, `profile`, `versus`, `bound` and `round-costs`: measuring methods and the
tables read off a bench's results."""

from __future__ import annotations

import argparse
from pathlib import Path

from specdiff.cli.common import (
    ProgressBar, add_model_args, add_setting, config_flags, check_out_dir, check_out_file, check_positive, load_models, load_vp_drafter, split_list,
)
from specdiff.bench.config import BenchConfig
from specdiff.config import KERNELS, check_draft_vocab
from specdiff.errors import SpecdiffError

# this module's commands in help order: each has add_<name>_args (its docstring: the help line and an
# example) and cmd_<name>
COMMANDS = ("bench", "profile", "versus", "bound", "round-costs", "speed")


def add_bench_args(p: argparse.ArgumentParser) -> None:
    """methods x budgets x temperatures over prompt sets, ar as the baseline, outputs checked against ar

    specdiff bench --prompts data/prompts/function_completion.jsonl --methods ar,ddtree --limit 8 --out out/b
    """
    add_model_args(p)
    d = BenchConfig()
    p.add_argument("--methods", default=",".join(d.methods),
                   help="comma-separated methods; ar always runs first as the baseline")
    p.add_argument("--prompts", action="append", required=True, help="JSONL prompt file (repeatable)")
    p.add_argument("--limit", type=int, default=d.limit, help="prompts per prompt file")
    p.add_argument("--temperature", default=",".join(f"{t:g}" for t in d.temperatures),
                   help="comma-separated temperatures")
    p.add_argument("--budgets", default=",".join(map(str, d.budgets)),
                   help="comma-separated node budgets for ddtree and d2sd-hybrid")
    for path, flag, f in config_flags():
        if path in (("max_new_tokens",), ("overlap",), ("draft_vocab",), ("d2sd", "branches"), ("caddtree", "profile")):
            add_setting(p, flag, f)
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed decodes per method before the timed ones")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="each prompt decodes with its own seed, derived from (seed, prompt set, prompt id)")
    p.add_argument("--caddtree-horizon", default=",".join(d.caddtree_horizons),
                   help="what caddtree's round size maximises: round (its own tokens per ms, the default) or decode "
                        "(the decode's); a comma-separated list runs the others beside it as caddtree/<horizon>")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md and the plots")


def cmd_bench(args: argparse.Namespace) -> int:
    from specdiff.bench.harness import report, run_bench
    from specdiff.config import METHODS, check_temperature
    from specdiff.methods import needs_drafter, needs_vp_drafter

    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SpecdiffError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    temps = split_list(args.temperature, float, "--temperature")
    budgets = split_list(args.budgets, int, "--budgets")
    for t in temps:
        check_temperature(t)
    if any(b < 1 for b in budgets):
        raise SpecdiffError("budgets must be >= 1")
    horizons = list(dict.fromkeys(h for h in args.caddtree_horizon.split(",") if h))
    if not horizons or any(h not in ("decode", "round") for h in horizons):
        raise SpecdiffError(f"--caddtree-horizon must list decode and/or round, got {args.caddtree_horizon!r}")
    check_positive(args.limit, "--limit")
    check_draft_vocab(args.draft_vocab)
    check_out_dir(args.out)
    model, tokenizer, drafter = load_models(args, need_drafter=any(map(needs_drafter, methods)))
    vp_drafter = load_vp_drafter(args) if any(map(needs_vp_drafter, methods)) else None  # D²SD's second drafter
    check_draft_vocab(args.draft_vocab, model.config.vocab_size)  # before any run, not at the first drafted one
    cfg = BenchConfig(methods=methods, budgets=budgets, temperatures=temps, prompt_files=args.prompts,
                      limit=args.limit, max_new_tokens=args.max_new_tokens, warmup=args.warmup, seed=args.seed,
                      profile=args.profile, engine=args.engine, kernels=args.kernels, numerics=args.numerics,
                      tree_search=args.tree_search, overlap=args.overlap, draft_vocab=args.draft_vocab,
                      caddtree_horizons=horizons, device=args.device, dtype=args.dtype, target=str(args.target or "bundled"),
                      drafter=str(args.drafter or "bundled"), branches=args.branches,
                      vp_drafter=str(args.vp_drafter or ("bundled" if vp_drafter is not None else "")))
    bar = ProgressBar("decode")
    try:
        result = run_bench(cfg, model, tokenizer, drafter, args.out, progress=bar, vp_drafter=vp_drafter)
    finally:
        bar.close()
    print(report(result))
    return 1 if result["mismatches"] else 0


def add_profile_args(p: argparse.ArgumentParser) -> None:
    """measure this device's draft and verify costs (caddtree's cost profile)

    specdiff profile --device cuda --dtype bfloat16 --engine graph
    """
    add_model_args(p)
    p.add_argument("--contexts", default="128,1024", help="context lengths (comma-separated)")
    p.add_argument("--nodes", help="tree sizes, root included (default: 1,2,4,..,512; on the graph engine its "
                                    "node buckets up to 512, since a tree costs its bucket)")
    p.add_argument("--measure", default=None, choices=["steps", "rounds"],
                   help="steps: the drafter and target steps apart, each at its fastest; rounds: whole decode "
                        "rounds per tree size (default: rounds on the graph engine, steps otherwise)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 30 steps, or 8 decodes "
                                                          "per size for rounds)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions before each measurement")
    for path, flag, f in config_flags():
        if path == ("d2sd", "branches"):  # with --vp-drafter: the rows of the VP re-draft measured
            add_setting(p, flag, f)
    p.add_argument("--out", type=Path, help="profile JSON (default: the per-device cache caddtree reads)")


def cmd_profile(args: argparse.Namespace) -> int:
    from specdiff.methods.caddtree.profiler import build_profile

    contexts = split_list(args.contexts, int, "--contexts")
    nodes = split_list(args.nodes, int, "--nodes") if args.nodes else None
    if not contexts:
        raise SpecdiffError("--contexts must name at least one context length")
    if args.out is not None:
        check_out_file(args.out)
    check_positive(args.branches, "--branches")
    model, tokenizer, drafter = load_models(args, need_drafter=True)
    vp_drafter = load_vp_drafter(args) if args.vp_drafter else None  # D²SD's re-draft, priced when named
    path = build_profile(model, tokenizer, drafter, contexts, nodes, args.engine, args.kernels, args.dtype, args.measure, args.reps,
                         args.warmup, str(args.target or "bundled"), str(args.drafter or "bundled"), args.out,
                         vp_drafter, args.branches)
    print(f"profile saved: {path}")
    return 0


def add_versus_args(p: argparse.ArgumentParser) -> None:
    """caddtree against the best fixed ddtree budget of a bench, with a 95%% interval

    specdiff versus out/b
    """
    p.add_argument("results", type=Path, help="a bench's results.json, its .gz, or its folder")
    p.add_argument("--method", default="caddtree", help="the run set against the best fixed budget (default: caddtree)")


def cmd_versus(args: argparse.Namespace) -> int:
    from specdiff.bench.harness import load_results
    from specdiff.bench.versus import versus_best_fixed, versus_table

    rows = versus_best_fixed(load_results(args.results), args.method)
    if not rows:
        raise SpecdiffError(f"no {args.method} run beside a ddtree@B run in {args.results}")
    print("\n".join(versus_table(rows, args.method)))
    return 0


def add_bound_args(p: argparse.ArgumentParser) -> None:
    """a bench's per-token times against the bound its profiled parts set

    specdiff bound out/b profile.json
    """
    p.add_argument("results", type=Path, help="a bench's results.json, its .gz, or its folder")
    p.add_argument("profile", type=Path, help="a steps profile (`specdiff profile --measure steps`)")
    p.add_argument("--context", type=int, default=512, help="context length at which C_v is read")


def cmd_bound(args: argparse.Namespace) -> int:
    from specdiff.bench.bound import bound_table, markdown
    from specdiff.bench.harness import load_results
    from specdiff.methods.caddtree.cost_model import CostProfile

    result = load_results(args.results)
    profile = CostProfile.load(args.profile)
    if profile.measure != "steps":
        raise SpecdiffError(f"{args.profile} times whole rounds, which hold the overhead this bound measures; "
                            "make a steps profile (`specdiff profile --measure steps`)")
    print(markdown(bound_table(result, profile, args.context)), end="")
    return 0


def add_round_costs_args(p: argparse.ArgumentParser) -> None:
    """a bench's measured rounds against a cost profile, per tree-size bucket

    specdiff round-costs out/b profile.json
    """
    p.add_argument("results", type=Path, help="a bench's results.json, its .gz, or its folder")
    p.add_argument("profile", type=Path, help="the cost profile the rounds are priced with")


def cmd_round_costs(args: argparse.Namespace) -> int:
    from specdiff.bench.harness import load_results
    from specdiff.bench.round_costs import round_cost_table
    from specdiff.methods.caddtree.cost_model import CostProfile

    rows = round_cost_table(load_results(args.results), CostProfile.load(args.profile))
    print("| prompt set | T | method | bucket | rounds | measured ms | profile ms | measured / profile |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompt_set']} | {r['temperature']:g} | {r['method']} | {r['bucket']} | {r['rounds']} | "
              f"{r['measured_ms']:.2f} | {r['predicted_ms']:.2f} | {r['ratio']:.2f} |")
    return 0


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """a shape's AR ms/token and drafted round costs (random weights), next to the HBM bound

    specdiff speed --shape qwen3-8b --device cuda --dtype bfloat16 --engine graph
    """
    from specdiff.bench.speed import SpeedConfig
    from specdiff.models.shapes import PUBLIC

    d = SpeedConfig()
    p.add_argument("--shape", default=d.shape, help=f"{', '.join(PUBLIC)} or HIDDENxLAYERS, random weights")
    p.add_argument("--target", help="a target folder instead of random weights")
    p.add_argument("--vocab", type=int, help="HIDDENxLAYERS: the vocabulary (default: 151,936)")
    p.add_argument("--drafter-layers", type=int, default=d.drafter_layers, help="the random DFlash drafter's depth")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"], help="where the models run")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"], help="weights and compute")
    p.add_argument("--engine", default=d.engine, choices=["hf", "static", "graph"], help="the forwards")
    p.add_argument("--kernels", default=d.kernels, choices=list(KERNELS),
                   help="static, graph: fused Triton kernels (triton; glued: the glue inside the GEMMs of "
                        "forwards of up to 16 rows), PyTorch ops, or triton on a CUDA GPU (auto)")
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens, help="the prompt's length")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens, help="tokens each decode generates")
    p.add_argument("--budgets", default=",".join(map(str, d.budgets)), help="comma-separated ddtree budgets")
    p.add_argument("--numerics", default=d.numerics, choices=["auto", "exact", "fast"],
                   help="static, graph: the forward's rounding (as `specdiff generate --numerics`)")
    p.add_argument("--tree-search", default=",".join(d.tree_searches),
                   help="ddtree's best-first search: auto, host, device, or several comma-separated (each timed)")
    p.add_argument("--draft-vocab", type=int, default=d.draft_vocab,
                   help="the drafter's LM head over the first N token ids only (0: all; as `specdiff generate "
                        "--draft-vocab`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_speed(args: argparse.Namespace) -> int:
    import json

    from specdiff.bench.speed import SpeedConfig, measure, table
    from specdiff.config import TREE_SEARCHES

    budgets = split_list(args.budgets, int, "--budgets")
    searches = [s.strip() for s in split_list(args.tree_search, str, "--tree-search")]
    bad = [s for s in searches if s not in TREE_SEARCHES] or ([] if searches else [""])
    if bad:
        raise SpecdiffError(f"--tree-search takes {', '.join(TREE_SEARCHES)} (comma-separated), got {bad[0]!r}")
    for flag in ("drafter_layers", "prompt_tokens", "new_tokens", "vocab"):
        if getattr(args, flag) is not None:
            check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if any(b < 1 for b in budgets):
        raise SpecdiffError("budgets must be >= 1")
    check_draft_vocab(args.draft_vocab)
    result = measure(SpeedConfig(shape=args.shape, target=args.target, drafter_layers=args.drafter_layers,
                                 vocab=args.vocab, device=args.device, dtype=args.dtype, engine=args.engine,
                                 kernels=args.kernels, numerics=args.numerics, tree_searches=searches,
                                 prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, budgets=budgets,
                                 draft_vocab=args.draft_vocab))
    print(json.dumps(result) if args.json else table(result), end="\n" if args.json else "")
    return 0
