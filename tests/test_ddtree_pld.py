"""DDTree with prompt lookup (`methods/ddtree_pld.py`): the n-gram index against the plain scan,
the lookup's acceptance counts, the tree as the budget's best nodes of both proposals, and a decode
where the lookup carries what a blind drafter cannot."""

import itertools
import math
import random

import pytest
import torch

from specdiff import native
from specdiff.config import DecodeConfig, PLDOptions, SamplingConfig
from specdiff.engine import build_decoder
from specdiff.errors import SpecdiffError
from specdiff.methods.ddtree import build_ddtree, scored_prefixes
from specdiff.methods.ddtree_pld import LookupRates, build_ddtree_pld
from specdiff.methods.pld import NgramIndex, lookup
from specdiff.models.tiny import tiny_drafter
from specdiff.types import DraftProposal
from test_trees import tree_paths as paths

NATIVE = native.load()


@pytest.mark.parametrize("seed", range(40))
def test_the_ngram_index_drafts_what_the_scan_does(seed):
    r = random.Random(seed)
    hi = r.randint(1, 4)
    options = PLDOptions(ngram_max=hi, ngram_min=r.randint(1, hi))
    tokens = [r.randint(0, 4) for _ in range(r.randint(1, 8))]
    index = NgramIndex(options)
    for _ in range(25):
        index.extend(tokens)
        limit = r.randint(0, 6)
        assert index.draft(limit) == lookup(tokens, options, limit), (tokens, limit)
        tokens.extend(r.randint(0, 4) for _ in range(r.randint(1, 4)))  # the list grows in place


def test_lookup_rates_count_a_token_only_after_the_ones_before_it_were_right():
    rates = LookupRates()
    rates.record([5, 6, 7], [5, 6, 9, 1])  # two right, the third wrong
    rates.record([5, 8, 7], [5, 6])  # the second wrong: the third is not tried
    rates.record([1, 2, 3], [1])  # only the first is known yet
    assert rates.tries == [3, 2, 1] and rates.hits == [3, 1, 0]
    want = [math.log(4 / 5), math.log(4 / 5 * 2 / 4), math.log(4 / 5 * 2 / 4 * 1 / 3), math.log(4 / 5 * 2 / 4 * 1 / 3 / 2)]
    assert rates.log_scores(4) == pytest.approx(want)


def proposal(depth: int, vocab: int, seed: int) -> DraftProposal:
    g = torch.Generator().manual_seed(seed)
    return DraftProposal(torch.randn(depth, vocab, generator=g) * 2.0)  # continuous: no ties


def prefix_paths(prefixes) -> list[tuple[int, ...]]:
    out = [()]
    for t, p in zip(prefixes.tokens.tolist(), prefixes.parents.tolist()):
        out.append(out[p] + (t,))
    return out[1:]


@pytest.mark.parametrize("seed", range(4))
def test_scored_prefixes_are_ddtrees_tree_from_every_search(seed):
    depth, vocab, budget = 4, 6, 30
    prop = proposal(depth, vocab, seed)
    logp = torch.log_softmax(prop.logits, dim=-1)
    want = paths(build_ddtree(0, prop, budget, depth, NATIVE))
    for search in (None, NATIVE):  # the Python heap, and the C search
        got = scored_prefixes(prop, budget, depth, search)
        assert prefix_paths(got) == want
        assert got.logp.tolist() == pytest.approx([sum(float(logp[i, t]) for i, t in enumerate(p)) for p in want], abs=1e-5)


@pytest.mark.parametrize("seed", range(30))
def test_the_tree_is_the_budgets_best_nodes_of_both(seed):
    """Against the definition: every candidate node scored (a node both propose keeps the higher
    score), the `budget` best of them."""
    r = random.Random(seed)
    depth, vocab, budget = 5, r.choice([2, 3, 5]), r.choice([1, 4, 9, 20, 40])
    prop = proposal(depth, vocab, seed)
    prefixes = scored_prefixes(prop, budget, depth, NATIVE)
    # without a chain, the tree is DDTree's own
    assert paths(build_ddtree_pld(7, prefixes, [], [], budget)) == paths(build_ddtree(7, prop, budget, depth, NATIVE))
    # a chain that starts on DDTree's best node half the time, so that some of it is shared
    first = int(prefixes.tokens[0]) if r.random() < 0.5 else r.randrange(vocab)
    chain = [first] + [r.randrange(vocab) for _ in range(r.randint(0, depth - 1))]
    chain_logp = list(itertools.accumulate(math.log(r.uniform(0.3, 0.95)) for _ in chain))
    tree = build_ddtree_pld(7, prefixes, chain, chain_logp, budget)
    got = paths(tree)
    scores = dict(zip(prefix_paths(prefixes), prefixes.logp.tolist()))
    for j, s in enumerate(chain_logp):
        scores[tuple(chain[: j + 1])] = max(s, scores.get(tuple(chain[: j + 1]), -math.inf))
    assert set(got) == set(sorted(scores, key=lambda p: -scores[p])[:budget])
    assert len(got) == len(set(got)) == min(budget, len(scores))
    assert tree.tokens[0] == 7 and all(p[:-1] in set(got) | {()} for p in got)  # prefix-closed


def test_a_device_search_is_refused_in_one_line(qwen3_model):
    cfg = DecodeConfig(method="ddtree-pld", budget=8, max_new_tokens=4, tree_search="device")
    with pytest.raises(SpecdiffError, match="--tree-search host or auto") as e:
        build_decoder(qwen3_model, cfg, tiny_drafter(qwen3_model, block_size=8))
    assert "\n" not in str(e.value)


def test_the_lookup_carries_a_target_that_repeats_itself_past_a_blind_drafter(qwen3_model):
    """A random drafter's marginals almost never hold the target's tokens; this tiny target's greedy
    tokens fall into loops, which repeat its context, where the lookup finds them: the same tokens
    as AR, in a third fewer rounds than DDTree alone at the same budget or better."""
    drafter = tiny_drafter(qwen3_model, block_size=8)
    sampling = SamplingConfig(temperature=0.0)
    prompt = [5, 17, 42, 8, 77, 3] * 2
    runs = {}
    for method in ("ar", "ddtree", "ddtree-pld"):
        cfg = DecodeConfig(method=method, budget=12, max_new_tokens=48, sampling=sampling, stop_at_eos=False)
        runs[method] = build_decoder(qwen3_model, cfg, drafter).generate(prompt)
    assert runs["ddtree-pld"].token_ids == runs["ddtree"].token_ids == runs["ar"].token_ids
    assert runs["ddtree-pld"].rounds * 3 <= runs["ddtree"].rounds * 2, {m: r.rounds for m, r in runs.items()}
    assert max(runs["ddtree-pld"].tree_sizes) <= 13
