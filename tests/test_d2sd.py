"""D²SD: branch selection by r(i), the candidates' trie, the hybrid's best-budget tree, cascade
attention (target and VP drafter) against the plain masked path, and exact decoding through VP
branches."""

import json
import math

import pytest
import torch

from specdiff.attention import cascade_attention, masked_attention
from specdiff.config import DecodeConfig
from specdiff.decode import SpeculativeDecoder
from specdiff.drafters.dflash import check_pair
from specdiff.engine import build_decoder
from specdiff.errors import SpecdiffError
from specdiff.models.tiny import tiny_drafter
from specdiff.target import HFTarget, StaticTarget
from specdiff.methods.d2sd import (
    acceptance_profile, branch_rows, build_d2sd_hybrid, build_d2sd_tree, fill_branches, hybrid_scores, merge_paths,
    select_branches,
)
from specdiff.types import DraftProposal, DraftTree

from test_lossless_greedy import hf_greedy, prompts
from test_target import path_to, random_tree
from test_trees import brute_force_top, tree_paths


def all_prefixes(paths):
    return {tuple(p[:d]) for p in paths for d in range(1, len(p) + 1)}


# -- selection and candidates ---------------------------------------------------------------------


def test_r_is_the_paper_formula_and_top_k_is_sorted():
    c = [0.9, 0.5, 0.8, 0.2]
    r = acceptance_profile(c)
    # r(0) = 1 - c1, r(1) = c1 (1 - c2), r(2) = c1 c2 (1 - c3), r(3) = c1 c2 c3 (1 - c4)
    assert r == pytest.approx([0.1, 0.45, 0.09, 0.288])
    assert sum(r) + math.prod(c) == pytest.approx(1.0)  # with "all accepted": a distribution
    sel = select_branches(c, 2)
    assert sel.prefix_lens == [1, 3] and sel.r == pytest.approx([0.45, 0.288])
    assert select_branches(c, 9).prefix_lens == [0, 1, 2, 3]  # K beyond L: every i


def test_rows_and_fills():
    chain = [11, 12, 13, 14]
    sel = select_branches([0.9, 0.5, 0.8, 0.2], 2)  # i = 1, 3
    rows = branch_rows(7, chain, sel, mask_id=0)
    assert rows.tolist() == [[7, 11, 0, 0, 0], [7, 11, 12, 13, 0]]
    logits = torch.full((2, 4, 30), -5.0)
    for j, toks in enumerate([[20, 21, 22, 23], [24, 25, 26, 27]]):
        logits[j, torch.arange(4), torch.tensor(toks)] = 5.0
    cands = fill_branches(7, chain, sel, logits)
    assert cands.branches == [[11, 21, 22, 23], [11, 12, 13, 27]]  # the prefix is kept, slots after it filled
    assert [len(lp) for lp in cands.branch_logp] == [3, 1]
    assert cands.branch_logp[1][0] == pytest.approx(float(torch.log_softmax(logits[1, 3], -1)[27]))
    assert cands.rows == 3 * 5


def test_trie_dedups_shared_prefixes():
    chain = [1, 2, 3, 4]
    branches = [[5, 6, 7, 8], [1, 2, 9, 9], [1, 2, 3, 9], [1, 2, 3, 4]]
    tree = merge_paths(0, [chain, *branches], candidate_rows=25)
    assert tree.num_nodes == 1 + 4 + 4 + 2 + 1  # the last branch repeats the chain: no new node
    assert tree.candidate_rows == 25
    assert set(tree_paths(tree)) == all_prefixes([chain, *branches])
    toks, parents = tree.tokens.tolist(), tree.parents.tolist()
    seen = set()
    for i in range(1, tree.num_nodes):
        assert parents[i] < i and (parents[i], toks[i]) not in seen  # children unique by token
        seen.add((parents[i], toks[i]))


@pytest.mark.parametrize("seed", range(3))
def test_d2sd_tree_holds_exactly_the_candidates(seed):
    g = torch.Generator().manual_seed(seed)
    depth, vocab = 6, 5
    chain = torch.randint(0, vocab, (depth,), generator=g).tolist()
    sel = select_branches(torch.rand(depth, generator=g).tolist(), 4)
    cands = fill_branches(99, chain, sel, torch.randn(4, depth, vocab, generator=g) * 3)
    tree = build_d2sd_tree(cands)
    paths = [cands.chain, *cands.branches]
    assert set(tree_paths(tree)) == all_prefixes(paths)
    assert tree.num_nodes - 1 == len(all_prefixes(paths)) < cands.rows
    assert tree.max_depth == depth


# -- the hybrid -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_hybrid_is_the_best_budget_candidate_nodes(seed):
    """Pool = DDTree's top-B prefixes of the DFlash marginals (brute force) and every VP branch
    node scored r(i) * prod(VP probs); the tree is the B best of the pool, prefix-closed."""
    g = torch.Generator().manual_seed(10 + seed)
    depth, vocab, budget = 4, 4, 12
    logits = torch.randn(depth, vocab, generator=g) * 2
    logp = torch.log_softmax(logits, -1)
    chain = logits.argmax(-1).tolist()
    sel = select_branches(torch.softmax(logits, -1).amax(-1).tolist(), 3)
    cands = fill_branches(99, chain, sel, torch.randn(3, depth, vocab, generator=g) * 2)

    expected: dict[tuple, float] = {}
    for p in brute_force_top(logp, budget):
        expected[p] = sum(float(logp[d, t]) for d, t in enumerate(p))
    for i, r, branch, lp in zip(sel.prefix_lens, sel.r, cands.branches, cands.branch_logp):
        for d in range(1, depth + 1):
            score = math.log(r) + sum(lp[: max(0, d - i)])
            expected[tuple(branch[:d])] = max(expected.get(tuple(branch[:d]), -math.inf), score)
    pool = hybrid_scores(cands, DraftProposal(logits), budget)
    assert pool.keys() == expected.keys()
    assert all(pool[p] == pytest.approx(expected[p], abs=1e-5) for p in pool)

    tree = build_d2sd_hybrid(cands, DraftProposal(logits), budget)
    got = tree_paths(tree)
    assert len(got) == budget and len(set(got)) == budget
    best = sorted(expected.values(), reverse=True)[:budget]
    assert sorted((expected[p] for p in got), reverse=True) == pytest.approx(best, abs=1e-6)
    assert all(p[:-1] in set(got) for p in got if len(p) > 1)  # prefix-closed


# -- cascade attention ----------------------------------------------------------------------------


@pytest.mark.parametrize("hq,hkv", [(4, 2), (4, 4), (6, 1)])
@pytest.mark.parametrize("batch", [(1,), (3,)])
@pytest.mark.parametrize("ctx", [0, 9])
def test_cascade_equals_masked(hq, hkv, batch, ctx):
    g = torch.Generator().manual_seed(hq * 10 + ctx + batch[0])
    n, d = 7, 16
    q = torch.randn(*batch, hq, n, d, generator=g)
    k_ctx, v_ctx = torch.randn(hkv, ctx, d, generator=g), torch.randn(hkv, ctx, d, generator=g)
    k_tree, v_tree = torch.randn(*batch, hkv, n, d, generator=g), torch.randn(*batch, hkv, n, d, generator=g)
    tree = DraftTree.from_lists(list(range(n)), [-1, 0, 1, 0, 3, 1, 5])
    for mask in (tree.ancestor_mask(), None):
        got = cascade_attention(q, k_ctx, v_ctx, k_tree, v_tree, mask, scale=0.3)
        ref = masked_attention(q, k_ctx, v_ctx, k_tree, v_tree, mask, scale=0.3)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if ctx:  # and the context does change the result
        alone = masked_attention(q, k_ctx[:, :0], v_ctx[:, :0], k_tree, v_tree, None, scale=0.3)
        assert (got - alone).abs().max() > 1e-2


def test_static_target_cascade_equals_masked(target_model):
    """The target's verify forward with cascade attention: same logits and taps over a tree after
    a prefill, and after a commit; and a decode through it is exact."""
    g = torch.Generator().manual_seed(3)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (11,), generator=g).tolist()
    tree = random_tree(13, vocab, g)
    outs = []
    for attention in ("masked", "cascade"):
        t = StaticTarget(target_model, tap_layers=[1, 3], attention=attention)
        t.reset(48)
        pre = t.prefill(prompt)
        out = t.forward(tree)
        t.commit(path_to(tree, 12))
        outs.append((pre, out, t.forward(DraftTree.chain(5, [6, 7]))))
    for a, b in zip(*outs):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
    cascade = StaticTarget(target_model, attention="cascade")
    drafter = tiny_drafter(target_model, block_size=16)
    cfg = DecodeConfig(method="ddtree", budget=16, max_new_tokens=20)
    for p in prompts(vocab, n=3, seed=4):
        assert build_decoder(cascade, cfg, drafter).generate(p).token_ids == hf_greedy(target_model, p, 20)
    with pytest.raises(SpecdiffError, match="unknown attention"):
        StaticTarget(target_model, attention="flash")


def test_vp_rows_equal_per_row_drafts(qwen3_model):
    """draft_rows (shared context read once + per-row block keys, LSE-merged) == draft_block on
    each row separately (one plain attention over [context ; row])."""
    d = tiny_drafter(qwen3_model, block_size=8, seed=5)
    mask = d.spec.mask_token_id
    rows = torch.tensor([[3] + [mask] * 7, [3, 4, 5] + [mask] * 5, [3, 4, 5, 6, 7, 8] + [mask] * 2])
    for ctx in (0, 13):
        d.reset(32)
        d.extend_context(torch.randn(ctx, len(d.spec.target_layer_ids) * qwen3_model.config.hidden_size))
        got = d.draft_rows(rows)
        assert got.shape == (3, 7, qwen3_model.config.vocab_size)
        for j in range(3):
            torch.testing.assert_close(got[j], d.draft_block(rows[j]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[0], d.draft(3, 7), atol=1e-5, rtol=1e-5)
        assert (got[1] - got[2]).abs().max() > 1e-3  # rows do not leak into each other's results


def test_vp_drafter_must_match_the_dflash_drafter(qwen3_model):
    d = tiny_drafter(qwen3_model, block_size=8)
    check_pair(d, tiny_drafter(qwen3_model, block_size=8, seed=2))
    with pytest.raises(SpecdiffError, match="taps"):
        check_pair(d, tiny_drafter(qwen3_model, block_size=8, taps=[1, 2]))
    with pytest.raises(SpecdiffError, match="block size"):
        check_pair(d, tiny_drafter(qwen3_model, block_size=16))
    with pytest.raises(SpecdiffError, match="VP drafter"):
        build_decoder(qwen3_model, DecodeConfig(method="d2sd"), d)


# -- exact decoding through VP branches -----------------------------------------------------------


class OracleD2SD:
    """D²SD's tree building on oracle drafters: the DFlash slots are the target's greedy rollout
    plus noise (so the chain often goes wrong), the VP fills are the target's greedy continuation
    of each branch's prefix, sharpened (so a branch at the chain's first error is right, and sure)."""

    tap_layers = ()
    drafters = ()

    def __init__(self, model, hybrid=False, slots=6, branches=2, budget=12, noise=0.6, seed=0):
        self.model, self.hybrid, self.slots, self.branches, self.budget, self.noise = (
            model, hybrid, slots, branches, budget, noise)
        self.name, self.max_nodes = "oracle-d2sd", 1 + (budget if hybrid else (branches + 1) * slots)
        self.gen = torch.Generator().manual_seed(seed)
        self.off_chain = 0  # rounds whose accepted path left the DFlash chain

    def begin(self, state, prefill, max_len):
        pass

    def rollout(self, ids, n):
        rows = []
        for _ in range(n):
            logits = self.model(torch.tensor([ids])).logits[0, -1].float()
            rows.append(logits)
            ids = ids + [int(logits.argmax())]
        return torch.stack(rows) if rows else torch.zeros(0, self.model.config.vocab_size)

    @torch.inference_mode()
    def propose(self, state):
        depth = min(self.slots, state.max_depth)
        if depth <= 0:
            return DraftTree.chain(state.root, [])
        logits = self.rollout(list(state.tokens), depth)
        logits = logits + self.noise * logits.std() * torch.randn(logits.shape, generator=self.gen)
        self.chain = logits.argmax(-1).tolist()
        sel = select_branches(torch.softmax(logits, -1).amax(-1).tolist(), self.branches)
        vp = torch.zeros(sel.num_branches, depth, logits.shape[-1])
        for j, i in enumerate(sel.prefix_lens):
            vp[j, i:] = 5.0 * self.rollout(list(state.tokens) + self.chain[:i], depth - i)
        cands = fill_branches(state.root, self.chain, sel, vp)
        if self.hybrid:
            self.tree = build_d2sd_hybrid(cands, DraftProposal(logits), self.budget)
        else:
            self.tree = build_d2sd_tree(cands)
        return self.tree

    def update(self, result, out):
        path = [int(self.tree.tokens[i]) for i in result.accepted[1:]]
        self.off_chain += path != self.chain[: len(path)]


@pytest.mark.parametrize("hybrid", [False, True])
def test_agreeing_d2sd_is_exact(qwen3_model, hybrid):
    ps = prompts(qwen3_model.config.vocab_size, n=4, seed=2)
    proposer = OracleD2SD(qwen3_model, hybrid=hybrid)
    dec = SpeculativeDecoder(HFTarget(qwen3_model), proposer, DecodeConfig(method="ar", max_new_tokens=30))
    results = [dec.generate(p) for p in ps]
    for r, p in zip(results, ps):
        assert r.token_ids == hf_greedy(qwen3_model, p, 30)
    assert proposer.off_chain > 3, "some rounds should be accepted through a VP branch"
    assert sum(r.tau for r in results) / len(results) > 3.0


def test_bundled_d2sd_agrees_and_is_exact():
    """The bundled target, DFlash and VP drafters: d2sd and d2sd-hybrid are token-identical to HF
    greedy generate, and D²SD accepts more per round than DFlash alone."""
    from specdiff.drafters.dflash import load_drafter
    from specdiff.models.bundled import REPO_MODELS, default_path
    from specdiff.target.hf_causal import load_target

    model, tok = load_target(default_path("target"))
    drafter, vp = load_drafter(default_path("dflash")), load_drafter(default_path("vp"))
    widths, draft_rows = [], vp.draft_rows  # the VP drafter is handed whole blocks only (its graph's)
    vp.draft_rows = lambda rows: (widths.append(rows.shape[1]), draft_rows(rows))[1]
    rows = (REPO_MODELS.parent / "data" / "prompts" / "function_completion.jsonl").read_text().splitlines()[:3]
    target = StaticTarget(model)
    tokens, rounds = {}, {}
    for row in rows:
        ids = tok(json.loads(row)["prompt"], add_special_tokens=False)["input_ids"]
        ref = hf_greedy(model, ids, 48)
        for method in ("dflash", "d2sd", "d2sd-hybrid"):
            cfg = DecodeConfig(method=method, budget=32, max_new_tokens=48, stop_at_eos=False, engine="static")
            r = build_decoder(target, cfg, drafter, vp_drafter=vp).generate(ids)
            assert r.token_ids == ref, method
            tokens[method] = tokens.get(method, 0) + r.num_new_tokens
            rounds[method] = rounds.get(method, 0) + r.rounds
            if method == "d2sd":
                assert all(n <= rows_ for n, rows_ in zip(r.tree_sizes, r.candidate_rows))
                assert sum(r.tree_sizes) < 0.9 * sum(r.candidate_rows)  # the trie saves real rows
    tau = {m: tokens[m] / rounds[m] for m in tokens}
    assert tau["d2sd"] > tau["dflash"]
    # 48 tokens end inside a block, so the last rounds keep fewer slots: still whole VP blocks
    assert widths and set(widths) == {vp.block_size}, set(widths)
