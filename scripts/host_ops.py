"""The host's share of a round, counted on a CPU: the torch ops and Triton launches the decode loop
issues outside its CUDA graphs, per part of the round, for each method on the bundled pair.

On a GPU every op issued outside a graph costs the host a few microseconds (dispatch, launch)
while the device waits on the round's one read, so this count is a device-free measure of a
round's fixed cost. The graph engine runs here eagerly; what its graphs would hold (the target's
bucket forward, the commit's moves, the drafter's step and search) is not counted. With
--device-search the drafter's prefix search runs as on a GPU (the tree stays "on the device"),
its kernel under Triton's interpreter. Read with care: host-side ops (a pinned buffer's
`.numpy()` is four: detach, resolve_conj, resolve_neg, cpu) cost about a microsecond each and
launch nothing, where a device op launches a kernel; and at T>0 a CPU makes each 64-position block
of sampling noise in cache-sized pieces (many more ops than a GPU's one pass per block).

    usage: python scripts/host_ops.py [--methods ar,dflash,ddtree@64] [--device-search] [--overlap] [--temperature 0]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the device search's kernel, on the CPU

from gpu_timeline import PARTS, wrap_parts  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from specdiff import native  # noqa: E402
from specdiff.config import DecodeConfig, SamplingConfig  # noqa: E402
from specdiff.engine import build_decoder, make_target  # noqa: E402
from specdiff.loading import encode, load_models  # noqa: E402
from specdiff.methods import device_search  # noqa: E402
from specdiff.target import graphed  # noqa: E402
from specdiff.verify import walk  # noqa: E402

class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.part, self.inside_graph = None, 0
        self.ops = collections.defaultdict(collections.Counter)  # part -> op -> calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.part is not None and not self.inside_graph:
            self.ops[self.part][func.__name__] += 1
        return func(*args, **(kwargs or {}))


def instrument(dec, counter: Counter) -> list[int]:
    """Sets counter.part around each part the loop calls, and stops counting inside what the GPU
    would replay as a graph. -> a list whose length is the rounds counted."""
    rounds = []

    def part(name, fn):
        def wrapped(*a, **k):
            if name == "verify":  # one a round, whatever the round queued before it
                rounds.append(1)
            counter.part = name
            try:
                return fn(*a, **k)
            finally:
                counter.part = None
        return wrapped

    def graph_body(fn):
        def wrapped(*a, **k):
            counter.inside_graph += 1
            try:
                return fn(*a, **k)
            finally:
                counter.inside_graph -= 1
        return wrapped

    wrap_parts(dec, part)
    t = dec.target
    t._bucket_forward, t._move = graph_body(t._bucket_forward), graph_body(t._move)
    for d in dec.proposer.drafters:
        d._step = graph_body(d._step)
    # the Triton kernels the GPU launches eagerly every round: one op each (the interpreter that
    # runs them here makes tensors of its own, which are not the GPU's)
    def eager_kernel(name, launch):
        uncounted = graph_body(launch)

        def wrapped(*a, **k):
            if counter.part is not None:
                counter.ops[counter.part][f"(triton) {name}"] += 1
            return uncounted(*a, **k)
        return wrapped
    graphed.tree_inputs = eager_kernel("tree_inputs", graphed.tree_inputs)
    walk.accepted_path = eager_kernel("accepted_path", walk.accepted_path)
    return rounds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="ar,dflash,ddtree@64")
    p.add_argument("--device-search", action="store_true")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--overlap", action="store_true",
                   help="drafted rounds as the default runs them (the next draft queued before the read); ar stays a round")
    args = p.parse_args()
    # --device-search: as on a GPU, the drafter's step searches and the tree stays there
    with device_search.on_the_interpreter() if args.device_search else contextlib.nullcontext():
        count(args)


def count(args: argparse.Namespace) -> None:
    model, tok, drafter = load_models(None, None, "cpu", "float32")
    target = make_target(model, "graph", native.load())
    prompt = encode(tok, "def fibonacci(n):\n    ")
    for m in args.methods.split(","):
        method, _, budget = m.partition("@")
        cfg = DecodeConfig(method=method, budget=int(budget or 1), engine="graph", max_new_tokens=args.new_tokens,
                           stop_at_eos=False, sampling=SamplingConfig(temperature=args.temperature, seed=1),
                           tree_search="device" if args.device_search else "auto",
                           # ar as a round: overlapped, the same ops run while the device computes
                           overlap=args.overlap and method != "ar")
        dec = build_decoder(target, cfg, drafter)
        dec.prepare(len(prompt))
        counter = Counter()
        rounds = instrument(dec, counter)
        with counter:
            r = dec.generate(prompt)
        n = len(rounds)
        total = sum(sum(c.values()) for c in counter.ops.values())
        print(f"{m}: {n} rounds, tau {r.tau:.2f}: {total / n:.1f} host ops per round outside the graphs")
        for name in PARTS:
            ops = counter.ops.get(name)
            if ops:
                listed = ", ".join(f"{op} {c / n:.1f}" for op, c in ops.most_common())
                print(f"  {name:8s} {sum(ops.values()) / n:5.1f}  {listed}")


if __name__ == "__main__":
    main()
