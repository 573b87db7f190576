"""What every subcommand shares: the parser that turns argparse's errors into one line, the model
and decode flags, and the one place a `SpecdiffError` becomes `specdiff: error: ...` and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from specdiff.config import ENGINES, HORIZONS, METHODS, TREE_SEARCHES, DecodeConfig, SamplingConfig
from specdiff.errors import SpecdiffError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would add the usage block)
        raise SpecdiffError(f"{self.prog}: {message}")


def quiet_libraries() -> None:
    """A command's stdout and stderr carry its own output only: transformers' progress bars and
    warnings are off (the library leaves logging to whoever uses it)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_guarded(func: Callable[[], int | None]) -> int:
    """Run a command: bad input (`SpecdiffError`) is one line on stderr and exit status 2."""
    try:
        return int(func() or 0)
    except SpecdiffError as e:
        print(f"specdiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def split_list(text: str, kind, flag: str) -> list:
    """A comma-separated flag value -> [kind(item)], or one line naming the flag."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError as e:
        raise SpecdiffError(f"bad {flag} list {text!r}: {e}") from None


class ProgressBar:
    """Progress of long work on stderr: a tqdm bar with an ETA on a terminal; elsewhere (logs, CI)
    a plain line at every tenth of the work; nothing when `quiet` (e.g. --json)."""

    def __init__(self, unit: str, quiet: bool = False):
        self.unit, self.quiet, self.bar, self.next_line = unit, quiet, None, 0

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if sys.stderr.isatty():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
            self.bar.set_description(what, refresh=False)
            self.bar.update(done - self.bar.n)
        elif done >= self.next_line or done == total:
            print(f"[{done}/{total} {self.unit}s] {what}", file=sys.stderr, flush=True)
            self.next_line = done + max(1, total // 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_positive(value: int, flag: str) -> None:
    if value < 1:
        raise SpecdiffError(f"{flag} must be >= 1, got {value}")


def check_out_dir(path: Path, flag: str = "--out") -> Path:
    """The folder a command writes into, made before the work starts (a run that cannot save its
    results fails at once, not after it ran)."""
    if path.exists() and not path.is_dir():
        raise SpecdiffError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecdiffError(f"cannot create the {flag} folder {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise SpecdiffError(f"the {flag} folder {path} is not writable")
    return path


def check_out_file(path: Path, flag: str = "--out") -> Path:
    """A file a command will write: not a folder, and its folder exists and is writable."""
    if path.is_dir():
        raise SpecdiffError(f"{flag} {path} is a folder, not a file")
    check_out_dir(path.parent, f"{flag}'s")
    return path


def add_model_args(p: argparse.ArgumentParser) -> None:
    d = DecodeConfig()
    p.add_argument("--target", help="target model folder (default: the bundled target)")
    p.add_argument("--drafter", help="DFlash drafter folder (default: the bundled drafter)")
    p.add_argument("--vp-drafter", help="variable-prefix drafter folder (D2SD; default: bundled)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the models run")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the models' weights and compute; float32 keeps outputs token-identical to ar")
    p.add_argument("--engine", default=d.engine, choices=ENGINES,
                   help="forwards: the model's own (hf), the static-cache path (static), or that path "
                        "replayed as CUDA graphs per tree-size bucket (graph; eager on a CPU)")
    p.add_argument("--tree-search", default=d.tree_search, choices=TREE_SEARCHES,
                   help="ddtree/caddtree with --engine graph: best-first search on the host (C) or on the "
                        "device inside the drafter's graph (Triton)")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    d, s = DecodeConfig(), SamplingConfig()
    p.add_argument("--method", default=d.method, choices=METHODS, help="the decoding method")
    p.add_argument("--budget", type=int, default=d.budget, help="ddtree, d2sd-hybrid: draft nodes per round")
    p.add_argument("--branches", type=int, default=d.branches,
                   help="d2sd, d2sd-hybrid: prefixes the VP drafter re-drafts (K)")
    p.add_argument("--temperature", type=float, default=s.temperature, help="0 = greedy; else finite and >= 1e-30")
    p.add_argument("--top-p", type=float, default=s.top_p,
                   help="nucleus filter: keep the most likely tokens up to this mass (1 = off)")
    p.add_argument("--top-k", type=int, default=s.top_k, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, default=s.seed, help="keys the sampling noise (64 bits)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens to generate at most")
    p.add_argument("--profile", help="caddtree: cost profile JSON (default: the one `specdiff profile` saved for this device)")
    p.add_argument("--caddtree-horizon", default=d.caddtree_horizon, choices=HORIZONS,
                   help="caddtree: size each round for its own tokens per ms (round) or for the decode's (decode)")
    p.add_argument("--caddtree-max-nodes", type=int, default=d.caddtree_max_nodes,
                   help="caddtree: draft nodes per round at most (and no more than its profile measured)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    cfg = DecodeConfig(
        method=args.method, budget=args.budget, branches=args.branches, max_new_tokens=args.max_new_tokens,
        stop_at_eos=not args.ignore_eos, profile=args.profile, engine=args.engine, tree_search=args.tree_search,
        caddtree_horizon=args.caddtree_horizon, caddtree_max_nodes=args.caddtree_max_nodes,
        sampling=SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed),
    )
    cfg.validate()
    return cfg


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise SpecdiffError("give either --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        from specdiff.loading import read_text

        return read_text(args.prompt_file, "prompt file")
    if args.prompt is None:
        raise SpecdiffError("no prompt: pass --prompt TEXT or --prompt-file FILE")
    return args.prompt


def load_models(args: argparse.Namespace, need_drafter: bool):
    """The model flags -> (HF model, tokenizer, drafter or None)."""
    from specdiff.loading import load_models as load

    return load(args.target, args.drafter, args.device, args.dtype, need_drafter)


def load_vp_drafter(args: argparse.Namespace):
    from specdiff.loading import load_drafter_folder

    return load_drafter_folder(args.vp_drafter, args.device, args.dtype, kind="vp")
