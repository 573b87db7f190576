"""Fused Triton kernels of a decoding forward, each beside the PyTorch function it must equal.

At decoding sizes a large model's forward is bound by reading its weights, and every kernel
between two GEMMs adds launch and tail latency: the eager static forward runs about 35 kernels
per layer, most of them elementwise. These fold a layer's glue into five launches beside its four
GEMMs (fused QKV, o, fused gate/up, down), four where SiLU-multiply rides in the gate/up GEMM's
epilogue, and for a few rows (`decode_gemm`'s glued form) into the GEMMs themselves:

- `add_rms_norm`: the residual add and the next RMSNorm in one pass over each row;
- `qkv_rope_store`: the fused QKV projection split into heads, per-head q/k RMSNorm (Qwen3),
  RoPE, and the K/V rows written into the static cache (`kv_rope_store_layers`: the K/V of every
  layer of a DFlash drafter's context fusion at once);
- `silu_mul`: SwiGLU's SiLU(gate) * up from the fused gate/up projection, and `swiglu`: the same
  in the epilogue of that projection's GEMM wherever the GEMM streams its weight;
- `decode_gemm`: a GEMM of a few rows that streams its weight once, with the RMSNorm in its
  prologue, SiLU-multiply or the residual add in its epilogue;
- `tree_linear`: a GEMM of a tree's rows, the rows on the MMA's narrow side padded to 16 only, its
  K range split for a narrow weight (where `gemm.TREE_GEMM_SETTINGS` names the weight), and exact
  numerics' GEMM at every row count where `exact_gemm.INVARIANT_SETTINGS` names the weight and
  `probe_invariance` passed it on the device;
- `tree_attention`: N tree rows over the committed cache slots and their tree ancestors, split
  over the keys (flash-decoding) so that a single query row still fills the GPU, reading no slot
  at or past start + N; the splits merged by a kernel of their own, or left unmerged
  (`SplitAttention`) for the caller to merge.

Each `*_reference` is the same contract in eager PyTorch, with Hugging Face's rounding order
(normalise in fp32, cast, then scale by the weight; each RoPE product rounded before the sum). The
kernels round the same way, so they differ from their references only in the order of their sums.
On a CPU the tests run the kernels under Triton's interpreter against the references.

Modules: `elementwise` (the norm, QKV/RoPE/cache and SiLU-multiply kernels), `attention` (tree
attention, and the exact numerics' position-ordered attention), `gemm` (the weight-streaming GEMM,
its glued form, and which GEMM runs where), `tree_gemm` (a tree's rows' GEMM), `exact_gemm` (exact
numerics' GEMMs from them), `tree` (a resident tree's target inputs and the device's accepted
path), `common` (Triton where installed, bf16 rounding, and programmatic dependent launch: under `common.PDL`, on Hopper, each forward kernel is scheduled while the one
before it drains and waits for its writes first thing). This package holds the op sets (`OPS`, `EXACT_OPS`) and
the `--kernels` decision, and re-exports the rest.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from specdiff.errors import SpecdiffError
from specdiff.kernels.attention import (SplitAttention, ancestor_paths, position_attention, position_tree_index,
                                        tree_attention,
                                        tree_attention_flex, tree_attention_reference, tree_block_mask, tree_index,
                                        tree_visibility)
from specdiff.kernels.common import BLOCK_N, triton
from specdiff.kernels.elementwise import (add_rms_norm, add_rms_norm_reference, kv_rope_store_layers,
                                          kv_rope_store_layers_reference, qkv_rope_store, qkv_rope_store_reference,
                                          rms_norm_reference, rope_reference, silu_mul, silu_mul_reference)
from specdiff.kernels.exact_gemm import invariant_linear, invariant_swiglu, probe_invariance
from specdiff.kernels.gemm import SKINNY_MIN_WEIGHT, SKINNY_ROWS, decode_gemm, linear, skinny_linear, swiglu
from specdiff.kernels.tree_gemm import tree_linear
from specdiff.kernels.tree import accepted_path, tree_inputs, tree_inputs_reference

__all__ = [
    "BLOCK_N", "EXACT_OPS", "OPS", "SKINNY_MIN_WEIGHT", "SplitAttention", "SKINNY_ROWS", "add_rms_norm", "add_rms_norm_reference",
    "ancestor_paths", "decode_gemm", "switches", "invariant_linear", "invariant_swiglu", "kv_rope_store_layers", "kv_rope_store_layers_reference",
    "linear", "position_attention", "position_tree_index", "probe_invariance",
    "qkv_rope_store", "qkv_rope_store_reference", "rms_norm_reference", "rope_reference", "runnable", "silu_mul",
    "silu_mul_reference", "skinny_linear", "swiglu", "tree_attention", "tree_attention_flex", "tree_attention_reference", "tree_block_mask", "tree_index", "tree_linear",
    "accepted_path", "tree_inputs", "tree_inputs_reference", "tree_visibility", "use_triton",
]


def switches(device: torch.device) -> dict:
    """The launch choices a run on `device` made away from their defaults (`scripts/ab.py` sets
    them), for its report: {} where none."""
    from specdiff.kernels import common, exact_gemm, gemm, tree_gemm

    out: dict = {}
    if not common.PDL:
        out["pdl"] = False
    if not gemm.SWIGLU_EPILOGUE:
        out["swiglu_epilogue"] = False
    if not tree_gemm.TREE_SPLIT_FIXUP:
        out["tree_split_fixup"] = False
    if not tree_gemm.TREE_TAIL:
        out["tree_tail"] = False
    if gemm.PREFETCH_TILES:
        out["prefetch_tiles"] = gemm.PREFETCH_TILES
    if gemm.SKINNY_MIN_WEIGHT != gemm.SQUARE_8B:
        out["skinny_min_weight"] = gemm.SKINNY_MIN_WEIGHT
    if gemm.STREAM_SETTINGS != gemm.MEASURED_STREAM_SETTINGS:
        out["stream_settings"] = ",".join(sorted(c for c, t in gemm.STREAM_SETTINGS.items() if t))
    if gemm.TREE_GEMM_SETTINGS != gemm.MEASURED_TREE_SETTINGS:
        out["tree_gemm_settings"] = ",".join(sorted(c for c, t in gemm.TREE_GEMM_SETTINGS.items() if t))
    if exact_gemm.INVARIANT_SETTINGS != exact_gemm.MEASURED_INVARIANT_SETTINGS:
        out["invariant_settings"] = ",".join(sorted(c for c, t in exact_gemm.INVARIANT_SETTINGS.items() if t))
    if exact_gemm.WIDE_LAUNCH != exact_gemm.MEASURED_WIDE_LAUNCH:
        out["wide_launch"] = ",".join(sorted(c for c, t in exact_gemm.WIDE_LAUNCH.items() if t))
    refused = sorted({key[1] for key, ok in exact_gemm.INVARIANCE_VERDICTS.items() if not ok})
    if refused:  # exact GEMMs a card lists that its probe refused: the streaming kernel ran them
        out["invariant_refused"] = " ".join(f"{n}x{k}" for n, k in refused)
    return out


def runnable(device: torch.device) -> str | None:
    """Why the kernels cannot run on `device` (None: they can): a CUDA GPU, or Triton's interpreter."""
    if triton is None:
        return "Triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"Triton kernels need a CUDA device (this forward runs on {device.type})"
    return None


def use_triton(kernels_choice: str, why_not: str | None, device: torch.device, what: str = "") -> bool:
    """Whether `--kernels` runs the Triton kernels for a model that `why_not` says cannot take
    them (None: it can): "triton" and "glued" (refused in one line where they cannot run), "torch"
    (no), "auto" (on a CUDA GPU where they can run). what: the model named in the refusal."""
    if kernels_choice == "torch":
        return False
    if kernels_choice == "auto":
        return why_not is None and device.type == "cuda"
    if why_not is not None:
        raise SpecdiffError(f"--kernels triton cannot run{what} here: {why_not}")
    return True


# The op set `target.fused.FusedForward` runs by default (`invariant.OPS` is the exact mode's).
# `tree_index` runs once per forward; its result goes to every layer's `tree_attention`.
OPS = SimpleNamespace(linear=linear, add_rms_norm=add_rms_norm, qkv_rope_store=qkv_rope_store, silu_mul=silu_mul,
                      swiglu=swiglu, tree_index=tree_index, tree_attention=tree_attention, decode_gemm=decode_gemm)

# Exact numerics in Triton: every op computes a row as it would alone (norms, QKV/RoPE and SiLU
# kernels already do: one program per row or element; the GEMMs take settings by weight shape)
EXACT_OPS = SimpleNamespace(linear=invariant_linear, add_rms_norm=add_rms_norm, qkv_rope_store=qkv_rope_store,
                            silu_mul=silu_mul, swiglu=invariant_swiglu,
                            tree_index=position_tree_index, tree_attention=position_attention,
                            decode_gemm=None)
