"""Wiring: a target model + (optional) drafters + `DecodeConfig` -> a ready `SpeculativeDecoder`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from specdiff.config import DecodeConfig
from specdiff.decode import SpeculativeDecoder
from specdiff.drafters.dflash import DFlashDrafter, check_fits, check_pair
from specdiff.drafters.graphed import GraphedDrafter, GraphedVPDrafter
from specdiff.drafters.proposers import make_proposer
from specdiff.errors import SpecdiffError
from specdiff.target.hf_causal import HFTarget
from specdiff.target.graphed import GraphedTarget
from specdiff.target.static_model import StaticTarget
from specdiff.trees.cost_model import CostProfile

NEEDS_DRAFTER = ("dflash", "ddtree", "caddtree", "d2sd", "d2sd-hybrid")
NEEDS_VP = ("d2sd", "d2sd-hybrid")  # D²SD's second (variable-prefix) drafter


def make_target(model: torch.nn.Module, engine: str = "hf") -> HFTarget:
    """The target adapter for `engine`: "hf" (the model's own forward), "static" or "graph"."""
    if engine == "graph":
        return GraphedTarget(model)
    return StaticTarget(model) if engine == "static" else HFTarget(model)


def build_decoder(model: torch.nn.Module | HFTarget, cfg: DecodeConfig, drafter: DFlashDrafter | None = None,
                  eos_ids: Sequence[int] = (), vp_drafter: DFlashDrafter | None = None) -> SpeculativeDecoder:
    cfg.validate()
    target = model if isinstance(model, HFTarget) else make_target(model, cfg.engine)
    if cfg.method in NEEDS_DRAFTER:
        if drafter is None:
            raise SpecdiffError(f"method {cfg.method} needs a DFlash drafter (--drafter DIR)")
        check_fits(drafter, target.hidden_size, target.vocab_size, target.num_layers)
        drafter.bind(target.embed_tokens, target.lm_head)
    if cfg.method in NEEDS_VP:
        if vp_drafter is None:
            raise SpecdiffError(f"method {cfg.method} needs a VP drafter (--vp-drafter DIR)")
        check_fits(vp_drafter, target.hidden_size, target.vocab_size, target.num_layers)
        check_pair(drafter, vp_drafter)
        vp_drafter.bind(target.embed_tokens, target.lm_head)
    if cfg.engine == "graph" and drafter is not None and cfg.method in NEEDS_DRAFTER:
        drafter = GraphedDrafter(drafter)
        if cfg.method in NEEDS_VP:
            vp_drafter = GraphedVPDrafter(vp_drafter, cfg.branches)
    profile = None
    if cfg.method == "caddtree":
        from specdiff.bench.profile import default_profile_path

        dtype = str(target.dtype).removeprefix("torch.")
        path = Path(cfg.profile) if cfg.profile else default_profile_path(target.device, target, drafter, dtype)
        if not path.is_file():
            raise SpecdiffError(f"caddtree needs a cost profile for this device and models; none at {path} "
                                "(run `specdiff profile` with the same --target/--drafter/--device/--dtype)")
        profile = CostProfile.load(path)
    return SpeculativeDecoder(target, make_proposer(cfg, drafter, profile, vp_drafter), cfg, eos_ids)
