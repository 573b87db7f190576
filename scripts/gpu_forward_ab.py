"""GPU: launch choices A/B'd on one random-weight model in one process, their timings interleaved.

Builds a model of a public shape once (bf16, random weights, as `specdiff speed` does), then for
each variant (the defaults first) sets its module constants (`scripts/ab.py`'s `module.NAME=value`
form), builds a graph-engine target whose graphs it captures under them, and times the target's
forward of N nodes alone (in a graph bucket of N nodes, as a decode's largest tree runs) and an AR decode (96 tokens after a 200-token prompt). The variants take
turns for --turns turns; each cell is the median over them, so drift between variants cancels.
With --drafter-layers (default 5) a random DFlash drafter of the shape's width is timed too: its
step (the committed context fused, a block drafted), under each variant's settings.

    usage: python scripts/gpu_forward_ab.py --shape qwen3-8b --nodes 1,16,65 \
               --variant merge_launch specdiff.kernels.attention.MERGE_IN_KERNEL=False \
               --variant ahead_o "specdiff.kernels.gemm.L2_AHEAD={'o': 1.0}"
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import assign  # noqa: E402

from specdiff import kernels, native  # noqa: E402
from specdiff.bench.speed import random_drafter, random_target, timed_ms  # noqa: E402
from specdiff.config import DecodeConfig  # noqa: E402
from specdiff.engine import build_decoder, make_target  # noqa: E402
from specdiff.types import DraftTree  # noqa: E402


class Variant:
    def __init__(self, label: str, assignments: list[str], model, prompt: list[int], nodes: list[int], engine: str,
                 drafter=None, numerics: str = "auto"):
        self.label, self.assignments, self.prompt, self.nodes = label, assignments, prompt, nodes
        self.step = None
        self.times: dict[str, list[float]] = {}
        with self:  # graphs are captured under the variant's settings
            self.target = make_target(model, engine, native.load(), "auto", numerics)
            if hasattr(self.target, "prepare"):  # each forward timed in a bucket of its own size, as a
                for n in sorted(nodes):  # decode's largest tree runs
                    self.target.prepare(len(prompt) + 96 + max(nodes), n)
            self.switches = kernels.switches(self.target.device)
            self.decoder = build_decoder(self.target, DecodeConfig(method="ar", max_new_tokens=96, engine=engine,
                                                                   numerics=numerics, stop_at_eos=False), None)
            if drafter is not None:  # its graphs too are captured under the variant's settings
                self.drafted = build_decoder(self.target, DecodeConfig(method="dflash", max_new_tokens=16,
                                                                       engine=engine, numerics=numerics,
                                                                       stop_at_eos=False), drafter)
                self.drafted.prepare(len(prompt))
                self.drafted.generate(prompt)  # the drafter holds the whole context, as mid-decode
                self.step = self.drafted.proposer.drafters[0]
        self.turn(record=False)  # under the settings again: captures every graph the turns replay

    def __enter__(self):
        self.undo = [assign(a) for a in self.assignments]

    def __exit__(self, *exc):
        for undo in reversed(self.undo):
            undo()

    def turn(self, record: bool = True, reps: int = 30) -> None:
        def timed(fn) -> float:
            return timed_ms(fn, self.target.device, reps)

        with self:
            self.decoder.prepare(len(self.prompt))
            self.decoder.generate(self.prompt)
            t = time.perf_counter()
            r = self.decoder.generate(self.prompt)
            cells = {"ar ms/token": 1000 * (time.perf_counter() - t) / r.num_new_tokens}
            if self.step is not None:
                cells["drafter step"] = timed(lambda: self.step.propose(self.prompt[-1], self.step.block_size - 1))
            self.target.reset(len(self.prompt) + 96 + max(self.nodes))
            self.target.prefill(self.prompt)
            last = self.prompt[-1]
            for n in self.nodes:
                cells[f"forward {n}"] = timed(lambda: self.target.forward(DraftTree.chain(last, [last] * (n - 1))))
        if record:
            for k, v in cells.items():
                self.times.setdefault(k, []).append(v)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-8b")
    p.add_argument("--nodes", default="1,16,65")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--drafter-layers", type=int, default=5, help="0: no drafter")
    p.add_argument("--device", default="cuda")
    p.add_argument("--engine", default="graph")
    p.add_argument("--numerics", default="auto", choices=["auto", "exact", "fast"])
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("LABEL", "ASSIGNMENT"),
                   help="a label and its module.NAME=value assignments (repeatable)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = random_target(args.shape, args.device, torch.bfloat16)
    prompt = torch.randint(0, model.config.vocab_size, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    nodes = [int(n) for n in args.nodes.split(",")]
    drafter = random_drafter(model.config, args.drafter_layers, 16, model.device, torch.bfloat16) \
        if args.drafter_layers else None
    variants = [Variant("default", [], model, prompt, nodes, args.engine, drafter, args.numerics)]
    for label, *assignments in args.variant:
        variants.append(Variant(label, assignments, model, prompt, nodes, args.engine, drafter, args.numerics))
        if args.device == "cuda":
            print(f"{label}: captured ({torch.cuda.max_memory_allocated() / 2**30:.1f} GiB held at most)", flush=True)
    for _ in range(args.turns):
        for v in variants:
            v.turn()
    cols = list(variants[0].times)
    card = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"\n{args.shape} on {card}, {args.numerics} numerics, ms (median of {args.turns} turns; "
          f"in brackets: against the defaults)\n")
    print("| variant | " + " | ".join(cols) + " | switches |")
    print("|---" * (len(cols) + 2) + "|")
    base = {c: statistics.median(variants[0].times[c]) for c in cols}
    for v in variants:
        cells = []
        for c in cols:
            m = statistics.median(v.times[c])
            cells.append(f"{m:.3f}" + ("" if v is variants[0] else f" ({m - base[c]:+.3f})"))
        print(f"| {v.label} | " + " | ".join(cells) + f" | {v.switches or '-'} |", flush=True)


if __name__ == "__main__":
    main()
