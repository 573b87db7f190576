"""Cost-aware DDTree: the tree grows while expected tokens per unit of measured cost rise.

`tree` sizes and builds a round's tree, `cost_model` holds the measured costs (`CostProfile`) and
what is learnt while decoding, `profiler` measures a device's profile (`specdiff profile`), and
`proposer` runs the rounds.
"""

from __future__ import annotations

from pathlib import Path

from specdiff.errors import SpecdiffError
from specdiff.methods.caddtree.cost_model import CostProfile
from specdiff.methods.caddtree.proposer import CaDDTreeProposer

__all__ = ["CaDDTreeProposer", "load_profile", "make_proposer"]


def load_profile(cfg, target, drafter) -> CostProfile:
    """`cfg.caddtree.profile`, else the profile `specdiff profile` saved for this device, models
    and dtype; refused with one line when there is none."""
    from specdiff.methods.caddtree.profiler import default_profile_path

    dtype = str(target.dtype).removeprefix("torch.")
    path = Path(cfg.caddtree.profile) if cfg.caddtree.profile else default_profile_path(target.device, target,
                                                                                       drafter, dtype)
    if not path.is_file():
        raise SpecdiffError(f"caddtree needs a cost profile for this device and models; none at {path} "
                            "(run `specdiff profile` with the same --target/--drafter/--device/--dtype)")
    return CostProfile.load(path)


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> CaDDTreeProposer:
    if profile is None:
        if target is None:
            raise ValueError("caddtree needs a cost profile, or the target to find its saved one")
        profile = load_profile(cfg, target, drafter)
    return CaDDTreeProposer(drafter, profile, cfg.caddtree, cfg.block_size, device_search=cfg.tree_search == "device",
                            native=native)
