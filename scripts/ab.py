"""Runs `specdiff ARGS` with module constants set, for an A/B of an engine choice in one GPU call
(the same command with and without).

    usage: python scripts/ab.py specdiff.target.graphed.FULL_TREE_BUCKET=False \
               specdiff.kernels.gemm.TREE_GEMM_SETTINGS=@tree_gemm.txt -- speed --shape qwen3-8b ...

A value is a Python literal, or @FILE holding one (`scripts/gpu_gemm_rows.py --out` writes such
a file). A dict value updates the constant in place, so modules that imported it see the change.
"""

from __future__ import annotations

import ast
import importlib
import sys


def assign(assignment: str):
    """Sets one `module.NAME=value`; returns a function that puts the old value back."""
    name, _, text = assignment.partition("=")
    module, _, attr = name.rpartition(".")
    value = ast.literal_eval(open(text[1:]).read() if text.startswith("@") else text)
    mod = importlib.import_module(module)
    old = getattr(mod, attr)
    if isinstance(value, dict):
        saved = dict(old)
        old.update(value)

        def undo():
            old.clear()
            old.update(saved)
    else:
        setattr(mod, attr, value)

        def undo():
            setattr(mod, attr, old)
    print(f"ab: {name} = {value!r}", file=sys.stderr)
    return undo


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    for assignment in argv[:split]:
        assign(assignment)
    from specdiff.cli import main as specdiff_main

    return specdiff_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
