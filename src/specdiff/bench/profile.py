"""`specdiff profile`: measure round costs on this device and fit the cost model (cost_model.py).

C_v(n, l): one target forward over a DDTree-shaped tree of n nodes (root included) at context l,
median of `reps` timed runs after warm-up. C_d: one drafter pass at context 512. Profiles are
keyed by device and by the target/drafter configs, so `caddtree` finds the one for where it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import time
from pathlib import Path

import torch

from specdiff.errors import SpecdiffError
from specdiff.target.hf_causal import HFTarget
from specdiff.trees.cost_model import CostProfile, fit_monotone_convex
from specdiff.trees.ddtree import build_ddtree
from specdiff.types import DraftProposal


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count()}cores"


def profile_key(device: torch.device, target_cfg: dict, drafter_cfg: dict, dtype: str, engine: str) -> str:
    digest = hashlib.sha256(json.dumps([target_cfg, drafter_cfg, dtype, engine], sort_keys=True, default=str).encode())
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", device_name(device)).strip("-").lower()
    return f"{slug}__{digest.hexdigest()[:12]}"


def default_profile_path(device: torch.device, target: HFTarget, drafter, dtype: str) -> Path:
    root = Path(os.environ.get("SPECDIFF_PROFILES", Path.home() / ".cache" / "specdiff" / "profiles"))
    engine = target.engine
    key = profile_key(device, target.config.to_dict(), drafter.config.to_dict() if drafter else {}, dtype, engine)
    return root / f"{key}.json"


def _timed(fn, reps: int, device: torch.device) -> float:
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def tree_of_size(n: int, vocab: int, depth: int, g: torch.Generator):
    """A DDTree-shaped tree of n nodes (root included) from peaked random marginals."""
    logits = torch.randn(depth, vocab, generator=g) * 4
    return build_ddtree(0, DraftProposal(logits), n - 1, depth)


@torch.inference_mode()
def measure(target: HFTarget, drafter, contexts: list[int], nodes: list[int], reps: int, warmup: int) -> dict:
    g = torch.Generator().manual_seed(0)
    dev = target.device
    raw = []
    for ctx in contexts:
        target.reset(ctx + max(nodes) + 1)
        target.prefill(torch.randint(0, target.vocab_size, (ctx,), generator=g).tolist())
        row = []
        for n in nodes:
            tree = tree_of_size(n, target.vocab_size, 15, g)
            for _ in range(warmup):
                target.forward(tree)
            row.append(_timed(lambda: target.forward(tree), reps, dev))
        raw.append(row)
        print(f"profile: context {ctx}: " + ", ".join(f"{n}:{ms:.2f}" for n, ms in zip(nodes, row)) + " ms", flush=True)
    draft_ms = 0.0
    if drafter is not None:
        # a round's drafter work: fuse 4 committed tokens' features, then draft one block
        base = getattr(drafter, "inner", drafter)
        drafter.reset(512 + 4 * (warmup + reps) + drafter.block_size)
        feats = torch.randn(512, base.fc.in_features, generator=g).to(dev, base.fc.weight.dtype)
        drafter.extend_context(feats)

        def round_() -> None:
            drafter.extend_context(feats[:4])
            drafter.draft(1, drafter.block_size - 1)

        for _ in range(warmup):
            round_()
        draft_ms = _timed(round_, reps, dev)
        print(f"profile: drafter pass {draft_ms:.2f} ms", flush=True)
    return {"raw": raw, "draft_ms": draft_ms}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from specdiff.cli import add_model_args

    add_model_args(p)
    p.add_argument("--contexts", default="128,1024", help="context lengths (comma-separated)")
    p.add_argument("--nodes", default="1,2,4,8,16,32,64,128,256,512", help="tree sizes, root included")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, help="profile JSON (default: the per-device cache caddtree reads)")


def run(args: argparse.Namespace) -> int:
    from specdiff.cli import load_models

    try:
        contexts = sorted({int(c) for c in args.contexts.split(",")})
        nodes = sorted({int(n) for n in args.nodes.split(",")})
    except ValueError as e:
        raise SpecdiffError(f"bad --contexts or --nodes list: {e}") from None
    if min(nodes) < 1 or min(contexts) < 1:
        raise SpecdiffError("--nodes and --contexts must be positive")
    from specdiff.engine import make_target

    model, _, drafter = load_models(args, need_drafter=True)
    target = make_target(model, args.engine)
    if max(contexts) + max(nodes) > target.max_positions:
        raise SpecdiffError(f"context {max(contexts)} + {max(nodes)} nodes exceeds the target's {target.max_positions} positions")
    drafter.bind(target.embed_tokens, target.lm_head)
    if args.engine == "graph":
        from specdiff.drafters.graphed import GraphedDrafter

        drafter = GraphedDrafter(drafter)
    m = measure(target, drafter, contexts, nodes, args.reps, args.warmup)
    prof = CostProfile(
        device=device_name(target.device), target=str(args.target or "bundled"), drafter=str(args.drafter or "bundled"),
        dtype=args.dtype, draft_ms=m["draft_ms"], contexts=contexts, nodes=nodes,
        verify_ms=[fit_monotone_convex(nodes, row) for row in m["raw"]], raw_verify_ms=m["raw"],
    )
    path = args.out or default_profile_path(target.device, target, drafter, args.dtype)
    prof.save(path)
    print(f"profile saved: {path}")
    return 0
