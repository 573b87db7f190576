"""Cost-aware trees: the fit is monotone convex, the stopping rule finds the best budget, the tree
is DDTree's at that budget, and decoding with it stays exact."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from specdiff import native
from specdiff.config import CaDDTreeOptions, DecodeConfig
from specdiff.engine import build_decoder
from specdiff.models.tiny import tiny_drafter
from specdiff.target import HFTarget
from specdiff.methods.caddtree.tree import CANDIDATES, build_caddtree
from specdiff.methods.caddtree.cost_model import CostProfile, DecodeRate, RoundOverhead, fit_monotone_convex, fit_verify_row
from specdiff.methods.ddtree import build_ddtree, iter_best_first
from specdiff.types import DraftProposal

NODES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
NATIVE = native.load()  # the C search where it builds, as a decoder has it


def profile(verify_rows, draft_ms=2.0, contexts=(128,)):
    return CostProfile(device="test", target="t", drafter="d", dtype="float32", draft_ms=draft_ms,
                       contexts=list(contexts), nodes=NODES, verify_ms=verify_rows)


@pytest.mark.parametrize("seed", range(5))
def test_fit_is_monotone_and_convex(seed):
    rng = np.random.default_rng(seed)
    y = [5 + 0.01 * n + 1e-5 * n * n + rng.normal(0, 0.5) for n in NODES]
    f = np.array(fit_monotone_convex(NODES, y))
    slopes = np.diff(f) / np.diff(NODES)
    assert (slopes >= -1e-12).all() and (np.diff(slopes) >= -1e-12).all()
    clean = [3 + 0.02 * n + 1e-4 * n * n for n in NODES]  # already monotone convex: unchanged
    np.testing.assert_allclose(fit_monotone_convex(NODES, clean), clean, rtol=1e-9)


def test_fit_keeps_the_root_alone_step():
    """The 1-node step is kept as measured below a convex fit of the tree steps (2 nodes up)."""
    y = [0.8, 1.1, 1.35, 1.37, 1.44, 1.52, 1.9, 2.3, 3.0, 4.4, 6.0]
    f = fit_verify_row(NODES, y)
    assert f[0] == 0.8
    np.testing.assert_allclose(f[1:], fit_monotone_convex(NODES[1:], y[1:]))
    assert fit_monotone_convex(NODES, y)[0] > 1.0  # what a fit through all of them would say


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("jump", [0.5, 3.0, 30.0])
def test_root_alone_is_weighed_after_the_peak(seed, jump):
    """With a cheap root-alone step (a jump from 1 to 2 nodes), the tree is still the global best
    over every size, root alone included, by brute force."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * 3
    ys = [8.0] + [8 + jump + 0.02 * n + 1e-4 * n * n for n in NODES[1:]]
    prof = profile([fit_verify_row(NODES, ys)])
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=600, native=NATIVE)
    full = build_ddtree(0, DraftProposal(logits), 600, 15, native=NATIVE)
    scores = prefix_scores(full, logits)
    thetas = [theta(scores[1:], k, prof, 128) for k in range(0, 601)]
    assert thetas[tree.num_nodes - 1] == pytest.approx(max(thetas), rel=1e-6)


def test_verify_interpolates():
    p = profile([[10.0 + n for n in NODES], [20.0 + 2 * n for n in NODES]], contexts=(0, 1000))
    assert p.verify(4, 0) == pytest.approx(14.0)
    assert p.verify(4, 500) == pytest.approx(0.5 * 14 + 0.5 * 28)
    assert p.verify(3, 0) == pytest.approx(13.0)
    assert p.verify(2048, 0) == pytest.approx(10 + 2048)  # linear beyond the grid
    assert p.verify(4, 1500) == pytest.approx(28 + 0.5 * (28 - 14))  # linear past the last context
    sizes = tuple(range(1, 1101))
    for ctx in (0, 300, 1000, 1500):  # the per-round form at many sizes agrees with verify()
        assert p.costs_at(ctx, sizes) == pytest.approx([p.verify(n, ctx) for n in sizes])
    p = dataclasses.replace(p, root_alone_ms=[5.0, 7.0])
    assert [p.root_alone(c) for c in (-10, 250, 2000)] == pytest.approx([5.0, 5.5, 7.0])  # flat outside
    # a drafted round's step: the root alone as profiled; a tree at its own size, or its bucket
    assert p.tree_step(1, 250) == p.root_alone(250) and p.tree_step(5, 250) == p.verify(5, 250)
    p = dataclasses.replace(p, buckets=[1, 2, 4, 8])
    assert p.tree_step(5, 250) == p.verify(8, 250)


def prefix_scores(tree, logits) -> list[float]:
    """Each node's path log-probability under the drafter's marginals (root: 0), in pop order."""
    logp = torch.log_softmax(logits, -1)
    toks, parents = tree.tokens.tolist(), tree.parents.tolist()
    scores = [0.0] * tree.num_nodes
    for i in range(1, tree.num_nodes):
        scores[i] = scores[parents[i]] + float(logp[tree.depths[i] - 1, toks[i]])
    return scores


def theta(tree_logp, n, prof, context, overhead=0.0):
    return (1 + sum(math.exp(s) for s in tree_logp[:n])) / (prof.draft_ms + overhead + prof.verify(n + 1, context))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("steepness", [0.001, 0.02, 0.3])
def test_stops_at_the_best_budget(seed, steepness, tree_search):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * 3
    prof = profile([fit_monotone_convex(NODES, [8 + steepness * n + 1e-4 * n * n for n in NODES])])
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=600, native=tree_search)
    n = tree.num_nodes - 1
    # the chosen tree is DDTree's tree of the same size
    ref = build_ddtree(0, DraftProposal(logits), n, 15, native=tree_search)
    assert torch.equal(tree.tokens, ref.tokens) and torch.equal(tree.parents, ref.parents)
    # and n maximises theta over every budget (brute force over DDTree's pop order)
    full = build_ddtree(0, DraftProposal(logits), 600, 15, native=tree_search)
    scores = prefix_scores(full, logits)
    thetas = [theta(scores[1:], k, prof, 128) for k in range(0, 601)]
    assert thetas[n] == pytest.approx(max(thetas), rel=1e-6)


BUCKETS = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("steepness", [0.002, 0.02, 0.3])
def test_bucketed_cost_fills_the_best_bucket(seed, steepness, tree_search):
    """With a step cost (every tree costs its bucket), the tree is DDTree's at a bucket size, and
    that bucket maximises theta over all buckets (brute force)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * 3
    ys = [8 + steepness * n + 1e-4 * n * n for n in BUCKETS]
    prof = CostProfile(device="test", target="t", drafter="d", dtype="float32", draft_ms=2.0, contexts=[128],
                       nodes=BUCKETS, verify_ms=[fit_monotone_convex(BUCKETS, ys)], buckets=BUCKETS)
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=511, native=tree_search)
    assert tree.num_nodes in BUCKETS
    ref = build_ddtree(0, DraftProposal(logits), tree.num_nodes - 1, 15, native=tree_search)
    assert torch.equal(tree.tokens, ref.tokens) and torch.equal(tree.parents, ref.parents)
    full = build_ddtree(0, DraftProposal(logits), 511, 15, native=tree_search)
    scores = prefix_scores(full, logits)
    thetas = {b: theta(scores[1:], b - 1, prof, 128) for b in BUCKETS}
    assert thetas[tree.num_nodes] == pytest.approx(max(thetas.values()), rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("root_ms", [2.0, 8.0, 12.0])
def test_root_alone_is_priced_as_caddtree_takes_it(seed, root_ms, tree_search):
    """The root-alone choice costs what the profile measured for it (after the candidate fetch),
    not AR's step: the choice maximises theta with that price (brute force), and a price at or
    above the 2-node round's never keeps the root alone."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * (1 + seed)  # from flat to peaked marginals
    prof = dataclasses.replace(profile([fit_verify_row(NODES, [8.0] + [8.5 + 0.05 * n for n in NODES[1:]])]),
                               root_alone_ms=[root_ms])
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=600, native=tree_search)
    scores = prefix_scores(build_ddtree(0, DraftProposal(logits), 600, 15, native=tree_search), logits)
    thetas = [1 / (prof.draft_ms + root_ms)] + [theta(scores[1:], k, prof, 128) for k in range(1, 601)]
    assert thetas[tree.num_nodes - 1] == pytest.approx(max(thetas), rel=1e-6)
    if root_ms >= prof.verify(2, 128):
        assert tree.num_nodes > 1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("overhead", [0.5, 4.0, 20.0])
def test_round_overhead_is_part_of_the_cost(seed, overhead, tree_search):
    """A per-round overhead is paid by every tree alike: the chosen size maximises theta with it
    added (brute force), and it never makes the tree smaller."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * 3
    prof = profile([fit_monotone_convex(NODES, [1 + 0.05 * n + 1e-4 * n * n for n in NODES])])
    plain = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=600, native=tree_search)
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=600,
                          overhead_ms=overhead, native=tree_search)
    assert tree.num_nodes >= plain.num_nodes
    scores = prefix_scores(build_ddtree(0, DraftProposal(logits), 600, 15, native=tree_search), logits)
    thetas = [theta(scores[1:], k, prof, 128, overhead) for k in range(0, 601)]
    assert thetas[tree.num_nodes - 1] == pytest.approx(max(thetas), rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.05, 0.3, 1.5])
@pytest.mark.parametrize("bucketed", [False, True])
def test_decode_horizon_maximises_the_rounds_gain(seed, lam, bucketed, tree_search):
    """With a decode rate lam the chosen size maximises 1 + Phi - lam * C over every size (or
    bucket; the root alone at its own price), brute force; the tree is DDTree's of that size, and
    carries its Phi."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 200, generator=g) * (3 + seed)  # peaked: no depth needs past CANDIDATES
    if bucketed:
        ys = [8 + 0.01 * n + 1e-4 * n * n for n in BUCKETS]
        prof = CostProfile(device="test", target="t", drafter="d", dtype="float32", draft_ms=2.0, contexts=[128],
                           nodes=BUCKETS, verify_ms=[fit_monotone_convex(BUCKETS, ys)], buckets=BUCKETS)
        sizes = [b for b in BUCKETS if b > 1]
    else:
        prof = profile([fit_monotone_convex(NODES, [8 + 0.01 * n + 1e-4 * n * n for n in NODES])])
        sizes = list(range(2, 513))
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=511, lam=lam,
                          native=tree_search)
    scores = prefix_scores(build_ddtree(0, DraftProposal(logits), 511, 15, native=tree_search), logits)
    phi = np.cumsum([math.exp(x) for x in scores[1:]])
    gains = {1: 1 - lam * (prof.draft_ms + prof.root_alone(128))}
    gains.update({n: 1 + phi[n - 2] - lam * (prof.draft_ms + prof.verify(n, 128)) for n in sizes})
    assert gains[tree.num_nodes] == pytest.approx(max(gains.values()), rel=1e-9, abs=1e-9)
    ref = build_ddtree(0, DraftProposal(logits), tree.num_nodes - 1, 15, native=tree_search)
    assert torch.equal(tree.tokens, ref.tokens) and torch.equal(tree.parents, ref.parents)
    assert tree.phi == pytest.approx(phi[tree.num_nodes - 2] if tree.num_nodes > 1 else 0.0)


def test_decode_horizon_spends_nodes_where_they_pay():
    """Two rounds, one confident and one unsure, each sized for its own ratio, against the same
    two sized for the decode rate they make together: the decode horizon gets more expected tokens
    per ms from the pair (its whole point), with the confident round the larger of the two."""
    prof = profile([fit_monotone_convex(NODES, [8 + 0.02 * n for n in NODES])])
    g = torch.Generator().manual_seed(0)
    rounds = [DraftProposal(torch.randn(15, 200, generator=g) * s) for s in (6.0, 1.0)]

    def pair(lam):
        trees = [build_caddtree(0, p, prof, context=128, max_depth=15, max_nodes=511, lam=lam, native=NATIVE)
                 for p in rounds]
        cost = sum(prof.draft_ms + prof.verify(t.num_nodes, 128) for t in trees)
        return trees, sum(1 + t.phi for t in trees) / cost

    own, own_rate = pair(0.0)
    lam = own_rate
    for _ in range(20):  # Dinkelbach: the rate the decode runs at, then the sizes for it
        trees, lam = pair(lam)
    assert lam > own_rate * 1.001
    assert trees[0].num_nodes > trees[1].num_nodes


def test_bench_runs_each_caddtree_horizon_beside_the_first():
    from specdiff.bench.harness import BenchConfig, variants

    cfg = BenchConfig(methods=["ddtree", "caddtree"], budgets=[32], caddtree_horizons=["decode", "round"])
    assert [v[0] for v in variants(cfg)] == ["ar", "ddtree@32", "caddtree", "caddtree/round"]


def test_decode_rate():
    rate = DecodeRate(weight=0.1)
    assert rate.lam == 0.0  # no round yet: the round's own ratio
    rate.observe(4.0, 2.0)
    assert rate.lam == pytest.approx(2.0)
    for _ in range(300):
        rate.observe(3.0, 3.0)
    assert rate.lam == pytest.approx(1.0, rel=1e-6)


def test_round_overhead_estimate():
    """A plain mean at first, then a moving average; one stalled round moves it at most by its
    weight times the predicted cost."""
    est = RoundOverhead(weight=0.1)
    for wall in (3.0, 3.2, 2.8):
        est.observe(wall, predicted_ms=2.0)
    assert est.ms == pytest.approx(1.0) and est.rounds == 3
    for _ in range(200):
        est.observe(2.5, predicted_ms=2.0)
    assert est.ms == pytest.approx(0.5, abs=1e-6)
    est.observe(500.0, predicted_ms=2.0)  # a GC pause
    assert est.ms == pytest.approx(0.5 + 0.1 * (2.0 - 0.5))


def test_flat_cost_grows_to_the_cap():
    logits = torch.randn(15, 100, generator=torch.Generator().manual_seed(0))
    prof = profile([[10.0] * len(NODES)])
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=300, native=NATIVE)
    assert tree.num_nodes == 301


def decoding_setup(model, tmp_path):
    """A tiny drafter, a saved profile whose cost rises per node, and the target adapter."""
    path = tmp_path / "profile.json"
    profile([fit_monotone_convex(NODES, [1 + 0.05 * n for n in NODES])]).save(path)
    return tiny_drafter(model, block_size=16), path, HFTarget(model)


@pytest.mark.parametrize("horizon", ["decode", "round"])
def test_caddtree_decoding_is_exact(qwen3_model, tmp_path, horizon):
    drafter, path, target = decoding_setup(qwen3_model, tmp_path)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        prompt = torch.randint(0, 95, (10,), generator=g).tolist()
        ar = build_decoder(target, DecodeConfig(method="ar", max_new_tokens=30)).generate(prompt)
        cfg = DecodeConfig(method="caddtree", max_new_tokens=30,
                           caddtree=CaDDTreeOptions(profile=str(path), horizon=horizon))
        cad = build_decoder(target, cfg, drafter)
        r = cad.generate(prompt)
        assert r.token_ids == ar.token_ids
        assert max(r.tree_sizes) > 1
        # a steps profile: every round after the first was timed against its predicted cost
        assert cad.proposer.overhead.rounds == r.rounds - 1
        # the decode horizon: every drafted round fed the rate (a last round with no slot left
        # to draft does not)
        assert (cad.proposer.rate is None) == (horizon == "round")
        if horizon == "decode":
            assert r.rounds - 1 <= cad.proposer.rate.rounds <= r.rounds and cad.proposer.rate.lam > 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_flat_marginals_fetch_as_many_candidates_as_the_decision_needs(seed, scale, tree_search):
    """Near-flat marginals (a T=1 prompt the drafter is unsure of) make the search pop a depth's
    last fetched candidate past the size it keeps (the Python heap's first fetch). The decision
    still equals the brute-force best bucket over the trees of each depth's top CANDIDATES tokens:
    popping past a truncated candidate list would undercount the larger sizes and keep too small
    a tree."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(15, 300, generator=g) * scale
    ys = [8 + 0.002 * n + 1e-5 * n * n for n in BUCKETS]
    prof = CostProfile(device="test", target="t", drafter="d", dtype="float32", draft_ms=2.0, contexts=[128],
                       nodes=BUCKETS, verify_ms=[fit_monotone_convex(BUCKETS, ys)], buckets=BUCKETS)
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=511, native=tree_search)
    top = torch.topk(torch.log_softmax(logits, -1), CANDIDATES, -1).values
    phi = np.cumsum([math.exp(score) for _, _, score in itertools.islice(iter_best_first(top), 511)])
    cost = {b: prof.draft_ms + prof.verify(b, 128) for b in BUCKETS}
    thetas = {b: (1 + phi[b - 2]) / cost[b] for b in BUCKETS if 2 <= b <= 512}
    assert tree.num_nodes in thetas
    assert thetas[tree.num_nodes] == pytest.approx(max(thetas.values()), rel=1e-6)
    assert tree.num_nodes > 64  # past the Python heap's first fetch: the case this guards


def test_caddtree_trees_keep_each_depths_top_candidates():
    """A tree past CANDIDATES nodes over flat marginals still draws each depth's tokens from its
    top CANDIDATES: nothing past them is fetched."""
    logits = torch.randn(15, 300, generator=torch.Generator().manual_seed(0)) * 0.1
    ys = [8 + 1e-6 * n for n in BUCKETS]  # nodes nearly free: the largest tree pays
    prof = CostProfile(device="test", target="t", drafter="d", dtype="float32", draft_ms=2.0, contexts=[128],
                       nodes=BUCKETS, verify_ms=[ys], buckets=BUCKETS)
    tree = build_caddtree(0, DraftProposal(logits), prof, context=128, max_depth=15, max_nodes=511, native=NATIVE)
    assert tree.num_nodes == 512
    top = torch.topk(logits, CANDIDATES, -1).indices
    for tok, d in zip(tree.tokens[1:].tolist(), tree.depths[1:].tolist()):
        assert tok in top[d - 1].tolist()


def test_caddtree_sampling_gives_ars_tokens_for_the_same_seed(qwen3_model, tmp_path):
    """At T>0 the draws are keyed by position, so a lossless caddtree emits AR's very tokens for
    the same seed, whatever trees it chose (the walk's distribution test covers DDTree's trees)."""
    from specdiff.config import SamplingConfig

    drafter, path, target = decoding_setup(qwen3_model, tmp_path)
    g = torch.Generator().manual_seed(3)
    for seed in range(4):
        prompt = torch.randint(0, 95, (8,), generator=g).tolist()
        sampling = SamplingConfig(temperature=1.0, seed=seed)
        ar = build_decoder(target, DecodeConfig(method="ar", max_new_tokens=30, sampling=sampling)).generate(prompt)
        cfg = DecodeConfig(method="caddtree", max_new_tokens=30, caddtree=CaDDTreeOptions(profile=str(path)),
                           sampling=SamplingConfig(**vars(sampling)))
        r = build_decoder(target, cfg, drafter).generate(prompt)
        assert r.token_ids == ar.token_ids and max(r.tree_sizes) > 1


def test_a_profile_is_immutable_and_saves_no_memo(tmp_path):
    p = profile([[10.0 + n for n in NODES]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.draft_ms = 1.0
    p.verify(5, 128)  # memoises rows
    p.save(tmp_path / "p.json")
    assert CostProfile.load(tmp_path / "p.json").verify(5, 128) == p.verify(5, 128)
    assert "_memo" not in (tmp_path / "p.json").read_text()
