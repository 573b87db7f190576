"""GPU: `kernels.skinny_linear` against cuBLAS (`F.linear`) on the weight shapes of a decoding step.

Each weight is replicated past 256 MB and the calls cycle through the copies inside one CUDA graph,
so every call streams its weight from HBM as in a real forward (no L2 reuse). Prints, per shape and
row count, cuBLAS and the best skinny config: microseconds per call and GB/s of weight read.

    usage: python scripts/gpu_gemv.py
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

from specdiff import kernels

SHAPES = {  # name: (out features, in features)
    "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (24576, 4096), "8b down": (4096, 12288),
    "8b lm_head": (151936, 4096), "1.7b qkv": (4096, 2048), "1.7b o": (2048, 2048),
    "1.7b gate_up": (12288, 2048), "1.7b down": (2048, 6144),
}
CONFIGS = [dict(block_n=bn, block_k=bk, num_warps=w, num_stages=s)
           for bn, bk, w, s in itertools.product((16, 32, 64), (128, 256), (4,), (3, 5))]


def per_call_us(fn, copies: int) -> float:
    return 1000 * do_bench_cudagraph(fn, rep=60) / copies


def main() -> None:
    torch.manual_seed(0)
    for name, (n, k) in SHAPES.items():
        size = n * k * 2
        copies = max(1, math.ceil(256e6 / size))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = per_call_us(lambda: [F.linear(x, w) for w in ws], copies)
            best = (float("inf"), None)
            for cfg in CONFIGS:
                try:
                    got = kernels.skinny_linear(x, ws[0], **cfg)
                    torch.testing.assert_close(got, F.linear(x, ws[0]), atol=2e-2, rtol=2e-2)
                    us = per_call_us(lambda: [kernels.skinny_linear(x, w, **cfg) for w in ws], copies)
                except Exception as e:  # a config that does not compile or fit
                    print(f"  {name} m={m} {cfg}: {type(e).__name__}")
                    continue
                best = min(best, (us, cfg), key=lambda t: t[0])
            us, cfg = best
            print(f"{name:13s} m={m:2d}  cublas {ref:7.1f} us {size / ref / 1e3:6.0f} GB/s   skinny {us:7.1f} us "
                  f"{size / us / 1e3:6.0f} GB/s  {cfg}", flush=True)


if __name__ == "__main__":
    main()
