"""`specdiff generate`, `specdiff demo` and `specdiff plot`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specdiff.cli.common import (
    ProgressBar, add_decode_args, add_model_args, emit, decode_config, load_models, load_vp_drafter, read_prompt,
)
from specdiff.errors import SpecdiffError

# this module's commands in help order: each has add_<name>_args (its docstring: the help line and an
# example) and cmd_<name>
COMMANDS = ("generate", "demo", "plot")


def result_json(cfg, result, text: str, numerics: str) -> dict:
    """numerics: the rounding the target ran (`--numerics auto` resolved)."""
    n = result.num_new_tokens
    return {
        "method": cfg.method,
        "numerics": numerics,
        "text": text,
        "token_ids": result.token_ids,
        "num_new_tokens": n,
        "rounds": result.rounds,
        "tau": result.tau,
        "accept_hist": result.accept_hist(),
        "mean_tree_nodes": sum(result.tree_sizes) / max(1, len(result.tree_sizes)),
        "mean_candidate_rows": sum(result.candidate_rows) / max(1, len(result.candidate_rows)),
        "wall_s": result.prefill_s + result.decode_s,
        "prefill_s": result.prefill_s,
        "decode_s": result.decode_s,
        "ms_per_token": 1000.0 * result.decode_s / max(1, n),
        "stop_reason": result.stop_reason,
        "config": cfg.to_dict(),
    }


def add_generate_args(g: argparse.ArgumentParser) -> None:
    """complete one prompt with any method

    specdiff generate --method ddtree --budget 64 --prompt 'def quicksort(xs):' --json
    """
    add_model_args(g)
    add_decode_args(g)
    g.add_argument("--prompt", help="the prompt text")
    g.add_argument("--prompt-file", help="a UTF-8 file holding the prompt")
    g.add_argument("--chat", action="store_true",
                   help="the prompt is a user message, put through the tokenizer's chat template")
    g.add_argument("--system", metavar="TEXT", help="a system message before the user's (implies --chat)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the completion at this text (repeatable); the text ends before it")
    g.add_argument("--stream", action="store_true", help="print the text as each round commits it")
    g.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_generate(args: argparse.Namespace) -> int:
    from specdiff.engine import build_decoder
    from specdiff.methods import needs_drafter, needs_vp_drafter
    from specdiff.loading import encode, encode_chat, eos_ids

    cfg = decode_config(args)
    prompt = read_prompt(args)
    model, tokenizer, drafter = load_models(args, needs_drafter(cfg.method))
    vp_drafter = load_vp_drafter(args) if needs_vp_drafter(cfg.method) else None
    decoder = build_decoder(model, cfg, drafter, eos_ids(model, tokenizer), vp_drafter=vp_drafter)
    if args.chat or args.system is not None:
        system = [{"role": "system", "content": args.system}] if args.system is not None else []
        ids = encode_chat(tokenizer, system + [{"role": "user", "content": prompt}])
    else:
        ids = encode(tokenizer, prompt)
    # a bar of the tokens on a terminal (a CPU decode takes a while); nothing in a pipe or with --json
    bar, done = ProgressBar("token", quiet=args.json or not sys.stderr.isatty()), [0]

    def progress(tokens: list[int]) -> None:
        done[0] += len(tokens)
        bar(cfg.method, done[0], cfg.max_new_tokens)

    if args.stop or args.stream:
        from specdiff.streaming import stream_text
        from specdiff.types import GenerationResult

        if args.stream and not args.json:
            print(prompt, end="", flush=True)
        chunks = []
        for chunk in stream_text(decoder, tokenizer, ids, stop=args.stop):
            chunks.append(chunk)
            if args.stream and not args.json:
                print(chunk.text, end="", flush=True)
        result = GenerationResult.from_rounds([c.round for c in chunks], chunks[-1].finish_reason if chunks else None)
        text = "".join(c.text for c in chunks)
        if args.stream and not args.json:
            print()
            print(f"[{cfg.method}] {result.num_new_tokens} tokens, {result.rounds} rounds, tau {result.tau:.2f}",
                  file=sys.stderr)
            return 0
    else:
        try:
            result = decoder.generate(ids, on_tokens=progress)
        finally:
            bar.close()
        text = tokenizer.decode(result.token_ids)
    emit(args.json, result_json(cfg, result, text, decoder.target.numerics), prompt + text,
         f"[{cfg.method}] {result.num_new_tokens} tokens, {result.rounds} rounds, tau {result.tau:.2f}, "
         f"{1000 * result.decode_s / max(1, result.num_new_tokens):.1f} ms/token")
    return 0


def add_demo_args(d: argparse.ArgumentParser) -> None:
    """ar beside a speculative method on the bundled models: the same text, tau and tokens/s

    specdiff demo
    """
    add_model_args(d)
    d.add_argument("--prompt", help="one prompt text (default: the first --prompts held-out function-completion prompts)")
    d.add_argument("--prompts", type=int, default=8, help="held-out prompts decoded when no --prompt is given")
    d.add_argument("--method", choices=["pld", "dflash", "ddtree"],
                   help="the method beside ar (default: ddtree on a GPU, pld on a CPU)")
    d.add_argument("--budget", type=int, default=64, help="ddtree's budget")
    d.add_argument("--max-new-tokens", type=int, default=96, help="tokens to generate at most")
    d.add_argument("--workdir", default="/tmp/specdiff-demo-models", help="where tiny demo models are built when there are no bundled models")
    # device, dtype and engine follow the machine unless given: a GPU runs bf16 graphs
    d.set_defaults(device=None, dtype=None, engine=None)


# On a CPU a small model's forward is compute bound: each drafted node costs about what a token
# does, so tree drafting loses to AR there (docs/results.md), while prompt lookup drafts for free
CPU_NOTE = ("on a CPU a small model's forward is compute-bound, so every drafted tree node costs about as much as "
            "a token and ddtree is slower than ar here; this demo runs pld (n-gram drafts from the prompt, no "
            "drafter forward) instead; on a GPU a tree of 64 nodes costs about one token and ddtree leads")


def cmd_demo(args: argparse.Namespace) -> int:
    """ar and a speculative method on held-out prompts: identical texts, tau and tokens/s."""
    import torch

    from specdiff.config import DecodeConfig
    from specdiff.engine import build_decoder
    from specdiff.loading import encode, eos_ids
    from specdiff.models.bundled import default_path, has_bundled

    if args.prompts < 1:
        raise SpecdiffError("--prompts must be >= 1")
    torch.manual_seed(0)
    gpu = torch.cuda.is_available()
    args.device = args.device or ("cuda" if gpu else "cpu")
    on_gpu = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    args.engine = args.engine or ("graph" if on_gpu else "static")
    method = args.method or ("ddtree" if on_gpu else "pld")
    if has_bundled("target") and has_bundled("dflash"):
        args.target, args.drafter = str(default_path("target")), str(default_path("dflash"))
        source = "bundled models"
    else:
        from specdiff.models.demo import build_demo_models

        folder = Path(args.workdir)
        args.target, args.drafter = build_demo_models(folder)
        source = f"tiny random models built from config in {folder} (no bundled models yet)"
    model, tokenizer, drafter = load_models(args, need_drafter=True)
    # one prompt's speed-up swings with how predictable its text is: several give the typical one
    prompts = [args.prompt] if args.prompt is not None else demo_prompts(args.prompts)
    ids = [encode(tokenizer, p) for p in prompts]
    label = f"ddtree@{args.budget}" if method == "ddtree" else method
    totals, outputs, numerics = {}, {}, "fast"
    for name in ("ar", method):
        cfg = DecodeConfig(method=name, budget=args.budget, max_new_tokens=args.max_new_tokens, engine=args.engine,
                           kernels=args.kernels, numerics=args.numerics, tree_search=args.tree_search)
        cfg.validate()
        decoder = build_decoder(model, cfg, drafter, eos_ids(model, tokenizer))
        numerics = decoder.target.numerics
        # the warm-up decodes the timed prompts themselves on a GPU: longer contexts may need graphs
        # of another cache span, and their capture must not be timed
        for p in ids if on_gpu else ids[:1]:
            decoder.generate(p)
        results = [decoder.generate(p) for p in ids]
        outputs[name] = [r.token_ids for r in results]
        totals[name] = (sum(r.num_new_tokens for r in results), sum(r.rounds for r in results),
                        sum(r.decode_s for r in results))
    which = "one prompt" if len(prompts) == 1 else f"{len(prompts)} held-out prompts; the first"
    print(f"specdiff demo on {source} ({args.device}, {args.dtype}, engine {args.engine}, {numerics} numerics)\n"
          f"{which} ({len(ids[0])} tokens):\n{prompts[0]}\n")
    print(f"completion:\n{tokenizer.decode(outputs[method][0])}\n")
    if not on_gpu and args.method is None:
        print(CPU_NOTE)
    print(f"{'method':10} {'tokens':>6} {'rounds':>6} {'tau':>6} {'tok/s':>8}")
    for name in ("ar", method):
        tokens, rounds, seconds = totals[name]
        print(f"{label if name == method else name:10} {tokens:6d} {rounds:6d} {tokens / rounds:6.2f} "
              f"{tokens / seconds:8.1f}")
    same = sum(a == b for a, b in zip(outputs["ar"], outputs[method]))
    print(f"\n{label} outputs identical to ar: {same} of {len(ids)}")
    if same < len(ids) and args.dtype != "float32" and numerics != "exact":
        print(f"({args.dtype} rounds a token verified in a tree differently from one verified alone, so a near-tie "
              "can flip; float32 or --numerics exact keep the outputs identical)")
        return 0
    return 0 if same == len(ids) else 1


def demo_prompts(count: int) -> list[str]:
    """The first `count` held-out function-completion prompts (a fixed one without the data)."""
    from specdiff.models.bundled import REPO_MODELS

    path = REPO_MODELS.parent / "data" / "prompts" / "function_completion.jsonl"
    if path.is_file():
        return [json.loads(line)["prompt"] for line in path.read_text().splitlines()[:count]]
    return ['def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n']


def add_plot_args(p: argparse.ArgumentParser) -> None:
    """draw the PNG plots of a bench output folder

    specdiff plot out/b
    """
    p.add_argument("dir", type=Path, help="a bench output folder (results.json)")


def cmd_plot(args: argparse.Namespace) -> int:
    from specdiff.bench.harness import load_results
    from specdiff.bench.plots import plot_results

    if not ((args.dir / "results.json").is_file() or (args.dir / "results.json.gz").is_file()):
        raise SpecdiffError(f"no results.json in {args.dir}")
    try:
        paths = plot_results(load_results(args.dir), args.dir)
    except ImportError:
        raise SpecdiffError("drawing plots needs matplotlib: pip install matplotlib") from None
    except (KeyError, TypeError) as e:
        raise SpecdiffError(f"{args.dir}: results.json lacks what the plots read ({e})") from None
    for path in paths:
        print(path)
    return 0
