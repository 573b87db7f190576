"""GPU: the glued decode GEMM (`kernels.decode_gemm`) against the separate kernels it replaces, per
GEMM of a layer, with a sweep of its launch settings.

Roles: qkv (norm in the prologue; before: `add_rms_norm` + `linear`), o (residual add in the
epilogue; before: `linear`, its add folded into the next norm), gate_up (norm in the prologue,
SiLU-multiply in the epilogue; before: `add_rms_norm` + `linear` + `silu_mul`), down (residual
add; before: `linear`) and lm_head (norm; before: `add_rms_norm` + `linear`). Each weight is
replicated past 256 MB and the calls cycle through the copies inside one CUDA graph, so every call
streams its weight from HBM as in a real forward. Prints, per shape, role and row count, the
separate kernels' and the best setting's microseconds per call and GB/s of weight read (beside a
plain streaming read of the same weight: the rate a GEMV could reach at that size, and the best
split-K form of the bare GEMM, whose fp32 partials the next kernel would sum), then
a Python dict of the best settings (a single row's; also to the JSON file SETTINGS_OUT names).

With GLUE=0 it tunes the bare streaming GEMM instead (`kernels.linear`'s, for up to 16 rows)
against what `linear` runs (cuBLAS or the measured settings), with deeper pipelines in the
sweep and cuBLAS beside it, and writes to SETTINGS_OUT a `gemm.STREAM_SETTINGS` value for this
card (per shape and row count, its best setting or "cublas" where cuBLAS was faster), for
`scripts/ab.py specdiff.kernels.gemm.STREAM_SETTINGS=@FILE`.
SPLIT=0 skips the split-K sweep.

    usage: [ROLES=qkv,o] [ROWS=1,16] [GLUE=0] python scripts/gpu_decode_gemm.py [SHAPES]   (default: 8b,1.7b)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench_cudagraph

from specdiff import kernels


@triton.jit
def _read_kernel(w_ptr, out_ptr, numel, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    # a plain streaming read: each program sums one contiguous chunk (the rate a GEMV could reach)
    start = tl.program_id(0).to(tl.int64) * CHUNK
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        acc += tl.load(w_ptr + offs, mask=offs < numel, other=0.0).to(tl.float32)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit
def _split_k_kernel(x_ptr, w_ptr, part_ptr, M, N, K, K_PART, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    # split-K: program (n, s) sums K_PART columns into fp32 partials [S, M, N]; the kernel that
    # reads the product would add the S partials (untimed here: it already runs)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    s = tl.program_id(1)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(s * K_PART, s * K_PART + K_PART, BLOCK_K):
        rk = k + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm < M)[:, None] & (rk < K)[None, :], other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=(rn < N)[None, :] & (rk < K)[:, None], other=0.0)
        acc += tl.dot(x, w)
    tl.store(part_ptr + (s * M + rm[:, None]) * N + rn[None, :], acc, mask=(rm < M)[:, None] & (rn < N)[None, :])


def split_k(x: torch.Tensor, w: torch.Tensor, part: torch.Tensor, setting: tuple) -> torch.Tensor:
    """x [M <= 16, K] @ w.T as partials part [S, M, N] (S = part.shape[0]); setting (block_n,
    block_k, warps, stages), K a multiple of S * block_k."""
    bn, bk, warps, stages = setting
    splits, m, n = part.shape
    _split_k_kernel[(triton.cdiv(n, bn), splits)](x, w, part, m, n, x.shape[1], x.shape[1] // splits, BLOCK_M=16,
                                                   BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return part


def read_alone(w: torch.Tensor, out: torch.Tensor, block: int = 4096) -> None:
    # about 8 programs per SM, so that each SM keeps several loads in flight (with 256 KB chunks a
    # 1.7B o weight had 32 programs and read at 0.3 TB/s); out: one float per program, >= 8 x SMs
    sms = torch.cuda.get_device_properties(w.device).multi_processor_count
    chunk = max(block, triton.cdiv(triton.cdiv(w.numel(), 8 * sms), block) * block)
    _read_kernel[(triton.cdiv(w.numel(), chunk),)](w, out, w.numel(), CHUNK=chunk, BLOCK=block, num_warps=8)

SHAPES = {  # hidden, intermediate, qkv rows
    "8b": (4096, 12288, 6144), "1.7b": (2048, 6144, 4096),
}
SETTINGS = [(bn, bk, w, s) for bn, bk, w, s in itertools.product((16, 32, 64), (128, 256), (4,), (3, 5))]
SETTINGS += [(64, 128, 8, 4), (128, 64, 4, 4), (32, 512, 4, 3), (16, 512, 4, 3)]
BARE = os.environ.get("GLUE") == "0"
if BARE:  # deeper pipelines: a faster card needs more bytes in flight per SM
    SETTINGS = [(bn, bk, 4, s) for bn, bk, s in itertools.product((32, 64, 128), (128, 256), (3, 5, 7))]
    SETTINGS += [(64, 128, 8, 4), (64, 128, 8, 6), (32, 512, 4, 3), (16, 512, 4, 3), (16, 256, 4, 6)]
SPLIT_SETTINGS = [(32, 256, 4, 3), (64, 256, 4, 3), (64, 128, 4, 4), (128, 128, 4, 3)]


def per_call_us(fn, copies: int) -> float:
    return 1000 * do_bench_cudagraph(fn, rep=30) / copies


def roles(hidden: int, inter: int, qkv: int) -> dict:
    # name: (weight rows, K, decode_gemm glue, the separate kernels)
    if BARE:  # the bare GEMM against `linear` as it runs
        return {role: (rows, k, {}, lambda x, w, r: kernels.linear(x, w))
                for role, (rows, k) in dict(qkv=(qkv, hidden), o=(hidden, hidden), gate_up=(2 * inter, hidden),
                                           down=(hidden, inter), lm_head=(151936, hidden)).items()}
    ln = (torch.ones(hidden, device="cuda", dtype=torch.bfloat16), 1e-6)
    return {
        "qkv": (qkv, hidden, dict(norm=ln), lambda x, w, r: kernels.linear(kernels.add_rms_norm(x, r, *ln), w)),
        "o": (hidden, hidden, dict(residual=True), lambda x, w, r: kernels.linear(x, w)),
        "gate_up": (2 * inter, hidden, dict(norm=ln, swiglu=True),
                    lambda x, w, r: kernels.silu_mul(kernels.linear(kernels.add_rms_norm(x, r, *ln), w))),
        "down": (hidden, inter, dict(residual=True), lambda x, w, r: kernels.linear(x, w)),
        "lm_head": (151936, hidden, dict(norm=ln), lambda x, w, r: kernels.linear(kernels.add_rms_norm(x, r, *ln), w)),
    }


def main() -> None:
    torch.manual_seed(0)
    best_settings = {}
    for shape in (sys.argv[1] if len(sys.argv) > 1 else "8b,1.7b").split(","):
        for role, (rows, k, glue, separate) in roles(*SHAPES[shape]).items():
            if role not in os.environ.get("ROLES", role).split(","):
                continue
            size = rows * k * 2
            copies = max(1, math.ceil(256e6 / size))
            ws = [torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]
            for m in map(int, os.environ.get("ROWS", "1,16").split(",")):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                r = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                res = torch.zeros(m, rows, device="cuda", dtype=torch.bfloat16)
                ref = per_call_us(lambda: [separate(x, w, r) for w in ws], copies)
                sums = torch.empty(triton.cdiv(rows * k, 4096), device="cuda")  # one per program at most
                read = per_call_us(lambda: [read_alone(w, sums) for w in ws], copies)
                want = separate(x, ws[0], None)

                def call(w, s):
                    g = dict(glue)
                    if g.pop("residual", False):
                        g["residual"] = res
                    return kernels.decode_gemm(x, w, settings=s, **g)

                best = (float("inf"), None)
                for s in SETTINGS:
                    try:
                        res.zero_()
                        torch.testing.assert_close(call(ws[0], s), want, atol=3e-2, rtol=3e-2)
                        us = per_call_us(lambda: [call(w, s) for w in ws], copies)
                    except Exception as e:  # a setting that does not compile or fit
                        print(f"  {shape} {role} m={m} {s}: {type(e).__name__}: {str(e)[:80]}")
                        continue
                    best = min(best, (us, s), key=lambda t: t[0])
                us, s = best
                sk = (float("inf"), None)
                for splits, setting in itertools.product((2, 4, 8) if os.environ.get("SPLIT") != "0" else (),
                                                         SPLIT_SETTINGS):
                    if k % (splits * setting[1]) or glue.get("swiglu"):
                        continue
                    part = torch.empty(splits, m, rows, device="cuda")
                    try:
                        torch.testing.assert_close(split_k(x, ws[0], part, setting).sum(0),
                                                   torch.nn.functional.linear(x, ws[0]).float(), atol=3e-2, rtol=3e-2)
                        t = per_call_us(lambda: [split_k(x, w, part, setting) for w in ws], copies)
                    except Exception as e:
                        print(f"  {shape} {role} m={m} split {splits} {setting}: {type(e).__name__}: {str(e)[:80]}")
                        continue
                    sk = min(sk, (t, (splits, setting)), key=lambda p: p[0])
                if sk[1] is not None:
                    print(f"      split-K GEMM alone (no glue, partials left for the next kernel): {sk[0]:7.1f} us "
                          f"{size / sk[0] / 1e3:6.0f} GB/s  {sk[1]}", flush=True)
                if BARE:  # the card's choice at this row count: the best setting or cuBLAS
                    cublas = per_call_us(lambda: [torch.nn.functional.linear(x, w) for w in ws], copies)
                    best_settings.setdefault((rows, k), {})[m] = s if us < cublas else "cublas"
                    print(f"      cuBLAS {cublas:7.1f} us {size / cublas / 1e3:6.0f} GB/s", flush=True)
                elif m == 1:
                    best_settings[(rows, k)] = s
                print(f"{shape:5s} {role:8s} m={m:2d}  read alone {read:7.1f} us {size / read / 1e3:6.0f} GB/s   "
                      f"separate {ref:7.1f} us {size / ref / 1e3:6.0f} GB/s   "
                      f"glued {us:7.1f} us {size / us / 1e3:6.0f} GB/s  {s}", flush=True)
            ws = []  # free the copies before the next shape
            torch.cuda.empty_cache()
    if BARE:
        table = {torch.cuda.get_device_name(): best_settings}
        print("STREAM_SETTINGS =", table)
        if os.environ.get("SETTINGS_OUT"):
            with open(os.environ["SETTINGS_OUT"], "w") as f:
                f.write(repr(table))
        return
    print("DECODE_GEMM_SETTINGS =", best_settings)
    if os.environ.get("SETTINGS_OUT"):  # for a run that times them (scripts/gpu_glue.sh)
        with open(os.environ["SETTINGS_OUT"], "w") as f:
            json.dump([[list(key), list(s)] for key, s in best_settings.items()], f)


if __name__ == "__main__":
    main()
