"""GPU: is `kernels.tree_linear` batch-invariant, and what do exact numerics' GEMMs cost with it?

Exact numerics (`--numerics exact`) need every row's GEMM result to be the same bits whatever
other rows share its forward. Unprobed, `invariant_linear` is the streaming kernel with one
16-row block per program, so a forward of 65 rows reads each weight tile five times (once per
block, from L2 at best). `tree_linear` reads each weight tile once for all rows, its rows on the
MMA's narrow side. Where its per-row sums do not depend on how many rows ride along (the K order
is fixed by block_k and the split), one launch setting per weight shape makes it batch-invariant
too, at one weight read per forward (`kernels.exact_gemm`).

For each weight shape and setting: the rows of 1, 16, 17, 65 and 257-row calls against each row
computed alone (rows whose bits differ), the same against the streaming kernel, and the time per
call (each weight streamed from HBM, as `gpu_gemm_rows.py` times it) at 1, 17, 65 and 257 rows,
next to the streaming kernel, cuBLAS and `kernels.linear` (the fast path). For the setting chosen,
257 rows also in wider row groups and with fewer pipeline stages (`wide_groups`). With --out,
writes this card's entry of `kernels.exact_gemm.INVARIANT_SETTINGS` as a Python literal: per
shape, of the settings with no differing row, the one fastest over 1, 17 and 65 rows together,
where it beat the streaming kernel there (for `scripts/ab.py`).

With --wide: for each weight the card lists in `INVARIANT_SETTINGS`, the launch past 80 rows (a
tree of 128 or 256 nodes) swept with the table's block_k and splits kept: `tree_linear`'s block_n,
warps, stages and row group, and for a setting without a split the streaming kernel's row block,
block_n, warps and stages (the rows on the MMA's wide side), at 129 and 257 rows, each row against
the row computed alone at the table's setting, beside cuBLAS (fast numerics' GEMM there) and the
table's own launch. --out then writes `kernels.exact_gemm.WIDE_LAUNCH`'s entry for this card: per
shape, of the launches with no differing row, the fastest over 129 and 257 rows together where
it beat the table's own launch.

    usage: python scripts/gpu_invariance.py [8b,1.7b] [--wide] [--out invariant_settings.txt]
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from gpu_gemm_rows import SHAPES, cli, streamed_weights
from gpu_gemv import per_call_us

from specdiff import kernels
from specdiff.kernels import exact_gemm, gemm, tree_gemm

# (block_n, block_k, splits, warps, stages)
SETTINGS = [(128, 128, 1, 4, 3), (64, 128, 1, 4, 3), (64, 256, 1, 4, 3), (32, 128, 1, 4, 4), (128, 128, 2, 4, 3),
            (64, 128, 2, 4, 3), (64, 256, 2, 4, 3), (128, 128, 4, 4, 3), (64, 128, 4, 4, 4)]
COUNTS = (1, 16, 17, 65, 257)
TIMED = (1, 17, 65, 257)


def differing_rows(fn, x: torch.Tensor, alone: torch.Tensor) -> list[int]:
    """Per row count, how many rows of fn(x[:m]) differ in any bit from the row computed alone."""
    return [int((fn(x[:m]) != alone[:m]).any(dim=1).sum()) for m in COUNTS]


def wide_groups(x: torch.Tensor, ws: list[torch.Tensor], copies: int, setting: tuple) -> None:
    """257 rows of the chosen setting in row groups of 64, 128 and 256 and with 2 pipeline stages,
    which leave the sums' order alone: us per call and rows whose bits differ from the rows
    computed alone at the setting itself."""
    bn, bk, splits, warps, stages = setting
    cfg = dict(block_n=bn, block_k=bk, splits=splits, num_warps=warps)
    alone = torch.cat([kernels.tree_linear(x[i:i + 1], ws[0], num_stages=stages, **cfg) for i in range(257)])
    for group, st in ((64, stages), (128, stages), (128, 2), (256, 2)):
        run = dict(cfg, num_stages=st, group_rows=group)
        try:
            differ = int((kernels.tree_linear(x[:257], ws[0], **run) != alone).any(dim=1).sum())
            us = per_call_us(lambda: [kernels.tree_linear(x[:257], w_, **run) for w_ in ws], copies)
        except Exception as e:  # a tile that does not fit shared memory
            print(f"    257 rows, groups of {group}, {st} stages: {type(e).__name__}", flush=True)
            continue
        print(f"    257 rows, groups of {group}, {st} stages: {us:7.1f} us, rows differing from alone {differ}",
              flush=True)


WIDE_ROWS = (129, 257)
# `exact_gemm.WIDE_LAUNCH` candidates past 80 rows; tiles past shared memory are skipped (a
# 256-wide weight tile fits only at 2 stages)
WIDE = ([("tree", bn, warps, stages, group) for bn in (64, 128, 256)
         for warps, stages in ((4, 3), (8, 3), (8, 4), (8, 2)) for group in (64, 128)]
        + [("rows", bm, bn, warps, stages) for bm in (64, 128) for bn in (64, 128, 256)
           for warps, stages in ((4, 3), (8, 3), (8, 2))])


def wide_launch(sets: list[str], out: str | None) -> None:
    """The exact GEMM's launch past 80 rows per listed weight: every row's bits against the row
    alone at the table's setting, and us per call at WIDE_ROWS, beside cuBLAS and the table's own."""
    table, card = {}, torch.cuda.get_device_name()
    listed = exact_gemm.WIDE_LAUNCH[card] = {}  # the table's own launch, not the listed one
    for name, (n, k) in SHAPES.items():
        setting = gemm._card_table(exact_gemm.INVARIANT_SETTINGS, torch.device("cuda")).get((n, k))
        if name.split()[0] not in sets or setting is None:
            continue
        _, copies, ws = streamed_weights(n, k)
        x = torch.randn(max(WIDE_ROWS), k, device="cuda", dtype=torch.bfloat16)
        alone = torch.cat([tree_gemm.tree_linear_at(x[i:i + 1], ws[0], None, setting) for i in range(x.shape[0])])
        cublas = [per_call_us(lambda: [F.linear(x[:m], w) for w in ws], copies) for m in WIDE_ROWS]
        own = [per_call_us(lambda: [tree_gemm.tree_linear_at(x[:m], w, None, setting) for w in ws], copies)
               for m in WIDE_ROWS]
        print(f"{name} {setting}: us at {WIDE_ROWS} rows; cuBLAS " + " ".join(f"{t:7.1f}" for t in cublas)
              + "; the table's launch " + " ".join(f"{t:7.1f}" for t in own), flush=True)
        best = (sum(own), None)
        for wide in WIDE:
            if not exact_gemm.wide_launch_fits(setting, wide):
                continue
            run = functools.partial(exact_gemm._tree_run, bias=None, setting=setting)
            try:
                listed[(n, k)] = wide
                differ = int((run(x, ws[0]) != alone).any(dim=1).sum())
                us = [per_call_us(lambda: [run(x[:m], w) for w in ws], copies) for m in WIDE_ROWS]
            except Exception as e:  # a launch that does not compile
                print(f"  {wide}: {type(e).__name__}", flush=True)
                continue
            finally:
                listed.pop((n, k))
            print(f"  {str(wide):28s} " + " ".join(f"{t:7.1f}" for t in us)
                  + f"   rows differing from alone {differ}", flush=True)
            if differ == 0:
                best = min(best, (sum(us), wide), key=lambda b: b[0])
        if best[1] is not None:
            table[(n, k)] = best[1]
        print(f"  chosen: {best[1]} ({best[0]:.1f} us over {WIDE_ROWS} rows)", flush=True)
        if out:
            with open(out, "w") as f:
                f.write(repr({card: table}))


def main() -> None:
    sets, out = cli("8b")
    if "--wide" in sys.argv:
        return wide_launch(sets, out)
    torch.manual_seed(0)
    summary, table = [], {}
    for name, (n, k) in SHAPES.items():
        if name.split()[0] not in sets:
            continue
        _, copies, ws = streamed_weights(n, k)
        x = torch.randn(max(COUNTS), k, device="cuda", dtype=torch.bfloat16)
        exact_alone = torch.cat([kernels.invariant_linear(x[i:i + 1], ws[0]) for i in range(x.shape[0])])
        times = {}
        for m in TIMED:
            times[("cublas", m)] = per_call_us(lambda: [F.linear(x[:m], w) for w in ws], copies)
            times[("linear", m)] = per_call_us(lambda: [kernels.linear(x[:m], w) for w in ws], copies)
            times[("invariant", m)] = per_call_us(lambda: [kernels.invariant_linear(x[:m], w) for w in ws], copies)
        exact_self = differing_rows(lambda r: kernels.invariant_linear(r, ws[0]), x, exact_alone)
        row = lambda label: " ".join(f"{times[(label, m)]:7.1f}" for m in TIMED)  # noqa: E731
        print(f"{name}: us at {TIMED} rows", flush=True)
        print(f"  cuBLAS              {row('cublas')}", flush=True)
        print(f"  linear (fast)       {row('linear')}", flush=True)
        print(f"  invariant_linear    {row('invariant')}   self {exact_self}", flush=True)
        first = {}
        best = (sum(times[("invariant", m)] for m in TIMED[:3]), None)
        for bn, bk, splits, warps, stages in SETTINGS:
            cfg = dict(block_n=bn, block_k=bk, splits=splits, num_warps=warps, num_stages=stages)
            fn = lambda r, w=ws[0]: kernels.tree_linear(r, w, **cfg)  # noqa: E731
            try:
                alone = torch.cat([fn(x[i:i + 1]) for i in range(x.shape[0])])
                torch.testing.assert_close(alone, F.linear(x, ws[0]), atol=3e-2, rtol=3e-2)
                self_rows = differing_rows(fn, x, alone)
                vs_exact = int((alone != exact_alone).any(dim=1).sum())
                key = (bk, splits)  # the same K order: do other tile widths give the same bits?
                vs_first = int((alone != first.setdefault(key, alone)).any(dim=1).sum())
                us = [per_call_us(lambda: [kernels.tree_linear(x[:m], w_, **cfg) for w_ in ws], copies)
                      for m in TIMED]
            except Exception as e:  # a setting that does not compile or fit
                print(f"  {cfg}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            print(f"  tree {bn:3d} {bk:3d} {splits} {warps} {stages}  " + " ".join(f"{t:7.1f}" for t in us)
                  + f"   self {self_rows}  vs invariant_linear {vs_exact}  vs first of bk/splits {vs_first}",
                  flush=True)
            if not any(self_rows):
                summary.append((name, (bn, bk, splits, warps, stages), [round(t, 1) for t in us],
                                [round(times[("invariant", m)], 1) for m in TIMED],
                                [round(times[("linear", m)], 1) for m in TIMED]))
                best = min(best, (sum(us[:3]), (bn, bk, splits, warps, stages)), key=lambda b: b[0])
        if best[1] is not None:
            table[(n, k)] = best[1]
            wide_groups(x, ws, copies, best[1])
        if out:
            with open(out, "w") as f:
                f.write(repr({torch.cuda.get_device_name(): table}))
    print("\ninvariant settings (shape, setting, us tree / invariant_linear / fast linear at", TIMED, "rows):")
    for s in summary:
        print(" ", s)


if __name__ == "__main__":
    main()
