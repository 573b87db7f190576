"""Spiffy's answers follow the baseline decoder's exact law at T > 0 (research notes, 6b).

On a case small enough to enumerate (two tokens, six answer positions in blocks of three, one
token per step), the exact law of the final answer under the baseline is computed state by state:
token draws are independent per position (Gumbel-max at logits / T = sampling softmax(logits / T)),
then the commit rule picks positions, by the untempered probability of the drawn tokens
(low_confidence: every joint draw enumerated, the same top-k as `transition`) or uniformly
(random: every k-subset equally likely). Baseline and Spiffy runs with distinct seeds are then
independent samples, checked by a chi-square goodness-of-fit test against that law; planted bugs in
Spiffy must be rejected by the same test. SPECDIFF_DIST_N sets the number of runs per sample.

The coupled check (notes 6a) is cheaper and sharper where it applies: with the same seed, Spiffy's
state trajectory is the baseline's; the same planted bugs, and a stale context for the drafts under
the dual cache, must break it.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter

import pytest
import torch
from dllm_bugs import accepts_on_positions, draws_at_t1, stale_draft_context
from scipy.stats import chisquare

from specdiff.dllm import DLLMConfig, base_visibility, default_graph, generate_baseline, generate_spiffy, tiny_mdm
from specdiff.dllm.decoding import DLLMState, block_logits, initial_state, token_logits

V, MASK = 2, 2  # two tokens; [MASK] is an input id outside the output vocabulary
PROMPT = torch.tensor([0, 1])
TEMPERATURE = 0.6  # not 1: a draw at the wrong temperature must show
N = int(os.environ.get("SPECDIFF_DIST_N", 700))  # runs per sample: about 5-10 ms each on one core
N_BUG = 300
ALPHA = 1e-3
GRAPH = default_graph(1, depth=2)  # after a block's first step: {(0,0)}, {(1,0)}, {(0,1)}, 3 of the 4 next states


class PairModel:
    """A cheap context-dependent model that honours the visibility mask: the logits at row q are a
    bias for its position plus one term per other row k it sees, W[pos q, pos k, id k]."""

    def __init__(self, length: int, scale: float = 1.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.bias = scale * torch.randn(length, V, generator=g, dtype=torch.float64)
        self.W = scale * torch.randn(length, length, MASK + 1, V, generator=g, dtype=torch.float64)

    def __call__(self, ids, visible, position_ids):
        pos = position_ids
        terms = self.W[pos[:, :, None], pos[:, None, :], ids[:, None, :]]  # [B, Q, K, V]
        others = visible & ~torch.eye(visible.shape[1], dtype=torch.bool)  # [B, Q, K]
        return self.bias[pos] + (terms * others[..., None]).sum(2)


MODEL = PairModel(len(PROMPT) + 6)


def cfg_for(remasking: str, seed: int = 0, temperature: float = TEMPERATURE) -> DLLMConfig:
    return DLLMConfig(gen_length=6, block_length=3, steps=6, remasking=remasking, temperature=temperature,
                      seed=seed, mask_id=MASK)


def kernel(state: DLLMState, logits: torch.Tensor, cfg: DLLMConfig) -> list[tuple[DLLMState, float]]:
    """The baseline's one-step law from `state` given its block logits [m, V]: (next state, prob)."""
    sl = state.block_slice(cfg)
    x = state.ids[sl]
    masked = (x == cfg.mask_id).nonzero()[:, 0].tolist()
    k = min(cfg.num_transfer(state.step), len(masked))
    lg = token_logits(logits, cfg)
    p_draw = (lg / cfg.temperature).softmax(dim=-1)  # [m, V] the law of a keyed Gumbel-max draw
    out = []

    def commit(positions, tokens, p):
        ids = state.ids.clone()
        ids[sl.start + torch.tensor(positions, dtype=torch.long)] = torch.tensor(tokens)
        done = not (ids[sl] == cfg.mask_id).any()
        out.append((DLLMState(ids, state.prompt_len, state.block + done, 0 if done else state.step + 1), p))

    if cfg.remasking == "random":  # uniform scores: every k-subset of the masked positions alike
        subsets = list(itertools.combinations(masked, k))
        for chosen in subsets:
            for tokens in itertools.product(range(V), repeat=k):
                p = math.prod(float(p_draw[i, t]) for i, t in zip(chosen, tokens)) / len(subsets)
                commit(chosen, tokens, p)
        return out
    for draws in itertools.product(range(V), repeat=len(masked)):  # low_confidence: every joint draw
        x0 = torch.zeros(x.shape[0], dtype=torch.long)
        x0[masked] = torch.tensor(draws)
        conf = lg.softmax(dim=-1).gather(-1, x0[:, None])[:, 0]  # untempered, as `transition`
        conf = conf.masked_fill(x != cfg.mask_id, float("-inf"))
        chosen = torch.topk(conf, k).indices.tolist()  # the same top-k, ties included
        commit(chosen, x0[chosen].tolist(), math.prod(float(p_draw[i, t]) for i, t in zip(masked, draws)))
    return out


def exact_law(cfg: DLLMConfig) -> dict[tuple[int, ...], float]:
    """The baseline's law of the answer, by pushing probability through every reachable state."""
    start = initial_state(PROMPT, cfg)
    visible = base_visibility(start.prompt_len, cfg.gen_length, cfg.block_length, block_causal=True)
    frontier, law = {start.key(): (start, 1.0)}, Counter()
    while frontier:
        following: dict = {}
        for state, p in frontier.values():
            if state.block == cfg.num_blocks:
                law[tuple(state.ids[state.prompt_len:].tolist())] += p
                continue
            for nxt, q in kernel(state, block_logits(MODEL, state, visible, cfg), cfg):
                key = nxt.key()
                following[key] = (nxt, following.get(key, (nxt, 0.0))[1] + p * q)
        frontier = following
    return dict(law)


def sample(remasking: str, n: int, first_seed: int, spec: bool) -> tuple[Counter, float]:
    """n runs with seeds first_seed, first_seed + 1, ... -> (answer counts, accepted / steps)."""
    counts, accepted, steps = Counter(), 0, 0
    for seed in range(first_seed, first_seed + n):
        cfg = cfg_for(remasking, seed)
        r = generate_spiffy(MODEL, PROMPT, cfg, GRAPH) if spec else generate_baseline(MODEL, PROMPT, cfg)
        counts[tuple(r.token_ids.tolist())] += 1
        accepted, steps = accepted + r.accepted, steps + r.steps
    return counts, accepted / steps


def p_value(counts: Counter, law: dict, n: int) -> float:
    """Chi-square goodness of fit; answers expected fewer than 5 times are pooled into one cell."""
    assert set(counts) <= set(law)
    big = [a for a in law if law[a] * n >= 5]
    small = [a for a in law if law[a] * n < 5]
    observed = [counts[a] for a in big] + [sum(counts[a] for a in small)]
    expected = [law[a] * n for a in big] + [sum(law[a] for a in small) * n]
    if not small:
        observed, expected = observed[:-1], expected[:-1]
    return float(chisquare(observed, expected).pvalue)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # thousands of decodes of a toy model: all small ops, which a second thread only slows down
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def laws():
    return {r: exact_law(cfg_for(r)) for r in ("low_confidence", "random")}


def test_exact_law_is_a_distribution(laws):
    for law in laws.values():
        assert len(law) == V ** 6 and abs(sum(law.values()) - 1.0) < 1e-12
        assert min(law.values()) > 0
    # the two commit rules, and the temperature, give visibly different laws: the test has power
    tv = 0.5 * sum(abs(laws["low_confidence"][a] - laws["random"][a]) for a in laws["random"])
    hot = exact_law(cfg_for("low_confidence", temperature=1.0))
    tv_hot = 0.5 * sum(abs(laws["low_confidence"][a] - hot[a]) for a in hot)
    assert tv > 0.05 and tv_hot > 0.1, (tv, tv_hot)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_baseline_follows_the_exact_law(laws, remasking):
    counts, _ = sample(remasking, N, first_seed=0, spec=False)
    assert p_value(counts, laws[remasking], N) > ALPHA


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_spiffy_follows_the_exact_law(laws, remasking):
    counts, acceptance = sample(remasking, N, first_seed=1_000_000, spec=True)
    assert acceptance > 0.2  # drafts were taken: a fair share of steps used draft logits
    assert p_value(counts, laws[remasking], N) > ALPHA


@pytest.mark.parametrize("remasking,bug", [("low_confidence", draws_at_t1), ("low_confidence", accepts_on_positions),
                                           ("random", accepts_on_positions)])
def test_planted_bugs_are_rejected(laws, monkeypatch, remasking, bug):
    bug(monkeypatch)
    counts, _ = sample(remasking, N_BUG, first_seed=2_000_000, spec=True)
    assert p_value(counts, laws[remasking], N_BUG) < ALPHA


def _coupled(model, cfgs, mode: dict, graph=GRAPH, prompt=PROMPT) -> list[bool]:
    """Per config: does Spiffy take the baseline's state trajectory (same seed, same keyed noise)?"""
    return [generate_spiffy(model, prompt, c, graph, **mode).trajectory
            == generate_baseline(model, prompt, c, **mode).trajectory for c in cfgs]


@pytest.mark.parametrize("bug", [None, draws_at_t1, accepts_on_positions])
def test_coupled_trajectories(monkeypatch, bug):
    cfgs = [cfg_for(r, seed) for r in ("low_confidence", "random") for seed in range(15)]
    if bug is not None:
        bug(monkeypatch)
    same = _coupled(MODEL, cfgs, {})
    assert all(same) if bug is None else not all(same)


@pytest.mark.parametrize("bug", [None, stale_draft_context])
def test_coupled_trajectories_dual_cache(monkeypatch, bug):
    model = tiny_mdm(vocab_size=8, hidden=16, seed=2)  # [MASK] = 7, inside the vocabulary
    cfgs = [DLLMConfig(gen_length=8, block_length=4, steps=8, temperature=0.7, seed=s, mask_id=7) for s in range(6)]
    if bug is not None:
        bug(monkeypatch)
    mode = dict(block_causal=False, dual_cache=True)
    same = _coupled(model, cfgs, mode, default_graph(1, 2), torch.tensor([1, 2, 3]))
    assert all(same) if bug is None else not all(same)
