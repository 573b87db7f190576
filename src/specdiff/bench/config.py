"""The bench's settings (`BenchConfig`), saved with its results: what it sweeps (methods,
budgets, temperatures, prompt sets) and the decode settings every run shares. No torch here, so
the CLI reads its defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field

from specdiff.config import CaDDTreeOptions, D2SDOptions, DecodeConfig, SamplingConfig


@dataclass
class BenchConfig:
    methods: list[str] = field(default_factory=lambda: ["ar", "dflash", "ddtree"])
    budgets: list[int] = field(default_factory=lambda: [16, 64, 256])
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    prompt_files: list[str] = field(default_factory=list)
    limit: int = 32
    max_new_tokens: int = DecodeConfig.max_new_tokens
    warmup: int = 2
    seed: int = 0
    profile: str | None = None  # caddtree's cost profile (None: the per-device cache)
    device: str = "cpu"
    dtype: str = "float32"
    engine: str = DecodeConfig.engine
    kernels: str = DecodeConfig.kernels
    numerics: str = DecodeConfig.numerics
    tree_search: str = DecodeConfig.tree_search  # ddtree/caddtree on the graph engine: see DecodeConfig.tree_search
    overlap: bool = DecodeConfig.overlap  # ar's baseline: see DecodeConfig.overlap
    draft_vocab: int = DecodeConfig.draft_vocab  # the drafters' head over the first N ids (0: all)
    # caddtree's horizons (CaDDTreeOptions.horizon): the first runs as "caddtree", each other
    # one beside it as "caddtree/<horizon>"
    caddtree_horizons: list[str] = field(default_factory=lambda: ["round"])
    target: str = ""
    drafter: str = ""
    branches: int = D2SDOptions.branches  # d2sd, d2sd-hybrid: K
    vp_drafter: str = ""  # d2sd, d2sd-hybrid: the VP drafter folder

    def decode_config(self, label: str, method: str, budget: int, temperature: float) -> DecodeConfig:
        """The decode of one variant (`variants`) at one temperature."""
        horizon = label.partition("/")[2] or self.caddtree_horizons[0]
        return DecodeConfig(method=method, budget=budget, max_new_tokens=self.max_new_tokens, engine=self.engine,
                            kernels=self.kernels, numerics=self.numerics, tree_search=self.tree_search, overlap=self.overlap,
                            draft_vocab=self.draft_vocab,
                            sampling=SamplingConfig(temperature=temperature, seed=self.seed),
                            caddtree=CaDDTreeOptions(profile=self.profile, horizon=horizon),
                            d2sd=D2SDOptions(branches=self.branches))
