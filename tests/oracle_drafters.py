"""Drafters that agree with the target, for the real proposers (dflash, ddtree, caddtree, d2sd,
d2sd-hybrid built by `make_proposer`).

`OracleDrafter` stands in for a `DFlashDrafter` (and for D²SD's VP drafter): every slot's logits
come from the target's own continuation of the committed tokens, plus Gaussian noise, so that
some slots are wrong and the right token sits lower in the marginals. The continuation is
- `aware=True`: the very tokens the target will sample (its keyed draws at their positions), so
  drafts are accepted at any temperature;
- `aware=False`: the target's argmax; the slot logits are the target's own log-probs (q = p plus
  noise), blind to the sampling noise, like a well-trained drafter.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from specdiff import native
from specdiff.config import CaDDTreeOptions, D2SDOptions, DecodeConfig, SamplingConfig
from specdiff.decode import SpeculativeDecoder
from specdiff.methods import make_proposer
from specdiff.sampling import draw
from specdiff.engine import make_target
from specdiff.methods.caddtree.cost_model import CostProfile, fit_monotone_convex
from specdiff.methods.device_search import PrefixSearch, fetch
from specdiff.types import DraftProposal

AR_DRAFTER_METHODS = ("pld", "dflash", "ddtree", "ddtree-pld", "caddtree", "d2sd", "d2sd-hybrid")


class NextLogits:
    """[V] a target's fp32 logits after a prefix, each prefix forwarded once: an oracle's rollout
    mostly repeats the last round's, and the distribution tests decode one short prompt thousands
    of times."""

    def __init__(self, model):
        self.model = model
        self.memo: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, ids: list[int]) -> torch.Tensor:
        key = tuple(ids)
        if key not in self.memo:
            self.memo[key] = self.model(torch.tensor([ids])).logits[0, -1].float()
        return self.memo[key]


class OracleDrafter:
    def __init__(self, model, sampling: SamplingConfig, block_size: int = 8, aware: bool = True,
                 noise: float = 1.0, bonus: float = 4.0, seed: int = 0, device_search: bool = False):
        """device_search: `enable_prefix_search` takes effect, the search being the device's kernel
        (under Triton's interpreter on a CPU), as the graph engine's drafter runs it."""
        self.model, self.sampling, self.aware, self.noise, self.bonus = model, sampling, aware, noise, bonus
        self.device_search, self.search = device_search, None
        self.vocab = model.config.vocab_size
        self.block_size = block_size
        # one tap (the proposers pass features on); a mask id outside the vocabulary: a VP row's
        # drafted prefix ends at its first mask
        self.spec = SimpleNamespace(target_layer_ids=[0], mask_token_id=self.vocab)
        self.gen = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []
        self.next_logits = NextLogits(model)

    def watch(self, proposer) -> None:
        """Let the oracle see the committed tokens each round (a real drafter sees the target's
        hidden states instead)."""
        propose = proposer.propose

        def watched(state):
            self.tokens = list(state.tokens)
            return propose(state)

        proposer.propose = watched

    # -- the DFlashDrafter surface the proposers use ---------------------------------------------

    def reset(self, max_len: int) -> None:
        pass

    def extend_context(self, features: torch.Tensor) -> None:
        pass

    @torch.inference_mode()
    def rollout(self, ids: list[int], n: int) -> torch.Tensor:
        """The target's continuation of `ids` for `n` tokens -> [n, V] slot logits."""
        ids, rows = list(ids), []
        for _ in range(n):
            logits = self.next_logits(ids)
            if self.aware:
                tok = int(draw(logits[None], torch.tensor([len(ids)]), self.sampling)[0])
                row = self.noise * torch.randn(self.vocab, generator=self.gen)
                row[tok] += self.bonus
            else:
                tok = int(logits.argmax())
                row = torch.log_softmax(logits, -1) + self.noise * torch.randn(self.vocab, generator=self.gen)
            rows.append(row)
            ids.append(tok)
        return torch.stack(rows) if rows else torch.zeros(0, self.vocab)

    def draft(self, root: int, num_slots: int) -> torch.Tensor:
        assert self.tokens and self.tokens[-1] == root
        return self.rollout(self.tokens, num_slots)

    def propose(self, root: int, num_slots: int) -> DraftProposal:
        if self.search is None or num_slots > self.search.depth:
            return DraftProposal(self.draft(root, num_slots))
        block = self.draft(root, self.search.depth)  # the whole block, as the graph drafts it
        self.search.run(block, torch.tensor([root]), torch.tensor([num_slots]))
        logits = block[:num_slots]
        resident = self.search.device_tree(num_slots)
        if resident is not None:
            return DraftProposal(logits, device_prefixes=resident)
        return DraftProposal(logits, prefixes=fetch(self.search.out, num_slots, self.search.width))

    def enable_prefix_search(self, width: int) -> int:
        if not self.device_search:
            return 0
        self.search = PrefixSearch(width, self.block_size - 1, torch.device("cpu"))
        return width

    def enable_candidates(self, k: int) -> int:
        return 0

    def draft_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """D²SD's VP rows [K, L+1] = [root, prefix, MASK..] -> [K, L, V]: each row's own continuation
        from the end of its prefix (the slots of the prefix itself are not read)."""
        k, width = rows.shape
        out = torch.zeros(k, width - 1, self.vocab)
        for j, row in enumerate(rows.tolist()):
            prefix = row[1:row.index(self.vocab)] if self.vocab in row else row[1:]
            out[j, len(prefix):] = self.rollout(self.tokens + prefix, width - 1 - len(prefix))
        return out


def rising_profile() -> CostProfile:
    """A cost profile whose rounds cost more per node: caddtree keeps mid-sized trees."""
    nodes = [1, 2, 4, 8, 16, 32, 64, 128]
    return CostProfile(device="test", target="t", drafter="d", dtype="float32", draft_ms=1.0, contexts=[128],
                       nodes=nodes, verify_ms=[fit_monotone_convex(nodes, [1 + 0.05 * n for n in nodes])])


def oracle_decoder(model, method: str, sampling: SamplingConfig, max_new_tokens: int, eos_ids=(), aware: bool = True,
                   budget: int = 12, block_size: int = 8, seed: int = 0, verifier=None,
                   engine: str = "hf", device_search: bool = False) -> SpeculativeDecoder:
    """`method`'s own proposer (make_proposer) over oracle drafters; pld uses the context only.
    device_search: trees searched by the device's kernel (`--tree-search device`)."""
    # searched on the device, caddtree's search is as wide as its cap: `budget` keeps the kernel,
    # run by Triton's interpreter on a CPU, as narrow as ddtree's
    cad = CaDDTreeOptions(max_nodes=budget) if device_search else CaDDTreeOptions()
    cfg = DecodeConfig(method=method, budget=budget, d2sd=D2SDOptions(branches=2), caddtree=cad,
                       max_new_tokens=max_new_tokens, engine=engine, sampling=SamplingConfig(**vars(sampling)),
                       tree_search="device" if device_search else "host")
    drafter = OracleDrafter(model, cfg.sampling, block_size, aware=aware, seed=seed, device_search=device_search)
    vp = OracleDrafter(model, cfg.sampling, block_size, aware=aware, seed=seed + 1, noise=0.5)
    profile = rising_profile() if method == "caddtree" else None
    backend = native.load()  # as build_decoder hands it out
    proposer = make_proposer(cfg, drafter=drafter, vp_drafter=vp, profile=profile, native=backend)
    for d in (drafter, vp):
        d.watch(proposer)
    return SpeculativeDecoder(make_target(model, engine, backend), proposer, cfg, eos_ids, verifier=verifier,
                              native=backend)
