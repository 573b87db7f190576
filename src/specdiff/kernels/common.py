"""What the kernel modules share: Triton where it is installed, the bf16 rounding helper, sizes."""

from __future__ import annotations

try:  # the CPU install has no Triton: the forward then runs the references
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None
    tl = None

BLOCK_N = 64  # keys per attention tile


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


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
