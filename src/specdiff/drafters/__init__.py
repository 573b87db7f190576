"""Drafter models: the DFlash block-diffusion drafter (eager, in the public folder format) and its
graph-engine rounds. The methods that draft with them live in `specdiff.methods`."""

from specdiff.drafters.dflash import DFlashDrafter, load_drafter, save_drafter

__all__ = ["DFlashDrafter", "load_drafter", "save_drafter"]
