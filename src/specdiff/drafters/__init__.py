"""Proposers: what drafts each round's tree (AR, prompt lookup, DFlash/DDTree, D²SD)."""

from specdiff.drafters.base import DecodeState, Proposer
from specdiff.drafters.dflash import DFlashDrafter, load_drafter, save_drafter
from specdiff.drafters.proposers import ARProposer, D2SDProposer, DFlashProposer, PLDProposer, make_proposer

__all__ = [
    "ARProposer",
    "D2SDProposer",
    "DFlashDrafter",
    "DFlashProposer",
    "DecodeState",
    "PLDProposer",
    "Proposer",
    "load_drafter",
    "make_proposer",
    "save_drafter",
]
