"""Tree builders: DDTree returns exactly the top-B prefixes; trees are well formed."""

import itertools
import math

import numpy as np
import pytest
import torch

from specdiff import native
from specdiff.config import SamplingConfig
from specdiff.methods.ddtree import best_first_prefixes, build_ddtree
from specdiff.methods.dflash import build_chain
from specdiff.types import DraftProposal, DraftTree
from specdiff.verify import verify_walk

NATIVE = native.load()  # the C search and walk where they build, as a decoder has them


def brute_force_top(logp: torch.Tensor, budget: int) -> list[tuple[int, ...]]:
    """All prefixes of all depths over the full vocabulary, sorted by log-probability."""
    depth, vocab = logp.shape
    scored = []
    for d in range(1, depth + 1):
        for seq in itertools.product(range(vocab), repeat=d):
            scored.append((sum(float(logp[i, t]) for i, t in enumerate(seq)), seq))
    scored.sort(key=lambda x: -x[0])
    return [seq for _, seq in scored[:budget]]


def tree_paths(tree: DraftTree) -> list[tuple[int, ...]]:
    toks, parents = tree.tokens.tolist(), tree.parents.tolist()
    paths = [()]
    for i in range(1, tree.num_nodes):
        paths.append(paths[parents[i]] + (toks[i],))
    return paths[1:]


@pytest.mark.parametrize("depth,vocab,budget", [(1, 5, 3), (3, 4, 10), (4, 3, 25), (3, 6, 60), (5, 2, 31), (2, 7, 49)])
@pytest.mark.parametrize("seed", range(4))
def test_ddtree_is_top_b_prefixes(depth, vocab, budget, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(depth, vocab, generator=g) * 2.0  # continuous: no ties
    tree = build_ddtree(root=99, proposal=DraftProposal(logits), budget=budget, max_depth=depth, native=NATIVE)
    logp = torch.log_softmax(logits, dim=-1)
    expected = brute_force_top(logp, budget)
    got = tree_paths(tree)
    assert len(got) == min(budget, len(expected))
    assert set(got) == set(expected)
    # pop order is non-increasing probability
    scores = [sum(float(logp[i, t]) for i, t in enumerate(p)) for p in got]
    assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:]))


@pytest.mark.parametrize("seed", range(5))
def test_ddtree_structure(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 50, generator=g) * 3
    tree = build_ddtree(root=7, proposal=DraftProposal(logits), budget=128, max_depth=15, native=NATIVE)
    parents, depths = tree.parents.tolist(), tree.depths.tolist()
    assert tree.num_nodes == 129 and tree.tokens[0] == 7 and parents[0] == -1
    paths = tree_paths(tree)
    assert len(set(paths)) == len(paths)  # no duplicate prefixes
    pathset = set(paths)
    for i in range(1, tree.num_nodes):
        assert 0 <= parents[i] < i  # parents before children
        assert depths[i] == depths[parents[i]] + 1
        assert paths[i - 1][:-1] in pathset or len(paths[i - 1]) == 1  # prefix-closed


def test_ddtree_respects_max_depth():
    logits = torch.zeros(10, 3)
    logits[:, 0] = 10.0  # a clear chain that would go 10 deep
    tree = build_ddtree(root=0, proposal=DraftProposal(logits), budget=64, max_depth=4, native=NATIVE)
    assert tree.max_depth <= 4


def test_best_first_matches_sorted_product_for_one_depth():
    logp = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.5, -1.0]]), -1)
    out = best_first_prefixes(logp, 3)
    assert [r for _, r, _ in out] == [0, 1, 2]
    assert all(p == 0 for p, _, _ in out)
    assert math.isclose(out[0][2], float(logp[0, 0]), rel_tol=1e-6)


def test_chain_is_argmax():
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    tree = build_chain(4, DraftProposal(logits), max_depth=2)
    assert tree.tokens.tolist() == [4, 1, 0]
    assert tree.parents.tolist() == [-1, 0, 1]


def test_ancestor_mask():
    tree = DraftTree.from_lists([9, 1, 2, 3, 4], [-1, 0, 1, 0, 3])
    m = tree.ancestor_mask().int().tolist()
    assert m == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 1, 1],
    ]
    assert tree.depths.tolist() == [0, 1, 2, 1, 2]
    with pytest.raises(ValueError):
        DraftTree.from_lists([1, 2], [-1, 1])


@pytest.mark.parametrize("n", [2, 7, 8, 9, 48, 128, 129, 300])
def test_ancestor_mask_paths_agree_with_walking_up(n):
    """Every way of building the mask (C; in Python an int per row up to BITSET_NODES nodes, the
    per-depth loop past it; C into a padded graph bucket) equals walking each node's parents up to
    the root, at byte edges too."""
    g = torch.Generator().manual_seed(n)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    tree = DraftTree.from_lists(list(range(n)), parents)
    ref = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            ref[i, j] = True
            j = parents[j]
    assert torch.equal(tree.ancestor_mask(), ref)
    if NATIVE is not None:  # also a bucket of n + 5 rows, left dirty by a bigger tree before
        assert torch.equal(NATIVE.tree_mask(tree), ref)
        bucket = np.ones((n + 5, n + 5), dtype=bool)
        NATIVE.ancestor_mask(np.array(parents, dtype=np.int64), bucket)
        padded = torch.eye(n + 5, dtype=torch.bool)
        padded[:n, :n] = ref
        assert torch.equal(torch.from_numpy(bucket), padded)


@pytest.mark.parametrize("seed", range(20))
def test_walk_in_c_equals_the_python_walk(seed):
    """The C walk accepts the same nodes as the children-table walk, on random trees whose
    siblings repeat tokens (the first child holding a token wins) and random draws."""
    if NATIVE is None:
        pytest.skip("no C compiler")
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 60, (1,), generator=g))
    parents = [-1] + [int(torch.randint(max(0, i - 4), i, (1,), generator=g)) for i in range(1, n)]
    tree = DraftTree.from_lists(torch.randint(0, 3, (n,), generator=g).tolist(), parents)
    logits = torch.randn(n, 3, generator=g)
    fast = verify_walk(tree, logits, 10, SamplingConfig(), native=NATIVE)
    slow = verify_walk(tree, logits, 10, SamplingConfig(), native=None)
    assert fast == slow and len(fast.tokens) == len(fast.accepted)


@pytest.mark.parametrize("seed", range(3))
def test_ddtree_refetches_when_candidates_run_out(seed):
    """Near-flat marginals need more siblings per depth than the first fetch (FIRST_K): the tree
    must still be the exact top-B."""
    from specdiff.methods.ddtree import FIRST_K

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 60, generator=g) * 0.1
    logits[1] -= 3.0  # depth 2 is unlikely: the best prefixes are mostly depth-1 siblings
    budget = 50
    tree = build_ddtree(root=0, proposal=DraftProposal(logits), budget=budget, max_depth=2, native=NATIVE)
    expected = brute_force_top(torch.log_softmax(logits, dim=-1), budget)
    got = tree_paths(tree)
    assert set(got) == set(expected)
    assert sum(1 for p in got if len(p) == 1) > FIRST_K  # the case the refetch exists for


def test_best_first_pops_are_named():
    from specdiff.methods.ddtree import Pop, iter_best_first

    logp = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.0], [2.0, 1.0, 0.5]]), dim=-1).sort(dim=-1, descending=True).values
    first, second = list(iter_best_first(logp))[:2]
    assert isinstance(first, Pop) and (first.parent, first.rank) == (0, 0)
    assert first.score == pytest.approx(float(logp[0, 0])) and second.score <= first.score
