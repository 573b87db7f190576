"""The decoding methods and their registry.

One module per method draws its rounds' trees (`ar`, `pld`, `dflash`, `ddtree`, `ddtree_pld`,
`d2sd`; `caddtree` is a package: tree, cost model, profiler, proposer); `base` holds the interface
they share. The registry below is the one list of methods: the config's `Method` type, the
engine's wiring, the CLI's choices and the bench's sweep all read it. Adding a method is its
module plus one entry here. This module imports no torch, so the CLI can list the methods without loading it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from specdiff.config import DecodeConfig
    from specdiff.methods.base import Proposer
    from specdiff.native import Native
    from specdiff.target.hf_causal import HFTarget

Method = Literal["ar", "pld", "dflash", "ddtree", "ddtree-pld", "caddtree", "d2sd", "d2sd-hybrid"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    module: str  # holds `make_proposer(cfg, target, drafter, vp_drafter, profile, native)` for this method
    summary: str
    drafter: bool = False  # drafts with the DFlash drafter
    vp_drafter: bool = False  # also with D²SD's variable-prefix drafter
    budgeted: bool = False  # its tree size is `DecodeConfig.budget` (the bench sweeps it)


REGISTRY: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("ar", "specdiff.methods.ar", "the target alone, one token per forward (the baseline)"),
    MethodInfo("pld", "specdiff.methods.pld", "prompt lookup: the tokens that followed the context's last n-gram"),
    MethodInfo("dflash", "specdiff.methods.dflash", "DFlash: the drafter's block, as one chain", drafter=True),
    MethodInfo("ddtree", "specdiff.methods.ddtree", "DDTree: the drafter's most probable prefixes, as one tree",
               drafter=True, budgeted=True),
    MethodInfo("ddtree-pld", "specdiff.methods.ddtree_pld", "DDTree's prefixes and the prompt-lookup chain, the "
               "budget's most likely nodes of both, as one tree", drafter=True, budgeted=True),
    MethodInfo("caddtree", "specdiff.methods.caddtree", "cost-aware DDTree: as many prefixes as pay for their "
               "measured cost", drafter=True),
    MethodInfo("d2sd", "specdiff.methods.d2sd", "D²SD: the DFlash chain and VP re-drafts of its likely "
               "rejection points, merged into one trie", drafter=True, vp_drafter=True),
    MethodInfo("d2sd-hybrid", "specdiff.methods.d2sd", "D²SD's VP branches inside DDTree's node budget",
               drafter=True, vp_drafter=True, budgeted=True),
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)
if METHODS != get_args(Method):
    raise ImportError("methods.Method and methods.REGISTRY list different methods")


def needs_drafter(method: str) -> bool:
    return REGISTRY[method].drafter


def needs_vp_drafter(method: str) -> bool:
    return REGISTRY[method].vp_drafter


def make_proposer(cfg: DecodeConfig, target: HFTarget | None = None, drafter=None, vp_drafter=None,
                  profile=None, native: Native | None = None) -> Proposer:
    """The proposer for `cfg.method`, from its own module. `drafter`, `vp_drafter`: bound to the
    target already; `profile`: caddtree's cost profile (None: the one saved for this device);
    `native`: the C tree search (`native.load()`; None: the Python one)."""
    info = REGISTRY[cfg.method]
    if info.drafter and drafter is None:
        raise ValueError(f"method {info.name} needs a DFlash drafter")
    if info.vp_drafter and vp_drafter is None:
        raise ValueError(f"method {info.name} needs a VP drafter")
    return importlib.import_module(info.module).make_proposer(cfg, target, drafter, vp_drafter, profile, native)
