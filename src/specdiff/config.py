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

from specdiff.methods import METHODS, Method  # noqa: F401  (the registry owns the names)

Engine = Literal["hf", "static", "graph"]
Horizon = Literal["round", "decode"]
TreeSearch = Literal["auto", "host", "device"]
Kernels = Literal["auto", "triton", "glued", "torch"]
Numerics = Literal["auto", "exact", "fast"]
ENGINES: tuple[str, ...] = get_args(Engine)
HORIZONS: tuple[str, ...] = get_args(Horizon)
TREE_SEARCHES: tuple[str, ...] = get_args(TreeSearch)
KERNELS: tuple[str, ...] = get_args(Kernels)
NUMERICS: tuple[str, ...] = get_args(Numerics)


def option(default, help: str, flag: str | None = None, **kw):
    """A setting with its default and its one-line help, from which the CLI flag is made (`flag`:
    the flag's name where it is not the field's; `cli=False`: a setting with no flag)."""
    return field(default=default, metadata={"help": help, "flag": flag, **kw})


# The smallest temperature the float32 logit processing handles exactly: 1 / T stays finite in
# float32, so (logits - max) / T is 0 at the max and finite or -inf elsewhere (the exact limit).
MIN_TEMPERATURE = 1e-30


def check_draft_vocab(n: int, vocab: int | None = None) -> None:
    """Refuse a `--draft-vocab` that is negative, or (vocab given) past the target's vocabulary."""
    if n < 0:
        raise SpecdiffError(f"--draft-vocab must be 0 (every token id) or a count of ids, got {n}")
    if vocab is not None and n > vocab:
        raise SpecdiffError(f"--draft-vocab {n} exceeds the target's vocabulary ({vocab} ids)")


def check_temperature(temperature: float, flag: str = "--temperature") -> None:
    """Refuse a temperature that is not 0 (greedy) or a finite value >= MIN_TEMPERATURE."""
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise SpecdiffError(f"{flag} must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, "
                            f"got {temperature}")


@dataclass
class SamplingConfig:
    temperature: float = option(0.0, "0 = greedy; else finite and >= 1e-30")
    top_p: float = option(1.0, "nucleus filter: keep the most likely tokens up to this mass (1 = off)")
    top_k: int = option(0, "keep the k most likely tokens (0 = off)")
    seed: int = option(0, "keys the sampling noise by (seed, position): the same seed, the same tokens")

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
class PLDOptions:
    """Prompt lookup (methods/pld.py)."""

    ngram_max: int = option(4, "pld: the longest n-gram matched")
    ngram_min: int = option(1, "pld: the shortest n-gram matched")
    max_draft: int = option(15, "pld: draft tokens per round at most")

    def validate(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise SpecdiffError(f"--pld-ngram-min must be >= 1 and <= --pld-ngram-max, got {self.ngram_min} "
                                f"and {self.ngram_max}")
        if self.max_draft < 1:
            raise SpecdiffError(f"--pld-max-draft must be >= 1, got {self.max_draft}")


@dataclass
class CaDDTreeOptions:
    """Cost-aware DDTree (methods/caddtree)."""

    profile: str | None = option(None, "caddtree: cost profile JSON (default: the one `specdiff profile` saved "
                                       "for this device and models)", flag="--profile")
    max_nodes: int = option(1024, "caddtree: draft nodes per round at most (and no more than its profile measured)")
    # what a round's size maximises. "round": the round's own (1 + Phi) / C (the paper's rule);
    # "decode": the decode's expected tokens per ms, sum (1 + Phi) / sum C, by a round's gain
    # 1 + Phi - lam * C at the rate lam it runs at (cost_model.DecodeRate); measured slower than
    # "round" (docs/methods/caddtree.md)
    horizon: Horizon = option("round", "caddtree: size each round for its own tokens per ms (round) or for the "
                                       "decode's (decode)", choices=HORIZONS)
    # add the per-round host cost the profile misses, measured while decoding (None: when the
    # profile timed the steps apart; a whole-round profile already holds the loop's own work)
    measure_overhead: bool | None = option(None, "", cli=False)

    def validate(self) -> None:
        if self.horizon not in HORIZONS:
            raise SpecdiffError(f"--caddtree-horizon must be decode or round, got {self.horizon!r}")
        if self.max_nodes < 1:
            raise SpecdiffError(f"--caddtree-max-nodes must be >= 1, got {self.max_nodes}")


@dataclass
class D2SDOptions:
    """D²SD and its hybrid with DDTree (methods/d2sd.py)."""

    branches: int = option(4, "d2sd, d2sd-hybrid: prefixes the VP drafter re-drafts per round (K)",
                           flag="--branches")

    def validate(self) -> None:
        if self.branches < 1:
            raise SpecdiffError(f"--branches must be >= 1, got {self.branches}")


@dataclass
class DecodeConfig:
    """The whole decode: the method and what every method shares, then each method's own options."""

    method: Method = option("ddtree", "the decoding method", choices=METHODS)
    # the one meaning of a budget: draft nodes per round, root not counted (ddtree, d2sd-hybrid;
    # caddtree chooses its own size, capped by caddtree.max_nodes)
    budget: int = option(64, "ddtree, d2sd-hybrid: draft nodes per round")
    max_new_tokens: int = option(128, "tokens to generate at most")
    # drafter block (root + draft slots); None = the drafter's own
    block_size: int | None = option(None, "", cli=False)
    stop_at_eos: bool = option(True, "", cli=False)  # the CLI's --ignore-eos turns it off
    # target and drafter forwards: "hf" (the model's own forward), "static" (static-cache forward,
    # eager) or "graph" (the static forward as CUDA graphs per tree-size bucket; eager on a CPU)
    engine: Engine = option("hf", "forwards: the model's own (hf), the static-cache path (static), or that "
                                  "path replayed as CUDA graphs per tree-size bucket (graph; eager on a CPU)",
                            choices=ENGINES)
    # static and graph engines: the target forward as fused Triton kernels with fused weights
    # (`target.fused`), or as the HF modules' own PyTorch ops; auto = triton on a CUDA GPU. glued:
    # triton, with forwards of up to 16 rows (AR, a DFlash block, small trees) through GEMMs that
    # hold the layer's norms, SiLU-multiply and residual adds (`kernels.decode_gemm`)
    kernels: Kernels = option("auto", "static, graph: the target forward as fused Triton kernels (triton), those "
                                      "with the norms, SiLU and residual adds inside the GEMMs of forwards of up "
                                      "to 16 rows (glued), as PyTorch ops (torch), or triton on a CUDA GPU (auto)",
                              choices=KERNELS)
    # exact: the target computes each row alone (`specdiff.invariant`), so a token's logits are
    # bitwise the same verified alone or in any tree and outputs equal AR's in any dtype (Triton
    # kernels with the graph engine on a GPU; PyTorch ops on the static engine elsewhere).
    # auto: exact where it costs about what fast does (`target.fused.auto_numerics`), else fast
    numerics: Numerics = option("auto", "static, graph: the target's rounding: bitwise the same for a token alone or "
                                        "in any tree (exact), whatever each kernel gives (fast), or exact where it "
                                        "costs about what fast does: the graph engine's Triton kernels with GEMM "
                                        "weights that fit in the GPU's L2 cache (auto)",
                                choices=NUMERICS)
    # ddtree, caddtree on the graph engine: where the best-first search runs. "host" (C, or the
    # Python heap without a compiler) or "device" (a Triton kernel inside the drafter's graph; a
    # CUDA GPU with Triton only; the tree then stays on the device: one host read a round, and
    # caddtree sizes each tree from the round before's search). auto: device for ddtree up to
    # `methods.ddtree.DEVICE_BUDGET` nodes, where it measured faster, else host
    tree_search: TreeSearch = option("auto", "ddtree/caddtree with --engine graph: best-first search on the host "
                                             "(C), on the device inside the drafter's graph (Triton), or on the "
                                             "device for ddtree budgets up to 64 and on the host otherwise (auto)",
                                     choices=TREE_SEARCHES)
    # ar: each step's forward is launched on the step before's draw while that draw is still on
    # the device, and the draw is read after: the host's work of a step (the read, the stop
    # checks, the next launch) then runs while the device computes, instead of between forwards.
    # A drafted round (dflash, ddtree on the graph engine) queues the next round's draft from the
    # accepted path the device finds, before its own read, and is handed out once the next
    # round's forward is queued too. The same forwards, drafts and draws, so the same tokens;
    # off: one step, one round at a time
    overlap: bool = option(True, "ar: launch each forward on the last drawn token before reading that token; "
                                 "drafted methods: queue the next draft before reading the round, and the next "
                                 "round before handing out the last, so the host's work runs while the device "
                                 "computes")
    # methods with a drafter: its LM head covers the first N token ids only (0: every id). A
    # byte-level BPE vocabulary numbers its tokens in merge order, roughly by frequency, so the
    # first ids hold most tokens a text uses, and the head (the target's, 1.24 GB at Qwen3-8B)
    # reads N / V of its weight each draft. The target still verifies every draft: the output is
    # unchanged, only a token past N can no longer be drafted
    draft_vocab: int = option(0, "methods with a drafter: the drafter's LM head covers the first N token ids only, "
                                 "which hold most of a BPE vocabulary's frequent tokens, and reads that share of its "
                                 "weight (0: every id); outputs are unchanged")
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"flag_prefix": ""})
    pld: PLDOptions = field(default_factory=PLDOptions)
    caddtree: CaDDTreeOptions = field(default_factory=CaDDTreeOptions)
    d2sd: D2SDOptions = field(default_factory=D2SDOptions)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise SpecdiffError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.engine not in ENGINES:
            raise SpecdiffError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.kernels not in KERNELS:
            raise SpecdiffError(f"unknown kernels {self.kernels!r}; choose one of {', '.join(KERNELS)}")
        if self.numerics not in NUMERICS:
            raise SpecdiffError(f"unknown numerics {self.numerics!r}; choose one of {', '.join(NUMERICS)}")
        if self.numerics == "exact" and self.engine == "hf":
            raise SpecdiffError("--numerics exact runs on the static and graph engines, not hf")
        if self.tree_search not in TREE_SEARCHES:
            raise SpecdiffError(f"--tree-search must be auto, host or device, got {self.tree_search!r}")
        if self.budget < 1:
            raise SpecdiffError(f"--budget must be >= 1, got {self.budget}")
        if self.max_new_tokens < 1:
            raise SpecdiffError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        check_draft_vocab(self.draft_vocab)
        for options in (self.sampling, self.pld, self.caddtree, self.d2sd):
            options.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
