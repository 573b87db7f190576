"""Every setting of a decode run, in dataclasses that are saved with every result.

`SamplingConfig` is how tokens are drawn (shared by AR and every verifier, so both process
logits the same way); `DecodeConfig` is the whole run (method, budget, lengths, sampling).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from specdiff.errors import SpecdiffError

Method = Literal["ar", "pld", "dflash", "ddtree", "caddtree", "d2sd", "d2sd-hybrid"]
Engine = Literal["hf", "static", "graph"]
Horizon = Literal["round", "decode"]
TreeSearch = Literal["host", "device"]
METHODS: tuple[str, ...] = get_args(Method)
ENGINES: tuple[str, ...] = get_args(Engine)
HORIZONS: tuple[str, ...] = get_args(Horizon)
TREE_SEARCHES: tuple[str, ...] = get_args(TreeSearch)


# The smallest temperature the float32 logit processing handles exactly: 1 / T stays finite in
# float32, so (logits - max) / T is 0 at the max and finite or -inf elsewhere (the exact limit).
MIN_TEMPERATURE = 1e-30


def check_temperature(temperature: float, flag: str = "--temperature") -> None:
    """Refuse a temperature that is not 0 (greedy) or a finite value >= MIN_TEMPERATURE."""
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise SpecdiffError(f"{flag} must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, "
                            f"got {temperature}")


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0  # keys the sampling noise by (seed, position): see sampling.py

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        check_temperature(self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise SpecdiffError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SpecdiffError(f"--top-k must be >= 0, got {self.top_k}")


@dataclass
class DecodeConfig:
    method: Method = "ddtree"
    budget: int = 64  # ddtree, d2sd-hybrid: draft nodes per round (root not counted)
    branches: int = 4  # d2sd, d2sd-hybrid: K, the prefixes the VP drafter re-drafts per round
    max_new_tokens: int = 128
    block_size: int | None = None  # drafter block (root + draft slots); None = the drafter's own
    pld_ngram_max: int = 4  # prompt lookup: longest n-gram matched
    pld_ngram_min: int = 1
    pld_max_draft: int = 15
    profile: str | None = None  # caddtree: cost profile JSON (None: the per-device cache)
    caddtree_max_nodes: int = 1024  # caddtree: hard cap on draft nodes per round
    # caddtree: add the per-round host cost the profile misses, measured while decoding (None: when
    # the profile timed the steps apart; a whole-round profile already holds the loop's own work)
    caddtree_measure_overhead: bool | None = None
    # caddtree: what a round's size maximises. "round": the round's own (1 + Phi) / C (the paper's
    # rule); "decode": the decode's expected tokens per ms, sum (1 + Phi) / sum C, by a round's gain
    # 1 + Phi - lam * C at the rate lam it runs at (cost_model.DecodeRate); slower than "round" on
    # an H200 (docs/results.md)
    caddtree_horizon: Horizon = "round"
    stop_at_eos: bool = True
    # target and drafter forwards: "hf" (the model's own forward), "static" (static-cache forward,
    # eager) or "graph" (the static forward as CUDA graphs per tree-size bucket; eager on a CPU)
    engine: Engine = "hf"
    # ddtree, caddtree on the graph engine: where the best-first search runs. "host" (C, or the
    # Python heap without a compiler) or "device" (a Triton kernel inside the drafter's graph; a
    # CUDA GPU with Triton only). On an H200 the host search is the faster (docs/results.md).
    tree_search: TreeSearch = "host"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise SpecdiffError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.engine not in ENGINES:
            raise SpecdiffError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.caddtree_horizon not in HORIZONS:
            raise SpecdiffError(f"--caddtree-horizon must be decode or round, got {self.caddtree_horizon!r}")
        if self.tree_search not in TREE_SEARCHES:
            raise SpecdiffError(f"--tree-search must be host or device, got {self.tree_search!r}")
        if self.caddtree_max_nodes < 1:
            raise SpecdiffError(f"--caddtree-max-nodes must be >= 1, got {self.caddtree_max_nodes}")
        if self.budget < 1:
            raise SpecdiffError(f"--budget must be >= 1, got {self.budget}")
        if self.branches < 1:
            raise SpecdiffError(f"--branches must be >= 1, got {self.branches}")
        if self.max_new_tokens < 1:
            raise SpecdiffError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        self.sampling.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
