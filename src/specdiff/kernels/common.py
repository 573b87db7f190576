"""What the kernel modules share: Triton where it is installed, the bf16 rounding helper, sizes,
and programmatic dependent launch."""

from __future__ import annotations

import functools

import torch

try:  # the CPU install has no Triton: the forward then runs the references
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None
    tl = None

BLOCK_N = 64  # keys per attention tile


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# Programmatic dependent launch (Hopper and later): a forward kernel launched with it is scheduled
# while the kernel before it drains, and waits (`_pdl_wait`, its first statement, before it touches
# memory) until that kernel has finished and its writes are visible; it lets the next kernel start
# once its own main loop is done (`_pdl_release`). A decode forward is hundreds of short kernels,
# each paying a launch gap and a ramp: on an H100 the Qwen3-8B forward of one token went 6.02 ->
# 5.82 ms and the 1.7B one 2.03 -> 1.88 with it (`scripts/gpu_pdl.sh`). The GPU test holds a
# graphed chain of these kernels to the plain launches' bits. Older GPUs launch plainly.
PDL = True


@functools.lru_cache(maxsize=None)
def _pdl_runs(device_index: int) -> bool:
    if triton is None or not hasattr(getattr(tl.extra, "cuda", None), "gdc_wait"):
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:  # pragma: no cover - a Triton without the NVIDIA backend
        return False
    return "launch_pdl" in CUDAOptions.__dataclass_fields__ and torch.cuda.get_device_capability(device_index)[0] >= 9


_PDL_ON, _PDL_OFF = {"PDL": True, "launch_pdl": True}, {"PDL": False}


def pdl(device: torch.device) -> dict:
    """A forward kernel's launch keywords: its PDL flag and, where it is on, Triton's launch option
    (shared dicts: an eager forward asks once per kernel)."""
    if not PDL or device.type != "cuda":
        return _PDL_OFF
    return _PDL_ON if _pdl_runs(torch.cuda.current_device() if device.index is None else device.index) else _PDL_OFF


if triton is not None:

    @triton.jit
    def _round(x, dt: tl.constexpr):
        """fp32 -> dt, to nearest even. Spelled out for bf16 because Triton's interpreter truncates
        there (the GPU's cvt rounds the same as this), so the CPU tests see the GPU's rounding."""
        if dt == tl.bfloat16:
            b = x.to(tl.uint32, bitcast=True)
            b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
            return b.to(tl.float32, bitcast=True).to(dt)
        else:
            return x.to(dt)

    @triton.jit
    def _pdl_wait(PDL: tl.constexpr):
        """A kernel's first statement: under PDL, wait for the kernel before it (its writes)."""
        if PDL:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def _prefetch_l2(ptrs, mask):
        """Ask L2 for the 128-byte lines at `ptrs` (one per element where `mask`), nothing waited for."""
        tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
                                  "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _pdl_release(PDL: tl.constexpr):
        """Under PDL: the next kernel may be scheduled now (it still waits for this one's end)."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
