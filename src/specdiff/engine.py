"""Wiring: a target model + (optional) drafter + `DecodeConfig` -> a ready `SpeculativeDecoder`."""

from __future__ import annotations

from typing import Sequence

import torch

from specdiff.config import DecodeConfig
from specdiff.decode import SpeculativeDecoder
from specdiff.drafters.dflash import DFlashDrafter, check_fits
from specdiff.drafters.proposers import make_proposer
from specdiff.errors import SpecdiffError
from specdiff.target.hf_causal import HFTarget

NEEDS_DRAFTER = ("dflash", "ddtree")


def build_decoder(model: torch.nn.Module | HFTarget, cfg: DecodeConfig, drafter: DFlashDrafter | None = None,
                  eos_ids: Sequence[int] = ()) -> SpeculativeDecoder:
    cfg.validate()
    target = model if isinstance(model, HFTarget) else HFTarget(model)
    if cfg.method in NEEDS_DRAFTER:
        if drafter is None:
            raise SpecdiffError(f"method {cfg.method} needs a DFlash drafter (--drafter DIR)")
        check_fits(drafter, target.hidden_size, target.vocab_size, target.num_layers)
        drafter.bind(target.embed_tokens, target.lm_head)
    return SpeculativeDecoder(target, make_proposer(cfg, drafter), cfg, eos_ids)
