"""`specdiff dllm generate | calibrate | bench`: masked-diffusion decoding with the baseline or
Spiffy, Spiffy's graph calibration, and the benchmark (the work is in `specdiff.dllm.pipeline`
and `specdiff.bench.dllm`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from specdiff.cli.common import check_out_dir, check_positive, emit, read_prompt
from specdiff.errors import SpecdiffError

# this module's commands in help order: each has add_<name>_args (its docstring: the help line and an
# example) and cmd_<name>
COMMANDS = ("dllm",)


def add_model_args(p: argparse.ArgumentParser) -> None:
    from specdiff.dllm.pipeline import DTYPES

    p.add_argument("--model", type=Path,
                   help="dLLM folder: specdiff's own, LLaDA, Dream or SDAR (default: the bundled models/dllm)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="float32 (default) keeps Spiffy's rows bit-comparable with the baseline's")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    from specdiff.dllm.config import REMASKING, DLLMConfig

    d = DLLMConfig()
    p.add_argument("--gen-length", type=int, default=d.gen_length, help="answer tokens")
    p.add_argument("--block-length", type=int, default=d.block_length, help="semi-autoregressive block, decoded left to right")
    p.add_argument("--steps", type=int, help="fixed schedules: total steps (default gen-length: one token per step)")
    p.add_argument("--remasking", default=d.remasking, choices=REMASKING, help="which draws a step commits")
    p.add_argument("--threshold", type=float, default=d.threshold, help="threshold rule: commit every p > this")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = argmax; else finite and >= 1e-30")
    p.add_argument("--seed", type=int, default=d.seed, help="keys the sampling noise")
    p.add_argument("--cache", default="auto", choices=["auto", "none", "dual"],
                   help="none: block-causal attention (exact; how specdiff's dLLM and SDAR are trained); "
                        "dual: full bidirectional with Fast-dLLM's dual cache (not SDAR); "
                        "auto (default): dual for LLaDA and Dream, none otherwise")


def decode_config(args: argparse.Namespace, mask_id: int):
    from specdiff.dllm.config import DLLMConfig

    cfg = DLLMConfig(gen_length=args.gen_length, block_length=args.block_length,
                     steps=args.steps if args.steps is not None else args.gen_length, remasking=args.remasking,
                     threshold=args.threshold, temperature=args.temperature, seed=args.seed, mask_id=mask_id)
    cfg.validate()
    return cfg


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from specdiff.dllm import pipeline as dc

    if args.budget < 1:
        raise SpecdiffError(f"--budget must be >= 1, got {args.budget}")
    text = read_prompt(args)
    loaded = dc.load_model(args.model, args.device, args.dtype)
    cache = dc.resolve_cache(args.cache, loaded)
    cfg = decode_config(args, loaded.mask_id)
    ids = dc.encode_prompt(loaded, text, cfg)
    graph, source = (None, None)
    if args.method == "spiffy":
        graph, source = dc.resolve_graph(args.graph, loaded, cfg, cache, args.budget)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = dc.decode(loaded, ids, cfg, graph, cache)
    sync()
    seconds = time.perf_counter() - t0
    answer = dc.answer_text(loaded, result.token_ids)
    settings = dict(cfg.to_dict(), method=args.method, cache=cache, budget=args.budget, graph=source,
                    model=str(loaded.path), kind=loaded.kind, device=args.device, dtype=args.dtype,
                    prompt_tokens=len(ids))
    record = dict(token_ids=result.token_ids.tolist(), text=answer, nfe=result.nfe, steps=result.steps,
                  accepted=result.accepted, seconds=round(seconds, 4), settings=settings)
    emit(args.json, record, text + answer, f"[{args.method}] {cfg.gen_length} tokens, {result.steps} steps in "
         f"{result.nfe} forwards ({result.accepted} accepted), {seconds:.2f}s")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from specdiff.dllm import pipeline as dc

    budgets = dc.parse_budgets(args.budgets)
    check_positive(args.num_prompts, "--num-prompts")
    check_out_dir(args.out)
    loaded = dc.load_model(args.model, args.device, args.dtype)
    cache = dc.resolve_cache(args.cache, loaded)
    cfg = decode_config(args, loaded.mask_id)
    prompts = dc.read_prompts(args.prompts or [dc.PROMPT_SETS / "function_completion.jsonl"], args.offset,
                              args.num_prompts)
    ids = [dc.encode_prompt(loaded, text, cfg, truncate=True) for _, text in prompts]
    calib = dc.calibrate_graphs(loaded, ids, cfg, cache, budgets, args.search)
    paths = dc.write_graphs(args.out, calib, lambda d: dc.graph_key(loaded.path.name, cfg, cache, d))
    print(f"calibrated on {calib.prompts} prompts ({calib.steps} steps, {calib.formulas} formulas) in "
          f"{calib.seconds:.1f}s", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


def add_bench_args(p: argparse.ArgumentParser) -> None:
    from specdiff.bench.dllm import SETTINGS, DLLMBenchConfig

    d = DLLMBenchConfig()
    add_model_args(p)
    p.add_argument("--prompts", type=Path, action="append",
                   help="JSONL prompt set, repeatable (default data/prompts/function_completion.jsonl)")
    p.add_argument("--offset", type=int, default=d.offset, help="first prompt of each set")
    p.add_argument("--num-prompts", type=int, default=d.num_prompts, help="prompts per set")
    p.add_argument("--gen-length", type=int, default=d.gen_length, help="answer tokens")
    p.add_argument("--block-length", type=int, default=d.block_length, help="semi-autoregressive block, decoded left to right")
    p.add_argument("--threshold", type=float, default=d.threshold, help="the threshold setting: commit every draw with p above this")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = argmax; else finite and >= 1e-30")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="each prompt decodes with its own seed, derived from (seed, prompt id)")
    p.add_argument("--cache", default=d.cache, choices=["auto", "none", "dual"],
                   help="auto: dual cache for LLaDA and Dream, block-causal (none) otherwise")
    p.add_argument("--settings", default=d.settings, help=f"{' or '.join(SETTINGS)} or both")
    p.add_argument("--budgets", default=d.budgets, help="comma-separated draft budgets D for Spiffy")
    p.add_argument("--graphs", type=Path, help="folder of calibrated graphs (default: the model's graphs/)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed decodes of the first prompt per method")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")


def cmd_bench(args: argparse.Namespace) -> int:
    from specdiff.bench.dllm import DLLMBenchConfig, bench, report, write_results

    check_positive(args.num_prompts, "--num-prompts")
    check_out_dir(args.out)
    cfg = DLLMBenchConfig(
        model=str(args.model) if args.model is not None else None, device=args.device, dtype=args.dtype,
        prompts=[str(p) for p in args.prompts or []], offset=args.offset, num_prompts=args.num_prompts,
        gen_length=args.gen_length, block_length=args.block_length, threshold=args.threshold,
        temperature=args.temperature, seed=args.seed, cache=args.cache, settings=args.settings,
        budgets=args.budgets, graphs=str(args.graphs) if args.graphs is not None else None, warmup=args.warmup)
    result = bench(cfg)
    write_results(result, args.out)
    print(report(result))
    return 1 if result["mismatches"] else 0


def add_dllm_args(parser: argparse.ArgumentParser) -> None:
    """masked-diffusion LM: generate, calibrate Spiffy graphs, bench

    specdiff dllm generate --method spiffy --prompt 'def f(x):'
    """
    sub = parser.add_subparsers(dest="dllm_command", required=True, parser_class=type(parser))
    g = sub.add_parser("generate", help="one answer with the baseline or Spiffy")
    add_model_args(g)
    add_decode_args(g)
    g.add_argument("--prompt", help="the prompt text")
    g.add_argument("--prompt-file", help="a UTF-8 file holding the prompt")
    g.add_argument("--method", default="spiffy", choices=["baseline", "spiffy"], help="plain masked-diffusion decoding or Spiffy (the same output, fewer forwards)")
    g.add_argument("--budget", type=int, default=5, help="spiffy: draft blocks per forward (D)")
    g.add_argument("--graph", type=Path, help="graph JSON or folder (default: the model's graphs/, else default_graph)")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("calibrate", help="draft graphs from baseline traces on held-out prompts")
    add_model_args(c)
    add_decode_args(c)
    c.add_argument("--prompts", type=Path, action="append",
                   help="JSONL prompt set, repeatable (default data/prompts/function_completion.jsonl)")
    c.add_argument("--offset", type=int, default=128, help="first prompt of each set (the bench uses 0..)")
    c.add_argument("--num-prompts", type=int, default=24, help="prompts per set")
    c.add_argument("--budgets", default="3,5,8,10", help="comma-separated draft budgets D; one graph each")
    c.add_argument("--search", default="degree1", choices=["degree1", "replay"],
                   help="degree1: the paper's degree-1 accumulation; replay: add the node that lowers the NFE "
                        "replayed on the traces most")
    c.add_argument("--out", type=Path, required=True, help="folder for the graph JSONs")
    c.set_defaults(func=cmd_calibrate)

    b = sub.add_parser("bench", help="baseline vs Spiffy: NFE, tokens/s, exactness")
    add_bench_args(b)
    b.set_defaults(func=cmd_bench)
