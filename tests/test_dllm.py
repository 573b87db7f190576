"""Masked-diffusion decoding and Spiffy: keyed transitions, and Spiffy's exactness (same state
trajectory as the baseline, in fewer forwards) on tiny fp64 models in block-causal mode."""

from __future__ import annotations

import pytest
import torch

from specdiff.dllm import DLLMConfig, base_visibility, default_graph, generate_baseline, generate_spiffy, tiny_mdm
from specdiff.dllm import spiffy
from specdiff.dllm.calibration import calibrate, formula_of, futures, replay_nfe, rewind, search
from specdiff.dllm.decoding import (DLLMState, block_context, block_logits, cached_block_logits, initial_state,
                                    step_key, transition)
from specdiff.errors import SpecdiffError

V, MASK = 64, 63
PROMPTS = [torch.tensor([1, 2, 3, 4]), torch.tensor([7, 30, 5])]


class Biased:
    """Adds a fixed per-position bias [max_pos, V] to a model's logits (or is the bias alone when
    inner is None: a context-free model whose drafts from a stale anchor are exactly right)."""

    def __init__(self, inner, scale: float, seed: int = 0):
        self.inner = inner
        self.bias = scale * torch.randn(64, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.bias[:, MASK] = -1e9  # never draw [MASK]

    def __call__(self, ids, visible, position_ids):
        bias = self.bias[position_ids]  # [B, N, V]
        return bias if self.inner is None else self.inner(ids, visible, position_ids) + bias


@pytest.fixture(scope="module")
def mdm():
    return tiny_mdm(vocab_size=V, seed=0)


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def any_mdm(request):
    return tiny_mdm(request.param, vocab_size=V, seed=1)


def cfg_for(remasking: str, temperature: float = 0.0, seed: int = 0, **kw) -> DLLMConfig:
    base = dict(gen_length=16, block_length=8, steps=8, threshold=0.5, mask_id=MASK)
    return DLLMConfig(remasking=remasking, temperature=temperature, seed=seed, **{**base, **kw})


def test_config_validate():
    cfg_for("low_confidence").validate()
    bad = [dict(gen_length=12), dict(steps=7), dict(steps=32), dict(remasking="entropy"), dict(threshold=1.5),
           dict(temperature=-1.0)]
    for kw in bad:
        with pytest.raises(SpecdiffError):
            cfg_for(**{"remasking": "low_confidence", **kw}).validate()


def test_schedule_spreads_block_evenly():
    cfg = cfg_for("low_confidence", gen_length=10, block_length=5, steps=4)  # 2 steps per block
    assert [cfg.num_transfer(s) for s in range(2)] == [3, 2]  # LLaDA: the first steps take the extra


def test_transition_noise_keyed_by_seed_block_step():
    cfg = cfg_for("random", temperature=1.0, seed=3)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, V, generator=g, dtype=torch.float64)
    states = [DLLMState(initial_state(PROMPTS[0], cfg).ids, 4, block=0, step=s) for s in range(3)]
    first = [transition(s, logits, cfg).key() for s in states]
    torch.manual_seed(123)  # the global RNG plays no part
    again = [transition(s, logits, cfg).key() for s in reversed(states)][::-1]
    assert first == again  # same (seed, block, step) -> same choice, whatever the call order
    assert len({k[0] for k in first}) == 3  # a different step draws different noise
    assert step_key(3, 0, 1, 0) != step_key(3, 1, 0, 0) != step_key(4, 1, 0, 0)
    other_seed = transition(states[0], logits, cfg_for("random", temperature=1.0, seed=4)).key()
    assert other_seed != first[0]


@pytest.mark.parametrize("threshold,nfe", [(1.0, 16), (0.0, 2)])
def test_threshold_extremes(mdm, threshold, nfe):
    # nothing clears 1.0: one token per step; everything clears 0.0: one step per block
    r = generate_baseline(mdm, PROMPTS[0], cfg_for("threshold", threshold=threshold))
    assert r.nfe == nfe and not (r.token_ids == MASK).any()


def test_threshold_commits_at_least_one_and_finishes(mdm):
    cfg = cfg_for("threshold", temperature=1.0, threshold=0.3)
    r = generate_baseline(mdm, PROMPTS[0], cfg)
    masks = [torch.frombuffer(bytearray(k[0]), dtype=torch.long).eq(MASK).sum().item() for k in r.trajectory]
    steps = [a - b for a, b in zip(masks, masks[1:])]
    assert min(steps) >= 1 and masks[-1] == 0 and r.nfe == len(steps) < 16  # some steps commit several


def test_spiffy_equals_baseline(any_mdm):
    model = Biased(any_mdm, scale=4.0)  # context-dependent, but predictable enough that drafts land
    accepted = {0.0: 0, 0.7: 0}
    for remasking in ("low_confidence", "random", "threshold"):
        graph = default_graph(1 if remasking == "threshold" else 2, depth=3)
        for temperature in accepted:
            for seed in (0, 1, 2):
                for prompt in PROMPTS:
                    cfg = cfg_for(remasking, temperature, seed)
                    base = generate_baseline(model, prompt, cfg)
                    spec = generate_spiffy(model, prompt, cfg, graph)
                    assert spec.trajectory == base.trajectory
                    assert torch.equal(spec.token_ids, base.token_ids)
                    assert spec.steps == base.steps and spec.nfe + spec.accepted == spec.steps
                    assert spec.nfe <= base.nfe
                    accepted[temperature] += spec.accepted
    assert all(a > 0 for a in accepted.values()), accepted  # acceptance was exercised at T=0 and T>0


def test_spiffy_fewer_forwards_when_predictable():
    model = Biased(None, scale=4.0)  # logits depend on position only: the top-1 chain is always right
    cfg = cfg_for("low_confidence", steps=16)  # one token per step
    base = generate_baseline(model, PROMPTS[0], cfg)
    spec = generate_spiffy(model, PROMPTS[0], cfg, default_graph(1, depth=3))
    assert spec.trajectory == base.trajectory
    # per block of 8 steps: 1 forward without drafts, then each forward covers 1 + 3 steps, and the
    # last one 1 + 2 (a draft never finishes the block)
    assert (base.nfe, spec.nfe, spec.accepted) == (16, 6, 10)
    assert spec.walks == [0, 3, 2] * 2


def test_junk_drafts_leave_real_rows_unchanged(mdm):
    cfg = cfg_for("low_confidence")
    state = initial_state(PROMPTS[0], cfg)
    state = transition(state, block_logits(mdm, state, base_visibility(4, 16, 8, True), cfg), cfg)
    visible = base_visibility(4, 16, 8, True)
    anchor = torch.randn(8, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    drafts = spiffy.instantiate(default_graph(2, 3), anchor, state, cfg)  # [D, 8]
    # 2 committed; chain +2, +4 (the +6 chain node would finish the block: dropped), 2 alternatives
    assert (drafts != MASK).sum(1).tolist() == [4, 6, 4, 4]
    junk = torch.randint(0, V, drafts.shape, generator=torch.Generator().manual_seed(2))
    p, p_dd = spiffy.verify_forward(mdm, state, drafts, visible, cfg)
    p_junk, _ = spiffy.verify_forward(mdm, state, junk, visible, cfg)
    assert torch.equal(p, p_junk)  # real rows never see drafts: bit-identical
    torch.testing.assert_close(p, block_logits(mdm, state, visible, cfg), rtol=0, atol=1e-10)
    for d, logits in zip(drafts, p_dd):  # each copy = a stand-alone forward at its draft state
        ids = state.ids.clone()
        ids[state.block_slice(cfg)] = d
        alone = block_logits(mdm, DLLMState(ids, state.prompt_len), visible, cfg)
        torch.testing.assert_close(logits, alone, rtol=0, atol=1e-10)


def test_parent_rule_multi_parent():
    a, b, ab = frozenset({(0, 0)}), frozenset({(1, 0)}), frozenset({(0, 0), (1, 0)})
    graph = spiffy.DraftGraph([a, b, ab])
    assert set(graph.parents(ab, k=1)) == {a, b} and graph.parents(a, k=1) == [frozenset()]
    with pytest.raises(ValueError):
        spiffy.DraftGraph([frozenset({(0, 0), (0, 1)})])  # two tokens at one position


def _leak_into_real(visible, sl, num_drafts):
    out = _verify_visibility(visible, sl, num_drafts)
    out[sl, visible.shape[0]:] = True  # planted bug: the real block sees the drafts
    return out


def _draft_sees_real_block(visible, sl, num_drafts):
    out = _verify_visibility(visible, sl, num_drafts)
    out[visible.shape[0]:, sl] = True  # planted bug: drafts see the block they replace
    return out


def _shifted_positions(sl, num_drafts):
    return _draft_positions(sl, num_drafts) + 1  # planted bug: drafts one position off


_verify_visibility, _draft_positions = spiffy.verify_visibility, spiffy.draft_positions


@pytest.mark.parametrize("dual_cache", [False, True])
@pytest.mark.parametrize("name,bug", [("verify_visibility", _leak_into_real),
                                      ("verify_visibility", _draft_sees_real_block),
                                      ("draft_positions", _shifted_positions)])
def test_planted_bug_is_caught(mdm, monkeypatch, name, bug, dual_cache):
    model = mdm if dual_cache else Biased(mdm, scale=4.0)  # Biased has no dual cache
    mode = dict(block_causal=not dual_cache, dual_cache=dual_cache)
    graph = default_graph(1 if dual_cache else 2, depth=3)
    runs = [(p, cfg_for("low_confidence", t, seed, steps=16 if dual_cache else 8))
            for p in PROMPTS for t in (0.0, 0.7) for seed in (0, 1)]
    assert all(generate_spiffy(model, p, c, graph, **mode).trajectory == generate_baseline(model, p, c, **mode).trajectory
               for p, c in runs)
    monkeypatch.setattr(spiffy, name, bug)
    assert any(generate_spiffy(model, p, c, graph, **mode).trajectory != generate_baseline(model, p, c, **mode).trajectory
               for p, c in runs)


def test_full_bidirectional_is_only_near_lossless(mdm):
    # without block-causal attention, a stand-alone forward at a draft state lets the masked
    # suffix attend to the draft, the verification forward does not: the known gap (notes 2.5)
    cfg = cfg_for("low_confidence")
    visible = base_visibility(4, 16, 8, block_causal=False)
    state = initial_state(PROMPTS[0], cfg)
    state = transition(state, block_logits(mdm, state, visible, cfg), cfg)
    drafts = spiffy.instantiate(default_graph(2, 1, alternatives=False), block_logits(mdm, state, visible, cfg), state, cfg)
    _, p_dd = spiffy.verify_forward(mdm, state, drafts, visible, cfg)
    ids = state.ids.clone()
    ids[state.block_slice(cfg)] = drafts[0]
    alone = block_logits(mdm, DLLMState(ids, state.prompt_len), visible, cfg)
    assert (p_dd[0] - alone).abs().max() > 1e-3


def _trace(model, cfg, prompts):
    trace = []
    for p in prompts:
        generate_baseline(model, p, cfg, trace=trace)
    return trace


def test_rewind_formulas_instantiate_to_the_recorded_states(mdm):
    cfg = cfg_for("low_confidence", 0.7, seed=5, steps=16)
    trace = _trace(Biased(mdm, scale=2.0), cfg, PROMPTS)
    checked = 0
    for t in range(1, len(trace) - 2):
        (prev, anchor), (state, _), (future, _) = trace[t - 1], trace[t], trace[t + 2]
        if not prev.block == state.block == future.block:
            continue
        q = formula_of(anchor, state, future.ids[state.block_slice(cfg)], cfg)
        draft = spiffy.instantiate(spiffy.DraftGraph([q]), anchor, state, cfg)  # [1, m]
        assert len(q) == 2 and torch.equal(draft[0], future.ids[state.block_slice(cfg)])
        checked += 1
    assert checked >= 8
    counts = rewind(trace, cfg, depth=2)
    by_level = [sum(c for (_, lv), c in counts.items() if lv == level) for level in (1, 2)]
    assert by_level == [checked + 2 * len(PROMPTS), checked]  # one more level-1 pair per block


def test_calibration_finds_the_chain_on_a_context_free_model():
    model = Biased(None, scale=4.0)
    cfg = cfg_for("low_confidence", steps=16)
    counts = rewind(_trace(model, cfg, PROMPTS), cfg, depth=4)
    chain = default_graph(1, 4, alternatives=False).nodes
    assert {q for q, _ in counts} == set(chain)  # every rewound transition is the top-1 chain
    graph = calibrate(counts, budget=3)
    assert graph.nodes == chain[:3]
    assert generate_spiffy(model, PROMPTS[0], cfg, graph).nfe == 6


def test_calibrated_graph_is_connected_and_exact(mdm):
    model = Biased(mdm, scale=4.0)
    cfg = cfg_for("low_confidence", 0.7, steps=16)
    counts = rewind(_trace(model, cfg, [torch.tensor([9, 8, 7]), torch.tensor([5, 6])]), cfg, depth=3)
    graph = calibrate(counts, budget=6)
    assert 0 < len(graph.nodes) <= 6
    for q in graph.nodes:  # connected: a first step, or a chosen parent one step back
        assert len(q) == 1 or any(p in graph.nodes for p in graph.parents(q, k=1))
    accepted = 0
    for seed in (0, 1):
        for p in PROMPTS:
            c = cfg_for("low_confidence", 0.7, seed, steps=16)
            spec, base = generate_spiffy(model, p, c, graph), generate_baseline(model, p, c)
            assert spec.trajectory == base.trajectory
            accepted += spec.accepted
    assert accepted > 0


@pytest.mark.parametrize("remasking", ["low_confidence", "threshold"])
def test_replayed_nfe_equals_spiffy_and_search_graph_is_exact(mdm, remasking):
    # the baseline's trajectory does not depend on the graph, so NFE replayed from its trace must
    # equal a real Spiffy run's, for a degree-1 graph and for the replay search's graph
    model = Biased(mdm, scale=4.0)
    cfg = cfg_for(remasking, 0.7, steps=16)
    trace = _trace(model, cfg, PROMPTS)
    walks = futures(trace, cfg, depth=4)
    nfe = {}
    for name, graph in (("degree1", calibrate(rewind(trace, cfg, depth=4), 4)), ("replay", search(walks, 4))):
        spec = [generate_spiffy(model, p, cfg, graph) for p in PROMPTS]
        nfe[name] = replay_nfe(walks, set(graph.nodes))
        assert nfe[name] == sum(r.nfe for r in spec)
        assert all(r.trajectory == generate_baseline(model, p, cfg).trajectory for r, p in zip(spec, PROMPTS))
    assert nfe["replay"] <= nfe["degree1"] < replay_nfe(walks, set())


def test_prune_keeps_the_best_connected_nodes():
    a, ab, c = frozenset({(0, 0)}), frozenset({(0, 0), (1, 0)}), frozenset({(0, 1)})
    probs = torch.tensor([[0.2, 0.7], [0.9, 0.05]], dtype=torch.float64)  # [M, J] p_ij
    # scores: ab 0.42, a gmean(0.2, 0.42) = 0.29, c 0.7; ab needs a (its parent) first
    assert spiffy.prune([a, ab, c], probs, keep=1) == [2]
    assert spiffy.prune([a, ab, c], probs, keep=2) == [0, 2]
    assert spiffy.prune([a, ab, c], probs, keep=3) == [0, 1, 2]


def test_pruned_spiffy_is_exact_and_narrower(mdm):
    model = Biased(mdm, scale=4.0)
    graph = default_graph(1, depth=4)  # 6 nodes
    for temperature in (0.0, 0.7):
        cfg = cfg_for("low_confidence", temperature, steps=16)
        base = generate_baseline(model, PROMPTS[0], cfg)
        full = generate_spiffy(model, PROMPTS[0], cfg, graph)
        pruned = generate_spiffy(model, PROMPTS[0], cfg, graph, max_drafts=2)
        assert pruned.trajectory == full.trajectory == base.trajectory
        assert pruned.drafted <= 2 * pruned.nfe < full.drafted
        assert pruned.accepted > 0


def test_graph_json_round_trip():
    graph = default_graph(2, depth=2)
    again, key = spiffy.DraftGraph.from_json(graph.to_json(block_length=8, remasking="low_confidence"))
    assert again.nodes == graph.nodes and key == {"block_length": 8, "remasking": "low_confidence"}


def test_sampled_tokens_follow_the_tempered_softmax():
    # threshold 0 commits every draw at once, so the block = the 8 keyed Gumbel-max draws
    logits = 2.0 * torch.randn(8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts = torch.zeros(8, 16)
    n = 2000
    for seed in range(n):
        cfg = cfg_for("threshold", temperature=0.5, seed=seed, threshold=0.0)
        state = DLLMState(initial_state(PROMPTS[0], cfg).ids, 4)
        x = transition(state, logits, cfg).ids[4:12]
        counts[torch.arange(8), x] += 1
    tv = 0.5 * (counts / n - (logits / 0.5).softmax(-1)).abs().sum(-1)  # [8] per position
    tv_wrong_t = 0.5 * (counts / n - logits.softmax(-1)).abs().sum(-1)
    assert tv.max() < 0.05 and tv_wrong_t.min() > 0.1, (tv, tv_wrong_t)


def test_dual_cache_spiffy_equals_baseline(any_mdm):
    # full bidirectional attention, but prefix and suffix frozen per block (Fast-dLLM dual cache):
    # a draft copy then sees exactly what a stand-alone cached forward at its state sees
    accepted = {0.0: 0, 0.7: 0}
    for remasking in ("low_confidence", "threshold"):
        for temperature in accepted:
            for seed in (0, 1):
                cfg = cfg_for(remasking, temperature, seed, steps=16)
                base = generate_baseline(any_mdm, PROMPTS[seed], cfg, block_causal=False, dual_cache=True)
                spec = generate_spiffy(any_mdm, PROMPTS[seed], cfg, default_graph(1, 3), block_causal=False,
                                       dual_cache=True)
                assert spec.trajectory == base.trajectory and spec.nfe <= base.nfe
                accepted[temperature] += spec.accepted
    assert all(a > 0 for a in accepted.values()), accepted


def test_dual_cache_is_exact_only_when_block_causal(mdm):
    differs = []
    for seed in (0, 1, 2):
        cfg = cfg_for("low_confidence", 0.7, seed, steps=16)
        for block_causal in (True, False):
            plain = generate_baseline(mdm, PROMPTS[0], cfg, block_causal=block_causal)
            cached = generate_baseline(mdm, PROMPTS[0], cfg, block_causal=block_causal, dual_cache=True)
            if block_causal:
                assert cached.trajectory == plain.trajectory  # nothing later is visible: the cache is exact
            else:
                differs.append(cached.trajectory != plain.trajectory)  # stale suffix: an approximation
    assert any(differs)


def test_dual_cache_junk_drafts_leave_real_rows_unchanged(mdm):
    cfg = cfg_for("low_confidence")
    visible = base_visibility(4, 16, 8, block_causal=False)
    state = initial_state(PROMPTS[0], cfg)
    logits, cache = block_context(mdm, state, visible, cfg)
    torch.testing.assert_close(logits, block_logits(mdm, state, visible, cfg), rtol=0, atol=1e-10)
    state = transition(state, logits, cfg)
    drafts = spiffy.instantiate(default_graph(2, 3), logits, state, cfg)  # [D, 8]
    junk = torch.randint(0, V, drafts.shape, generator=torch.Generator().manual_seed(2))
    p, p_dd = spiffy.verify_forward(mdm, state, drafts, visible, cfg, cache)
    assert torch.equal(p, spiffy.verify_forward(mdm, state, junk, visible, cfg, cache)[0])
    torch.testing.assert_close(p, cached_block_logits(mdm, state, cache, cfg), rtol=0, atol=1e-10)
    for d, logits in zip(drafts, p_dd):
        ids = state.ids.clone()
        ids[state.block_slice(cfg)] = d
        alone = cached_block_logits(mdm, DLLMState(ids, state.prompt_len), cache, cfg)
        torch.testing.assert_close(logits, alone, rtol=0, atol=1e-10)
