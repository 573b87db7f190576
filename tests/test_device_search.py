"""The device's prefix search against the host's best-first heap: the Triton kernel (under
Triton's interpreter when there is no GPU), and the trees DDTree and caddtree build from it."""

from __future__ import annotations


import pytest
import torch

from specdiff import native
from specdiff.methods.caddtree.tree import build_caddtree
from specdiff.methods.ddtree import build_ddtree
from specdiff.methods.device_search import PrefixSearch, candidate_pairs, fetch, reference_top_prefixes
from specdiff.types import DraftProposal, TopPrefixes

triton = pytest.importorskip("triton", reason="the kernel needs Triton (its interpreter runs it on a CPU)")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NATIVE = native.load()  # the host search in C where it builds, as a decoder has it


def paths(p: TopPrefixes) -> list[tuple[int, ...]]:
    """Each node's token path from the root, checking that parents come first."""
    out: list[tuple[int, ...]] = []
    for k, (parent, token) in enumerate(zip(p.parents, p.tokens)):
        assert 0 <= parent <= k
        out.append((out[parent - 1] if parent else ()) + (token,))
    return out


def test_candidate_pairs_hold_every_pair_that_can_enter_the_beam():
    pairs = candidate_pairs(16)
    got = {(i, j) for i, j in pairs.T.tolist() if i >= 0}
    assert got == {(i, j) for i in range(16) for j in range(16) if (i + 1) * (j + 1) <= 16}
    assert pairs.shape[1] & (pairs.shape[1] - 1) == 0


@pytest.mark.parametrize("depth,vocab,width,scale", [
    (15, 100, 32, 3.0),  # peaked: deep chains
    (6, 300, 16, 0.5),   # flat: wide and shallow
    (4, 5, 16, 2.0),     # a vocabulary narrower than the search
    (2, 3, 32, 1.0),     # fewer possible prefixes (12) than the width
    (8, 200, 24, 2.0),   # a width that is no power of 2 (caddtree's)
])
@pytest.mark.parametrize("seed", range(2))
def test_kernel_finds_the_heaps_top_prefixes(depth, vocab, width, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(depth, vocab, generator=g) * scale).to(DEVICE)
    got = fetch(PrefixSearch(width, depth, DEVICE).run(logits), depth, width)
    ref = reference_top_prefixes(logits.cpu(), width)
    assert got.width == ref.width == min(width, sum(vocab ** d for d in range(1, depth + 1)))
    assert set(paths(got)) == set(paths(ref))  # the same top prefixes ...
    assert got.depths == [len(p) for p in paths(got)]
    assert got.logp == pytest.approx(ref.logp, abs=1e-5)  # ... in best-first order
    assert got.phi == pytest.approx(ref.phi, abs=1e-5)


def test_a_child_with_log_prob_zero_still_follows_its_parent():
    """A one-hot slot gives its token log-prob 0 (exactly): the child ties its parent's score."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    logits[1, 7] = 1e4
    got = fetch(PrefixSearch(16, 4, DEVICE).run(logits.to(DEVICE)), 4, 16)
    assert set(paths(got)) == set(paths(reference_top_prefixes(logits, 16)))


from test_native_search import bucket_profile  # noqa: E402  (after the Triton skip above)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("steepness", [0.002, 0.02, 0.3])
@pytest.mark.parametrize("width", [32, 64, 128])
def test_trees_from_the_prefixes_equal_the_host_search(seed, steepness, width):
    """DDTree's first B and caddtree's choice read off the prefixes equal the host's trees (the
    reference stands in for the kernel, held to it above; a width the decision outgrows makes
    caddtree search on the host)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * (0.5 + seed)
    prefixes = reference_top_prefixes(logits, width)
    with_pre, host = DraftProposal(logits, prefixes=prefixes), DraftProposal(logits)
    for budget in (16, width):
        a, b = build_ddtree(0, with_pre, budget, 15, native=NATIVE), build_ddtree(0, host, budget, 15, native=NATIVE)
        assert set(zip(a.parents.tolist(), a.tokens.tolist())) == set(zip(b.parents.tolist(), b.tokens.tolist()))
    prof = bucket_profile(steepness)
    a = build_caddtree(0, with_pre, prof, context=128, max_depth=15, max_nodes=255, native=NATIVE)
    b = build_caddtree(0, host, prof, context=128, max_depth=15, max_nodes=255, native=NATIVE)
    assert a.num_nodes == b.num_nodes
    assert sorted(a.tokens.tolist()) == sorted(b.tokens.tolist())


def test_caddtree_leaves_prefixes_of_another_depth_alone():
    logits = torch.randn(15, 100, generator=torch.Generator().manual_seed(1)) * 3
    stale = reference_top_prefixes(logits[:10], 64)  # searched over 10 slots, asked for 15
    prof = bucket_profile(0.02)
    a = build_caddtree(0, DraftProposal(logits, prefixes=stale), prof, context=128, max_depth=15, max_nodes=255,
                       native=NATIVE)
    b = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=255, native=NATIVE)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)


@pytest.mark.parametrize("width", [16, 24])
def test_the_search_leaves_its_prefixes_as_a_resident_tree(width):
    """The kernel also writes its prefixes as tree columns under the block's root (`table`); the
    first n + 1 columns of that resident tree are the tree `fetch` reads, without a read; a
    vocabulary narrower than the width (columns with no prefix) gives no resident tree."""
    g = torch.Generator().manual_seed(width)
    logits = (torch.randn(7, 60, generator=g) * 2).to(DEVICE)
    search = PrefixSearch(width, 7, DEVICE)
    search.run(logits, torch.tensor([42], device=DEVICE))
    resident = search.device_tree()
    assert resident.resident and resident.depth_bound == 7 and resident.num_nodes == width + 1
    fetched = fetch(search.out, 7, width)
    for n in (1, 5, width):
        a, b = resident.first(n + 1).host(), fetched.tree(42, n)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
        assert torch.equal(a.depths, b.depths)
        tree = build_ddtree(42, DraftProposal(logits, device_prefixes=resident), n, 7)
        assert tree.resident and torch.equal(tree.host().tokens, b.tokens)
    # a round that drafts fewer slots than were searched builds its tree on the host
    assert not build_ddtree(42, DraftProposal(logits[:5], device_prefixes=resident), 4, 5).resident
    narrow = PrefixSearch(width, 3, DEVICE)
    narrow.run(logits[:3, :10], torch.tensor([42], device=DEVICE))
    assert narrow.device_tree() is None


def test_a_depth_limit_searches_the_first_slots_only():
    """A round near a decode's end drafts fewer slots than the graph searches: with a depth limit
    the kernel's top prefixes are the host's over those slots, and the resident tree keeps it."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(7, 60, generator=g) * 2).to(DEVICE)
    search = PrefixSearch(16, 7, DEVICE)
    for limit in (1, 3, 7):
        search.run(logits, torch.tensor([42], device=DEVICE), torch.tensor([limit], device=DEVICE))
        got = fetch(search.out, limit, 16)
        ref = reference_top_prefixes(logits[:limit].cpu(), 16)
        assert set(paths(got)) == set(paths(ref)) and max(got.depths) <= limit
        tree = build_ddtree(42, DraftProposal(logits[:limit], device_prefixes=search.device_tree(limit)), 16, limit)
        assert tree.resident and torch.equal(tree.host().parents, got.tree(42, 16).parents)
