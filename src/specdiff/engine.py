"""Wiring: a target model + (optional) drafters + `DecodeConfig` -> a ready `SpeculativeDecoder`."""

from __future__ import annotations

from typing import Sequence

import torch

from specdiff import native
from specdiff.config import DecodeConfig, check_draft_vocab
from specdiff.decode import SpeculativeDecoder
from specdiff.drafters.dflash import DFlashDrafter, check_fits, check_pair
from specdiff.drafters.graphed import GraphedDrafter, GraphedVPDrafter
from specdiff.errors import SpecdiffError
from specdiff.methods import REGISTRY, make_proposer
from specdiff.native import Native
from specdiff.target.hf_causal import HFTarget
from specdiff.target.graphed import GraphedTarget
from specdiff.target.static_model import StaticTarget


def make_target(model: torch.nn.Module, engine: str = "hf", native: Native | None = None,
                kernels: str = "auto", numerics: str = "auto") -> HFTarget:
    """The target adapter for `engine`: "hf" (the model's own forward), "static" or "graph";
    `native`: its ancestor masks in C (`native.load()`; None: in Python); `kernels`: the static
    forward's kernels (`DecodeConfig.kernels`); `numerics`: its rounding (`DecodeConfig.numerics`,
    static and graph engines; the hf engine's is fast)."""
    if engine == "graph":
        return GraphedTarget(model, native=native, kernels=kernels, numerics=numerics)
    if engine == "static":
        return StaticTarget(model, native=native, kernels=kernels, numerics=numerics)
    return HFTarget(model, native=native)


class DraftHead(torch.nn.Module):
    """The target's LM head over its first `n` token ids (`DecodeConfig.draft_vocab`): its weight
    and bias are views of the target's (nothing copied), so a drafter's logits are [.., n] and
    their indices are the token ids themselves."""

    def __init__(self, head: torch.nn.Module, n: int):
        super().__init__()
        self.weight = head.weight.detach()[:n]  # a view: the target owns the parameter
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else bias.detach()[:n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def draft_head(target: HFTarget, n: int) -> torch.nn.Module:
    """The LM head a drafter drafts with: the target's, or its first n ids (0: all of them)."""
    check_draft_vocab(n, target.vocab_size)
    return target.lm_head if n in (0, target.vocab_size) else DraftHead(target.lm_head, n)


def build_decoder(model: torch.nn.Module | HFTarget, cfg: DecodeConfig, drafter: DFlashDrafter | None = None,
                  eos_ids: Sequence[int] = (), vp_drafter: DFlashDrafter | None = None) -> SpeculativeDecoder:
    """The decoder for `cfg`, with the C backend (`native.load()`, where it builds) in the target it
    makes, the proposer's tree search and the walk. A target passed in keeps its own backend."""
    cfg.validate()
    info = REGISTRY[cfg.method]
    backend = native.load()
    target = model if isinstance(model, HFTarget) else make_target(model, cfg.engine, backend, cfg.kernels, cfg.numerics)
    head = draft_head(target, cfg.draft_vocab) if info.drafter else None
    if info.drafter:
        if drafter is None:
            raise SpecdiffError(f"method {cfg.method} needs a DFlash drafter (--drafter DIR)")
        check_fits(drafter, target.hidden_size, target.vocab_size, target.num_layers)
        drafter.bind(target.embed_tokens, head)
    if info.vp_drafter:
        if vp_drafter is None:
            raise SpecdiffError(f"method {cfg.method} needs a VP drafter (--vp-drafter DIR)")
        check_fits(vp_drafter, target.hidden_size, target.vocab_size, target.num_layers)
        check_pair(drafter, vp_drafter)
        vp_drafter.bind(target.embed_tokens, head)
    if cfg.engine == "graph" and info.drafter:
        drafter = GraphedDrafter(drafter, kernels=cfg.kernels)
        if info.vp_drafter:
            vp_drafter = GraphedVPDrafter(vp_drafter, cfg.d2sd.branches)
    proposer = make_proposer(cfg, target, drafter if info.drafter else None, vp_drafter if info.vp_drafter else None,
                             native=backend)
    return SpeculativeDecoder(target, proposer, cfg, eos_ids, native=backend)
