"""GPU: a tree's GEMMs (more than 16 rows) as `kernels.tree_linear` against cuBLAS.

A ddtree forward of B nodes runs B + 1 rows (17, 65, 257) in a graph bucket of that size, and
cuBLAS picks its own tiles for them; `tree_linear` puts the weight on the MMA's wide side, pads
the rows to 16 only and splits K for a narrow weight. Each weight is replicated past 256 MB and
the calls cycle through the copies inside one CUDA graph, so every call streams its weight from
HBM as in a real forward. Prints, per shape and row count, cuBLAS and the best setting:
microseconds per call and GB/s of weight read; with STREAM32=1, up to 32 rows, also the
streaming kernel (`decode_gemm`) in one 32-row block. With --out, writes this card's entry of
`kernels.gemm.TREE_GEMM_SETTINGS` as a Python literal (the best setting where it beat cuBLAS by
3%, else None), for `scripts/ab.py` and `gpu_forward_ab.py --variant`.

    usage: [ROWS=17,65,257] [STREAM32=1] python scripts/gpu_gemm_rows.py [8b,1.7b] [--out tree_gemm.txt]
"""

from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F
from gpu_gemv import CONFIGS as STREAM_CONFIGS, SHAPES as GEMV_SHAPES, per_call_us

from specdiff import kernels

SHAPES = {**GEMV_SHAPES, "1.7b lm_head": (151936, 2048)}  # name: (out features, in features)
# (block_n, block_k, splits, warps, stages): wide weight tiles keep the rows' reads from L2 small
# against the weight's; the splits give a narrow weight enough programs for the SMs. The 32-wide
# tiles give qkv and o enough programs without a split's second launch, at more L2 reads.
TILES = [(128, 128, 1, 4, 3), (128, 128, 2, 4, 3), (128, 128, 4, 4, 3), (128, 64, 2, 4, 4), (128, 64, 4, 4, 4),
         (64, 128, 1, 4, 3), (64, 128, 2, 4, 3), (64, 128, 4, 4, 4), (256, 64, 1, 8, 3), (256, 64, 2, 8, 3),
         (128, 128, 2, 8, 4), (64, 256, 2, 4, 3), (32, 128, 1, 4, 4), (32, 256, 1, 4, 3)]


def cli(default_sets: str) -> tuple[list[str], str | None]:
    """argv: [SETS] [--out FILE] -> (sets, out)."""
    argv = sys.argv[1:]
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    return (argv[0] if argv and not argv[0].startswith("--") else default_sets).split(","), out


def streamed_weights(n: int, k: int) -> tuple[int, int, list[torch.Tensor]]:
    """(bytes, copies, the copies): enough copies of a random [n, k] bf16 weight to pass 256 MB,
    so that calls cycling through them read each from HBM."""
    size = n * k * 2
    copies = max(1, math.ceil(256e6 / size))
    return size, copies, [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]


def main() -> None:
    sets, out = cli("8b,1.7b")
    torch.manual_seed(0)
    rows = [int(r) for r in os.environ.get("ROWS", "17,65,257").split(",")]
    best_settings, table = {}, {}
    for name, (n, k) in SHAPES.items():
        if name.split()[0] not in sets:
            continue
        size, copies, ws = streamed_weights(n, k)
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref_out = F.linear(x, ws[0])
            ref = per_call_us(lambda: [F.linear(x, w) for w in ws], copies)
            best = (float("inf"), None)
            for bn, bk, splits, w, s in TILES:
                cfg = dict(block_n=bn, block_k=bk, splits=splits, num_warps=w, num_stages=s)
                try:
                    got = kernels.tree_linear(x, ws[0], **cfg)
                    torch.testing.assert_close(got, ref_out, atol=3e-2, rtol=3e-2)
                    us = per_call_us(lambda: [kernels.tree_linear(x, w_, **cfg) for w_ in ws], copies)
                except Exception as e:  # a setting that does not compile or fit
                    print(f"  {name} m={m} {cfg}: {type(e).__name__}", flush=True)
                    continue
                best = min(best, (us, cfg), key=lambda t: t[0])
            us, cfg = best
            print(f"{name:13s} m={m:3d}  cublas {ref:7.1f} us {size / ref / 1e3:6.0f} GB/s   triton {us:7.1f} us "
                  f"{size / us / 1e3:6.0f} GB/s  {cfg}", flush=True)
            if m <= 32 and os.environ.get("STREAM32") == "1":  # compared only, not written out
                stream = (float("inf"), None)
                for c in STREAM_CONFIGS:
                    st = (c["block_n"], c["block_k"], c["num_warps"], c["num_stages"])
                    try:
                        torch.testing.assert_close(kernels.decode_gemm(x, ws[0], settings=st, block_m=32), ref_out,
                                                   atol=3e-2, rtol=3e-2)
                        t = per_call_us(lambda: [kernels.decode_gemm(x, w_, settings=st, block_m=32) for w_ in ws], copies)
                    except Exception as e:  # a setting that does not compile or fit
                        print(f"  {name} m={m} stream {st}: {type(e).__name__}", flush=True)
                        continue
                    stream = min(stream, (t, st), key=lambda p: p[0])
                print(f"{name:13s} m={m:3d}  streaming kernel, one 32-row block: {stream[0]:7.1f} us  {stream[1]}",
                      flush=True)
            best_settings[(n, k, m)] = (us, ref, cfg)
            table.setdefault((n, k), {})[m] = (
                tuple(cfg[f] for f in ("block_n", "block_k", "splits", "num_warps", "num_stages"))
                if cfg and us < 0.97 * ref else None)
            if out:
                with open(out, "w") as f:
                    f.write(repr({torch.cuda.get_device_name(): table}))
    print({key: (round(us, 1), round(ref, 1), tuple(cfg.values()) if cfg else None)
           for key, (us, ref, cfg) in best_settings.items()})


if __name__ == "__main__":
    main()
