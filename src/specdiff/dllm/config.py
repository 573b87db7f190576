"""The settings of one masked-diffusion decode, shared by the baseline and Spiffy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from specdiff.config import check_temperature
from specdiff.errors import SpecdiffError

REMASKING = ("low_confidence", "random", "threshold")


@dataclass
class DLLMConfig:
    gen_length: int = 128  # answer tokens after the prompt, all [MASK] at the start
    block_length: int = 32  # semi-AR block: blocks are decoded left to right
    steps: int = 128  # low_confidence/random: total steps, split evenly over blocks
    # low_confidence (LLaDA: commit the k most probable draws), random (k by keyed uniform
    # scores) or threshold (Fast-dLLM: commit every draw with probability > threshold, at least one)
    remasking: str = "low_confidence"
    threshold: float = 0.9
    temperature: float = 0.0  # 0 = argmax; > 0 = keyed Gumbel-max at logits / temperature
    seed: int = 0  # keys the noise by (seed, block, step): see decoding.py
    mask_id: int = 126336  # LLaDA's [MASK]

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def num_transfer(self, step: int) -> int:
        """Tokens committed at `step` of a block (fixed schedules): the block's masks spread evenly,
        the first (block_length mod steps_per_block) steps take one extra, as in LLaDA."""
        base, extra = divmod(self.block_length, self.steps_per_block)
        return base + (step < extra)

    def validate(self) -> None:
        if self.gen_length < 1 or self.block_length < 1:
            raise SpecdiffError(f"gen_length and block_length must be >= 1, got {self.gen_length}, {self.block_length}")
        if self.gen_length % self.block_length:
            raise SpecdiffError(f"gen_length {self.gen_length} is not a multiple of block_length {self.block_length}")
        if self.remasking not in REMASKING:
            raise SpecdiffError(f"unknown remasking {self.remasking!r}; choose one of {', '.join(REMASKING)}")
        if self.remasking != "threshold":
            if self.steps < 1 or self.steps % self.num_blocks:
                raise SpecdiffError(f"steps {self.steps} must be a positive multiple of the {self.num_blocks} blocks")
            if self.steps_per_block > self.block_length:
                # a step that commits nothing would still cost a forward
                raise SpecdiffError(f"{self.steps_per_block} steps per block exceed block_length {self.block_length}")
        if not 0.0 <= self.threshold <= 1.0:
            raise SpecdiffError(f"threshold must be in [0, 1], got {self.threshold}")
        check_temperature(self.temperature, "temperature")
        if self.mask_id < 0:
            raise SpecdiffError(f"mask_id must be >= 0, got {self.mask_id}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
