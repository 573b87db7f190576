"""The cost profiler (`specdiff profile`): measure round costs on this device and fit the cost model (cost_model.py).

Two ways to measure, both with host work included, because on a fast device the host side (tree
building, copies, the walk, the loop's bookkeeping) is a large share of a round.

`--measure rounds` (the default on the graph engine) times whole decode rounds: the real decode
loop with DDTree at each profiled size (AR for the root alone) decodes greedily from a fixed
context of each length (this package's own source, text like the drafter's); a size's cost is its
mean round time, the fastest of `reps` sweeps over all sizes, and C_v(n, l) = round(n, l) - C_d.
On a launch-bound GPU the host's work between syncs overlaps the device's, so the two steps timed
apart do not add up to a round: on an H200 their sum missed 0.19 ms at 24 nodes and 0.01 ms at
640 (docs/results.md), which no constant per-round term can follow.

`--measure steps` (the default elsewhere: on the CPU everything is serial) times the drafter step
and the target step apart, each at its fastest; what a round pays between them, caddtree learns
online (`cost_model.RoundOverhead`):
- C_v(n, l): build a DDTree of n nodes (root included) from drafter-like marginals on the device,
  run the target over it at context l (tapping the drafter's layers), draw and walk (T=0), then
  do what an accepted path costs: gather its taps and commit it (a K/V gather when the path's
  slots are not contiguous), and roll the context back to l;
- C_d: fuse 4 committed tokens' features into the drafter's context and draft one block.
Each is the minimum over `reps` timed runs after warm-up (the minimum is robust to the stalls of
a shared host; medians let one slow stretch bend the whole fitted curve).

caddtree's root-alone round (`root_alone_ms`): with steps, its step as caddtree takes it (the
candidates fetched, then the root forwarded alone; AR's step C_v(1) fetches nothing); with rounds,
the smallest tree's whole round, which pays the same drafter pass, fetch and loop.

Profiles are keyed by device, engine, dtype and the target/drafter configs, so `caddtree` finds the
one for where it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch

from specdiff import native
from specdiff.config import SamplingConfig
from specdiff.errors import SpecdiffError
from specdiff.target.graphed import BUCKETS
from specdiff.target.hf_causal import HFTarget
from specdiff.engine import make_target
from specdiff.methods.caddtree.cost_model import CostProfile, fit_verify_row
from specdiff.methods.caddtree.tree import FIRST_K
from specdiff.methods.ddtree import build_ddtree, top_k_marginals
from specdiff.types import DraftProposal, DraftTree
from specdiff.verify import verify_walk


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
    engine = target.engine + ("" if target.kernels_ran == "torch" else "+" + target.kernels_ran)  # other costs
    if target.numerics == "exact" and target.kernels_ran == "triton":  # the exact kernels cost more at scale
        engine += "+exact"
    key = profile_key(device, target.config.to_dict(), drafter.config.to_dict() if drafter else {}, dtype, engine)
    return root / f"{key}.json"


def default_nodes(engine: str) -> list[int]:
    if engine == "graph":
        return [b for b in BUCKETS if b <= 512]
    return [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def _sample_path(tree) -> list[int]:
    """An accepted path for timing: root to the last node at depth <= 4 (late pops sit on side
    branches, so its slots are usually not contiguous, as in real rounds)."""
    parents, depths = tree.parents.tolist(), tree.depths.tolist()
    node = max((i for i, d in enumerate(depths) if d <= 4), default=0)
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def _timed(fn, reps: int, device: torch.device) -> float:
    """Minimum wall time in ms of `fn` over `reps` synchronised runs."""
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - t))
    return min(times)


def peaked_proposal(vocab: int, depth: int, g: torch.Generator, device) -> DraftProposal:
    """Drafter-like marginals: peaked random logits for `depth` slots, on the device."""
    return DraftProposal((torch.randn(depth, vocab, generator=g) * 4).to(device))


@torch.inference_mode()
def measure(target: HFTarget, drafter, contexts: list[int], nodes: list[int], reps: int, warmup: int,
            backend: native.Native | None = None, vp_drafter=None, branches: int = 0) -> dict:
    """Each size's step (search, forward, walk, commit) and the root-alone step per context, with
    the tree search and the walk in C by `backend` (as a decode runs them), the drafter's pass and,
    with `vp_drafter`, its re-draft of `branches` rows (D²SD's second draft)."""
    g = torch.Generator().manual_seed(0)
    dev = target.device
    raw, root_alone = [], []
    greedy = SamplingConfig()
    for ctx in contexts:
        target.reset(ctx + max(nodes, default=1) + 1)
        target.prefill(torch.randint(0, target.vocab_size, (ctx,), generator=g).tolist())
        row = []
        for n in nodes:
            proposal = peaked_proposal(target.vocab_size, 15, g, dev)

            path = _sample_path(build_ddtree(0, proposal, n - 1, 15, backend))

            def round_() -> None:
                tree = build_ddtree(0, proposal, n - 1, 15, backend)
                out = target.forward(tree)
                verify_walk(tree, out.logits, ctx, greedy, native=backend)
                if out.features is not None:
                    _ = out.features[path]  # the proposer's gather of the path's taps, timed with the rest
                target.commit(path)
                target.length -= len(path)  # keep the context at ctx

            for _ in range(warmup):
                round_()
            row.append(_timed(round_, reps, dev))
        if nodes:
            raw.append(row)
        root_alone.append(_timed_root_alone(target, peaked_proposal(target.vocab_size, 15, g, dev), ctx, reps,
                                            warmup, backend))
        steps = ", ".join(f"{n}:{ms:.2f} ms" for n, ms in zip(nodes, row))
        print(f"profile: context {ctx}: {steps + '; ' if steps else ''}root alone after the candidate fetch "
              f"{root_alone[-1]:.2f} ms", flush=True)
    draft_ms = 0.0
    if drafter is not None:  # a round's drafter work: one block
        draft_ms = _timed_drafter_round(drafter, lambda: drafter.draft(1, drafter.block_size - 1), reps, warmup, dev, g)
        print(f"profile: drafter pass {draft_ms:.2f} ms", flush=True)
    redraft_ms = _timed_redraft(vp_drafter, branches, reps, warmup, dev, g) if vp_drafter is not None else 0.0
    return {"raw": raw, "draft_ms": draft_ms, "root_alone": root_alone, "redraft_ms": redraft_ms}


def _timed_drafter_round(drafter, step, reps: int, warmup: int, dev, g: torch.Generator) -> float:
    """A round's work of `drafter` after a 512-token context: fuse 4 committed tokens' features,
    then `step()` (its draft)."""
    base = getattr(drafter, "inner", drafter)
    drafter.reset(512 + 4 * (warmup + reps) + drafter.block_size)
    feats = torch.randn(512, base.fc.in_features, generator=g).to(dev, base.fc.weight.dtype)
    drafter.extend_context(feats)

    def round_() -> None:
        drafter.extend_context(feats[:4])
        step()

    for _ in range(warmup):
        round_()
    return _timed(round_, reps, dev)


def _timed_redraft(vp_drafter, branches: int, reps: int, warmup: int, dev, g: torch.Generator) -> float:
    """A D²SD round's VP work: re-draft `branches` rows of a block (each a root and masks: the
    cost does not depend on which prefix a row keeps)."""
    base = getattr(vp_drafter, "inner", vp_drafter)
    rows = torch.full((branches, vp_drafter.block_size), base.spec.mask_token_id, dtype=torch.long)
    rows[:, 0] = 1
    ms = _timed_drafter_round(vp_drafter, lambda: vp_drafter.draft_rows(rows), reps, warmup, dev, g)
    print(f"profile: VP re-draft of {branches} rows {ms:.2f} ms", flush=True)
    return ms


def _timed_root_alone(target: HFTarget, proposal: DraftProposal, ctx: int, reps: int, warmup: int,
                      backend: native.Native | None = None) -> float:
    """caddtree's root-alone step as it takes it: the candidates are fetched and searched before
    the choice, then the root alone is forwarded, walked and committed. Unlike AR's step (C_v(1)),
    it pays the fetch (a top-k and a sync on the device)."""
    greedy = SamplingConfig()
    root = DraftTree.chain(0, [])

    def round_() -> None:
        top_k_marginals(proposal, FIRST_K, proposal.logits.shape[0])
        out = target.forward(root)
        verify_walk(root, out.logits, ctx, greedy, native=backend)
        target.commit([0])
        target.length -= 1

    for _ in range(warmup):
        round_()
    return _timed(round_, reps, target.device)


ROUND_TOKENS = 96  # tokens each timed decode of `measure_rounds` produces (about 25 drafted rounds)


def round_prompt(tokenizer, vocab: int, length: int, g: torch.Generator) -> list[int]:
    """A context of `length` tokens for timing whole rounds: this package's own Python source
    (text like the drafter's, so rounds accept and commit as many tokens as real ones), or random
    tokens without a tokenizer."""
    if tokenizer is not None:
        files = sorted(Path(__file__).resolve().parents[1].rglob("*.py"))
        ids = list(tokenizer("\n".join(f.read_text() for f in files), add_special_tokens=False)["input_ids"])
        if len(ids) >= length:
            return ids[:length]
    return torch.randint(0, vocab, (length,), generator=g).tolist()


@torch.inference_mode()
def measure_rounds(target: HFTarget, drafter, contexts: list[int], nodes: list[int], reps: int, warmup: int,
                   engine: str, tokenizer=None, new_tokens: int = ROUND_TOKENS) -> dict:
    """Mean whole-round time [context][size] of the real decode loop, DDTree at size - 1 draft
    nodes (AR at size 1), greedy from a fixed context of each length. Each rep sweeps every size
    once (in turn, so a slow stretch of the host hits all sizes, not one) and a size keeps its
    fastest sweep: the same decode every time, so what varies is the host's noise. `drafter` is
    the plain drafter (the decoder wraps it for the graph engine)."""
    from specdiff.config import DecodeConfig
    from specdiff.engine import build_decoder

    g = torch.Generator().manual_seed(0)
    raw = []
    for ctx in contexts:
        prompt = round_prompt(tokenizer, target.vocab_size, ctx, g)
        decoders = []
        for n in nodes:
            # searched on the host, as caddtree's own rounds are
            cfg = DecodeConfig(method="ddtree" if n > 1 else "ar", budget=max(1, n - 1), max_new_tokens=new_tokens,
                               engine=engine, tree_search="host", stop_at_eos=False)
            decoders.append(build_decoder(target, cfg, drafter if n > 1 else None))
            decoders[-1].prepare(ctx)
            for _ in range(warmup):
                decoders[-1].generate(prompt)
        row = [float("inf")] * len(nodes)
        for rep in range(reps):
            for i in (range(len(nodes)) if rep % 2 == 0 else reversed(range(len(nodes)))):
                r = decoders[i].generate(prompt)
                row[i] = min(row[i], 1000 * r.decode_s / r.rounds)
        raw.append(row)
        print(f"profile: context {ctx}: whole rounds " + ", ".join(f"{n}:{ms:.2f}" for n, ms in zip(nodes, row))
              + " ms", flush=True)
    return {"raw": raw}


def build_profile(model, tokenizer, drafter, contexts: list[int], nodes: list[int] | None = None,
                  engine: str = "hf", kernels: str = "auto", dtype: str = "float32", measure_kind: str | None = None,
                  reps: int | None = None, warmup: int = 3, target_name: str = "bundled",
                  drafter_name: str = "bundled", out: Path | None = None, vp_drafter=None,
                  branches: int = 4) -> Path:
    """Measure this device's costs for `model` and `drafter` (module docstring), fit and save the
    profile at `out` (None: the per-device cache caddtree reads) -> where it was saved.

    nodes: tree sizes, root included (None: `default_nodes(engine)`); measure_kind: "steps" or
    "rounds" (None: rounds on the graph engine, steps elsewhere); reps: timed repetitions (None: 8
    decodes per size for rounds, 30 steps otherwise); vp_drafter: D²SD's VP drafter, whose
    re-draft of `branches` rows is then measured too (`CostProfile.redraft_ms`)."""
    contexts = sorted(set(contexts))
    nodes = sorted(set(nodes)) if nodes else default_nodes(engine)
    if min(nodes) < 1 or min(contexts) < 1:
        raise SpecdiffError("--nodes and --contexts must be positive")
    backend = native.load()  # the one build_decoder gives the decodes it times
    target = make_target(model, engine, backend, kernels)
    # on a launch-bound GPU the host's work overlaps the device's, so two steps timed apart do not
    # add up to a round; on the CPU everything is serial and steps are the quieter measure
    measure_kind = measure_kind or ("rounds" if engine == "graph" else "steps")
    reps = reps or (8 if measure_kind == "rounds" else 30)
    if reps < 1:
        raise SpecdiffError("--reps must be >= 1")
    decoded = ROUND_TOKENS if measure_kind == "rounds" else 0  # a rounds profile decodes past the context
    if max(contexts) + max(nodes) + decoded > target.max_positions:
        raise SpecdiffError(f"context {max(contexts)} + {max(nodes)} nodes + {decoded} decoded tokens exceeds "
                            f"the target's {target.max_positions} positions")
    drafter.bind(target.embed_tokens, target.lm_head)
    target.set_taps(drafter.spec.target_layer_ids)  # a decode's forwards also return these taps
    plain = drafter
    if vp_drafter is not None:
        vp_drafter.bind(target.embed_tokens, target.lm_head)
    if engine == "graph":
        from specdiff.drafters.graphed import GraphedDrafter, GraphedVPDrafter

        drafter = GraphedDrafter(drafter)
        if vp_drafter is not None:
            vp_drafter = GraphedVPDrafter(vp_drafter, branches)
    # the drafter step; for steps, the target step per size and the root-alone step per context
    # (a rounds profile prices the root alone by its smallest tree's round, when it has one)
    steps = measure_kind == "steps"
    trees = [i for i, n in enumerate(nodes) if n > 1]
    m = measure(target, drafter, contexts if steps or not trees else [], nodes if steps else [],
                reps if steps else 30, warmup, backend, vp_drafter, branches)
    raw, root_alone = m["raw"], m["root_alone"]
    if not steps:
        rounds = measure_rounds(target, plain, contexts, nodes, reps, warmup, engine, tokenizer)["raw"]
        # C_v(n) = round(n) - C_d for trees; the root-alone (AR) round ran no drafter
        raw = [[ms if n == 1 else ms - m["draft_ms"] for n, ms in zip(nodes, row)] for row in rounds]
        # caddtree's root-alone round is a drafted round (drafter, candidates, search) whose tree
        # holds the root only: priced as the smallest tree's whole round. AR's round (no drafter,
        # no fetch) is no guide to it: it underprices the fetch and the search that such a round
        # pays, and the decode horizon would then keep the root alone too often
        if trees:
            root_alone = [row[trees[0]] for row in raw]
    prof = CostProfile(
        device=device_name(target.device), target=target_name, drafter=drafter_name,
        dtype=dtype, draft_ms=m["draft_ms"], contexts=contexts, nodes=nodes,
        verify_ms=[fit_verify_row(nodes, row) for row in raw], raw_verify_ms=raw, measure=measure_kind,
        root_alone_ms=root_alone,
        buckets=list(BUCKETS) if engine == "graph" else [],
        redraft_ms=m["redraft_ms"], redraft_rows=branches if vp_drafter is not None else 0,
    )
    path = out or default_profile_path(target.device, target, drafter, dtype)
    prof.save(path)
    return path
