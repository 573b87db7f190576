"""The `specdiff` command: thin argument parsing over the library.

Subcommands: `generate` (one completion), `demo` (AR vs DDTree side by side on the default models),
`corpus` and `tokenizer` (training data), `dllm` (masked-diffusion decoding and Spiffy: generate,
calibrate, bench) and the trainers. A `SpecdiffError` (bad input) becomes one line on stderr
and exit status 2; argparse's own errors are shortened to one line too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from specdiff.config import METHODS, DecodeConfig, SamplingConfig
from specdiff.errors import SpecdiffError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would add the usage block)
        raise SpecdiffError(f"{self.prog}: {message}")


# -- generate -------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="target model folder (default: the bundled target)")
    p.add_argument("--drafter", help="DFlash drafter folder (default: the bundled drafter)")
    p.add_argument("--vp-drafter", help="variable-prefix drafter folder (D2SD; default: bundled)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--engine", default="hf", choices=["hf", "static", "graph"],
                   help="forwards: the model's own (hf), the static-cache path (static), or that path "
                        "replayed as CUDA graphs per tree-size bucket (graph; eager on a CPU)")
    p.add_argument("--tree-search", default="host", choices=["host", "device"],
                   help="ddtree/caddtree with --engine graph: best-first search on the host (C) or on the "
                        "device inside the drafter's graph (Triton)")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="ddtree", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--budget", type=int, default=64, help="ddtree, d2sd-hybrid: draft nodes per round")
    p.add_argument("--branches", type=int, default=4, help="d2sd, d2sd-hybrid: prefixes the VP drafter re-drafts (K)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; else finite and >= 1e-30")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="keys the sampling noise (64 bits)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--profile", help="caddtree: cost profile JSON (default: the one `specdiff profile` saved for this device)")
    p.add_argument("--caddtree-horizon", default="round", choices=["round", "decode"],
                   help="caddtree: size each round for its own tokens per ms (round, the default) or for the "
                        "decode's (decode)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    cfg = DecodeConfig(
        method=args.method, budget=args.budget, branches=args.branches, max_new_tokens=args.max_new_tokens,
        stop_at_eos=not args.ignore_eos, profile=args.profile, engine=args.engine, tree_search=args.tree_search,
        caddtree_horizon=args.caddtree_horizon,
        sampling=SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed),
    )
    cfg.validate()
    return cfg


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise SpecdiffError("give either --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise SpecdiffError(f"prompt file not found: {path}")
        return path.read_text()
    if args.prompt is None:
        raise SpecdiffError("no prompt: pass --prompt TEXT or --prompt-file FILE")
    return args.prompt


def load_models(args: argparse.Namespace, need_drafter: bool):
    """-> (HF model, tokenizer, drafter or None), resolving bundled defaults."""
    import torch

    from specdiff.drafters.dflash import load_drafter
    from specdiff.models.bundled import default_path
    from specdiff.target.hf_causal import DTYPES, load_target

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SpecdiffError("--device cuda was asked for, but no CUDA device is available")
    target_dir = Path(args.target) if args.target else default_path("target")
    if not args.target and not (target_dir / "config.json").is_file():
        raise SpecdiffError(f"no bundled target model at {target_dir}; pass --target DIR (or try `specdiff demo`)")
    model, tokenizer = load_target(target_dir, args.device, args.dtype)
    drafter = None
    if need_drafter:
        drafter_dir = Path(args.drafter) if args.drafter else default_path("dflash")
        if not args.drafter and not (drafter_dir / "config.json").is_file():
            raise SpecdiffError(f"no bundled DFlash drafter at {drafter_dir}; pass --drafter DIR")
        drafter = load_drafter(drafter_dir, args.device, DTYPES[args.dtype])
    return model, tokenizer, drafter


def load_vp_drafter(args: argparse.Namespace):
    """D²SD's VP drafter: --vp-drafter DIR, else the bundled `models/vp`."""
    from specdiff.drafters.dflash import load_drafter
    from specdiff.models.bundled import default_path
    from specdiff.target.hf_causal import DTYPES

    folder = Path(args.vp_drafter) if args.vp_drafter else default_path("vp")
    if not args.vp_drafter and not (folder / "config.json").is_file():
        raise SpecdiffError(f"no bundled VP drafter at {folder}; pass --vp-drafter DIR")
    return load_drafter(folder, args.device, DTYPES[args.dtype])


def eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def result_json(cfg: DecodeConfig, result, text: str) -> dict:
    n = result.num_new_tokens
    return {
        "method": cfg.method,
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


def cmd_generate(args: argparse.Namespace) -> int:
    from specdiff.engine import NEEDS_DRAFTER, NEEDS_VP, build_decoder

    cfg = decode_config(args)
    prompt = read_prompt(args)
    model, tokenizer, drafter = load_models(args, cfg.method in NEEDS_DRAFTER)
    vp_drafter = load_vp_drafter(args) if cfg.method in NEEDS_VP else None
    decoder = build_decoder(model, cfg, drafter, eos_ids(model, tokenizer), vp_drafter=vp_drafter)
    ids = encode(tokenizer, prompt)
    result = decoder.generate(ids)
    text = tokenizer.decode(result.token_ids)
    if args.json:
        print(json.dumps(result_json(cfg, result, text)))
    else:
        print(prompt + text)
        print(f"[{cfg.method}] {result.num_new_tokens} tokens, {result.rounds} rounds, tau {result.tau:.2f}, "
              f"{1000 * result.decode_s / max(1, result.num_new_tokens):.1f} ms/token", file=sys.stderr)
    return 0


# -- demo -----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """AR and DDTree on one held-out prompt: identical text, tau and tokens/s side by side."""
    import torch

    from specdiff.engine import build_decoder
    from specdiff.models.bundled import default_path, has_bundled

    torch.manual_seed(0)
    if has_bundled("target") and has_bundled("dflash"):
        args.target, args.drafter = str(default_path("target")), str(default_path("dflash"))
        source = "bundled models"
    else:
        from specdiff.models.demo import build_demo_models

        folder = Path(args.workdir)
        args.target, args.drafter = build_demo_models(folder)
        source = f"tiny random models built from config in {folder} (no bundled models yet)"
    model, tokenizer, drafter = load_models(args, need_drafter=True)
    prompt = args.prompt if args.prompt is not None else default_demo_prompt()
    ids = encode(tokenizer, prompt)
    print(f"specdiff demo on {source}\nprompt ({len(ids)} tokens):\n{prompt}\n")
    rows = []
    for method in ("ar", "ddtree"):
        cfg = DecodeConfig(method=method, budget=args.budget, max_new_tokens=args.max_new_tokens, engine=args.engine)
        decoder = build_decoder(model, cfg, drafter, eos_ids(model, tokenizer))
        decoder.generate(ids[:8])  # warm-up
        t = time.perf_counter()
        result = decoder.generate(ids)
        rows.append((method, result, time.perf_counter() - t))
    texts = [tokenizer.decode(r.token_ids) for _, r, _ in rows]
    print(f"completion:\n{texts[1]}\n")
    print(f"{'method':8} {'tokens':>6} {'rounds':>6} {'tau':>6} {'tok/s':>8}")
    for method, r, _ in rows:
        print(f"{method:8} {r.num_new_tokens:6d} {r.rounds:6d} {r.tau:6.2f} {r.num_new_tokens / r.decode_s:8.1f}")
    same = rows[0][1].token_ids == rows[1][1].token_ids
    print(f"\nddtree output identical to ar: {same}")
    if args.device == "cpu":
        print("(on a CPU every extra tree node costs compute; on a GPU with --engine graph, ddtree ran up to "
              "1.56x AR on these small models on an H200: docs/benchmarks/README.md)")
    return 0 if same else 1


def default_demo_prompt() -> str:
    from specdiff.models.bundled import REPO_MODELS

    prompts = REPO_MODELS.parent / "data" / "prompts" / "function_completion.jsonl"
    if prompts.is_file():
        return json.loads(prompts.read_text().splitlines()[0])["prompt"]
    return 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


def cmd_plot(args: argparse.Namespace) -> int:
    from specdiff.bench.plots import plot_dir

    if not ((args.dir / "results.json").is_file() or (args.dir / "results.json.gz").is_file()):
        raise SpecdiffError(f"no results.json in {args.dir}")
    for path in plot_dir(args.dir):
        print(path)
    return 0


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="specdiff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="one completion")
    add_model_args(g)
    add_decode_args(g)
    g.add_argument("--prompt")
    g.add_argument("--prompt-file")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="AR vs DDTree on the default models")
    add_model_args(d)
    d.add_argument("--prompt")
    d.add_argument("--budget", type=int, default=16, help="ddtree budget (small: a CPU pays per node)")
    d.add_argument("--max-new-tokens", type=int, default=96)
    d.add_argument("--workdir", default="/tmp/specdiff-demo-models")
    d.set_defaults(func=cmd_demo, engine="static")

    from specdiff.bench import harness, profile
    from specdiff.dllm import commands as dllm
    from specdiff.train import corpus, dflash_train, dllm_train, pretrain, tokenizer

    # subcommands whose module owns its arguments (`add_arguments`) and its entry point (`run`)
    for name, module, text in [
        ("bench", harness, "methods x budgets x temperatures over prompt sets, ar as baseline"),
        ("corpus", corpus, "build the training corpus and held-out prompt sets"),
        ("tokenizer", tokenizer, "train the byte-level BPE tokenizer"),
        ("profile", profile, "measure draft and verify costs on this device (for caddtree)"),
        ("pretrain", pretrain, "pretrain a Qwen3 target on the corpus"),
        ("train-drafter", dflash_train, "regenerate data with the target and train a DFlash drafter"),
        ("train-dllm", dllm_train, "train specdiff's own masked-diffusion LM (for Spiffy)"),
        ("dllm", dllm, "masked-diffusion LM: generate, calibrate Spiffy graphs, bench"),
    ]:
        p = sub.add_parser(name, help=text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    pl = sub.add_parser("plot", help="draw the PNG plots of a bench output folder")
    pl.add_argument("dir", type=Path)
    pl.set_defaults(func=cmd_plot)
    return parser


def standalone(prog: str, add_arguments, run, argv: list[str] | None = None) -> int:
    """`python -m specdiff.<module>`: the module's own arguments, with the CLI's error contract."""
    parser = _Parser(prog=prog)
    try:
        add_arguments(parser)
        return int(run(parser.parse_args(argv)) or 0)
    except SpecdiffError as e:
        print(f"specdiff: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except SpecdiffError as e:
        print(f"specdiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
