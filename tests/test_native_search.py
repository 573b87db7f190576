"""The C best-first search against the Python heap (the reference path): the same pops, bit for
bit, and the same DDTree and caddtree trees."""

from __future__ import annotations

import pytest
import torch

from specdiff import native
from specdiff.methods.caddtree.cost_model import CostProfile, fit_monotone_convex
from specdiff.methods.ddtree import best_first_prefixes, build_ddtree, top_k_tensors
from specdiff.types import DraftProposal

BUCKETS = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256]


def bucket_profile(steepness: float) -> CostProfile:
    ys = [8 + steepness * n + 1e-4 * n * n for n in BUCKETS]
    return CostProfile(device="test", target="t", drafter="d", dtype="float32", draft_ms=2.0, contexts=[128],
                       nodes=BUCKETS, verify_ms=[fit_monotone_convex(BUCKETS, ys)], buckets=BUCKETS)

NATIVE = native.load()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="no C compiler: the Python heap runs instead")


@pytest.mark.parametrize("depth,vocab,k,width,scale", [
    (15, 200, 200, 300, 3.0),  # every candidate: exact throughout
    (15, 200, 16, 300, 0.3),   # flat, few candidates: a pop uses a depth's last one
    (4, 3, 3, 200, 1.0),       # fewer possible prefixes (120) than the width
    (1, 50, 50, 10, 1.0),
])
@pytest.mark.parametrize("seed", range(3))
def test_same_pops_as_the_python_heap(depth, vocab, k, width, scale, seed):
    logits = torch.randn(depth, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    top_logp, top_ids = top_k_tensors(DraftProposal(logits), k, depth)
    got = NATIVE.top_prefixes(top_logp, top_ids, width, complete=k >= vocab)
    ref = best_first_prefixes(top_logp, width)
    exact = next((i + 1 for i, (_, r, _) in enumerate(ref) if r == k - 1 and k < vocab), len(ref))
    assert got.width == min(exact, width)
    assert got.searched == (width if exact == len(ref) else exact)
    ref = ref[: got.width]
    assert got.parents == [p for p, _, _ in ref]
    assert got.logp.tolist() == [s for _, _, s in ref]  # the same doubles: the same arithmetic
    ids = top_ids.tolist()
    assert got.tokens == [ids[d - 1][r] for d, (_, r, _) in zip(got.depths, ref)]
    assert got.depths == [1 if p == 0 else got.depths[p - 1] + 1 for p in got.parents]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [8, 32, 100])
def test_ddtree_is_the_same_tree_with_either_search(seed, budget):
    """The C pops (one fetch of `budget` candidates) give the Python heap's tree (which fetches
    FIRST_K candidates first, then `budget` if they ran out)."""
    logits = torch.randn(15, 300, generator=torch.Generator().manual_seed(seed)) * (0.3 + seed)
    fast = build_ddtree(0, DraftProposal(logits), budget, 15, native=NATIVE)
    slow = build_ddtree(0, DraftProposal(logits), budget, 15, native=None)
    for a, b in ((fast.tokens, slow.tokens), (fast.parents, slow.parents), (fast.depths, slow.depths)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k,scale", [(8, 0.3), (16, 1.0), (200, 3.0)])
@pytest.mark.parametrize("lam", [0.0, 0.2, 2.0])
def test_caddtree_search_in_c_decides_as_grow(seed, k, scale, lam):
    """The C search's caddtree decision equals `_grow`'s, also when a pop uses a depth's last
    fetched candidate before the decision is settled (both then ask for all candidates)."""
    from specdiff.methods.caddtree.tree import _grow, _step_costs

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * scale
    prof = bucket_profile([0.002, 0.02, 0.3][seed % 3])
    costs = _step_costs(prof, 128 + 8 * seed, 255)
    fixed = prof.draft_ms + 0.1 * seed
    top_logp, top_ids = top_k_tensors(DraftProposal(logits), k, 15)
    complete = k >= 200
    _, n = NATIVE.caddtree_search(top_logp, top_ids, complete, costs, fixed, lam)
    ref = _grow(top_logp, costs.sizes, [fixed + c for c in costs.steps], fixed + costs.root_step,
                last_rank=None if complete else k - 1, lam=lam)
    assert (n is None) == (ref is None)
    if ref is not None:
        assert n == len(ref)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("width", [24, 64, 255])
@pytest.mark.parametrize("lam", [0.0, 0.2, 2.0])
def test_choice_read_off_the_prefixes_decides_as_grow(seed, width, lam):
    """`_choose` (caddtree's decision from a finished search, as the device search hands it over)
    equals `_grow`'s over the whole stream wherever the prefixes settle it, and asks for a wider
    search (None) when sizes past them could still win."""
    from specdiff.methods.caddtree.tree import _choose, _grow, _step_costs

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * (1 + seed % 3)
    prof = bucket_profile([0.002, 0.02, 0.3][seed % 3])
    costs = _step_costs(prof, 128, 255)
    fixed = prof.draft_ms
    top_logp, top_ids = top_k_tensors(DraftProposal(logits), 200, 15)
    prefixes = NATIVE.top_prefixes(top_logp, top_ids, width, complete=True)
    n = _choose(prefixes.phi, prefixes.logp, prefixes.searched, costs.sizes, costs.steps, fixed, costs.root_step, lam)
    ref = _grow(top_logp, costs.sizes, [fixed + c for c in costs.steps], fixed + costs.root_step, lam=lam)
    # None: the delta bound cannot rule out a size past the search (the caller searches wider)
    assert n is None or n == len(ref)
    if len(ref) > width:
        assert n is None
    if width == 255:  # every compared size searched
        assert n == len(ref)
