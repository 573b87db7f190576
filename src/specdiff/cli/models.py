"""`specdiff inflate`: the trained pair embedded in a larger Qwen3 shape (specdiff.models.inflate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from specdiff.cli.common import check_out_dir

# this module's commands in help order: each has add_<name>_args (its docstring: the help line and an
# example) and cmd_<name>
COMMANDS = ("inflate",)


def add_inflate_args(p: argparse.ArgumentParser) -> None:
    """write a cost stand-in: the trained pair in a larger Qwen3 shape, same tokens and tau, not a better model

    specdiff inflate --shape qwen3-8b --out models/inflated-8b
    """
    p.add_argument("--shape", required=True,
                   help="qwen3-8b, qwen3-1.7b, or HIDDENxLAYERS (e.g. 768x16: heads and MLP grow with the hidden size)")
    p.add_argument("--out", required=True, help="folder for target/, dflash/, vp/ and inflate.json")
    p.add_argument("--target", help="source target folder (default: the bundled target)")
    p.add_argument("--drafter", help="source DFlash drafter folder (default: the bundled drafter)")
    p.add_argument("--vp-drafter", help="source variable-prefix drafter folder (default: the bundled one)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="weights written; float32 keeps the small pair's tokens exactly, bfloat16 is what a large "
                        "pair is served in")
    p.add_argument("--device", default="cpu", help="where the weights are built (cpu, cuda, ...)")
    p.add_argument("--max-shard-size", default="5GB", help="the target's safetensors shards at most this large")


def cmd_inflate(args: argparse.Namespace) -> int:
    from specdiff.loading import check_device
    from specdiff.models.inflate import inflate, plan

    check_device(args.device)
    p = plan(args.shape, args.target, args.drafter, args.vp_drafter)  # every check before the folder is made
    out = check_out_dir(Path(args.out))
    print(f"inflating {p.target} ({p.small}) to {args.shape} ({p.big}), {args.dtype}")
    summary = inflate(p, out, args.dtype, args.device, args.max_shard_size, log=print)
    print(f"wrote {out} in {summary['wall_s']:.0f} s: a cost stand-in with the small pair's tokens, not a better model")
    return 0
