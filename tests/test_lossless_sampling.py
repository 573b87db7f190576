"""T>0: outputs have the target's exact distribution.

- `draw` processes logits exactly like Hugging Face's temperature / top-k / top-p warpers;
- with the same seed, every method emits the very tokens AR emits (noise is keyed by position);
- a goodness-of-fit test on a tiny vocabulary: DFlash, DDTree and D²SD outputs against the target's
  exact distribution of 3-token continuations, enumerated;
- the same test rejects a planted biased verifier (the min(1, p/q) rule on a chosen tree).
"""


import pytest
import torch
from scipy import stats
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.engine import build_decoder
from specdiff.models.tiny import tiny_drafter, tiny_target
from specdiff.sampling import keyed_uniform, process_logits
from specdiff.target import HFTarget
from specdiff.types import DraftTree, VerifyResult

PROMPT = [1, 2, 3]
NEW = 3
SAMPLES = 3000


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 12, 0.6)])
def test_processing_matches_hf_warpers(temperature, top_k, top_p):
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * 3
    ours = process_logits(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    ref = torch.log_softmax(ref, dim=-1)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    keep = ~torch.isinf(ref)
    torch.testing.assert_close(ours[keep], ref[keep])


def test_keyed_uniforms_are_uniform_and_keyed():
    u = keyed_uniform(7, torch.arange(200), 500)
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    assert torch.equal(u[5], keyed_uniform(7, torch.tensor([5]), 500)[0])  # a pure function of the key
    assert not torch.equal(u, keyed_uniform(8, torch.arange(200), 500))
    assert abs(float(torch.corrcoef(torch.stack([u[:, 0], u[:, 1]]))[0, 1])) < 0.2


@pytest.fixture(scope="module")
def tiny_vocab():
    model = tiny_target("qwen3", vocab_size=8, hidden=32, layers=2, init_std=0.3, seed=3)
    drafter = tiny_drafter(model, block_size=4, seed=4, init_std=0.3)
    vp_drafter = tiny_drafter(model, block_size=4, seed=5, init_std=0.3)  # D²SD's second drafter
    return model, drafter, vp_drafter


def exact_distribution(model, sampling: SamplingConfig) -> dict[tuple[int, ...], float]:
    """P(x_1..x_NEW | PROMPT) under the processed target distribution, by enumeration."""
    vocab = model.config.vocab_size
    probs: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(NEW):
        prefixes = list(probs)
        with torch.inference_mode():
            logits = model(torch.tensor([PROMPT + list(p) for p in prefixes])).logits[:, -1]
        p_next = process_logits(logits, sampling).exp()
        probs = {pre + (t,): probs[pre] * float(p_next[i, t]) for i, pre in enumerate(prefixes) for t in range(vocab)}
    return probs


def sample_outputs(decoder, n: int) -> list[tuple[int, ...]]:
    out = []
    for seed in range(n):
        decoder.cfg.sampling.seed = seed
        out.append(tuple(decoder.generate(PROMPT).token_ids))
    return out


def gof_pvalue(samples: list[tuple[int, ...]], exact: dict[tuple[int, ...], float]) -> float:
    """Chi-square goodness of fit, pooling cells whose expected count is below 5."""
    n = len(samples)
    counts: dict[tuple[int, ...], int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    possible = {seq for seq, p in exact.items() if p > 0}
    assert set(counts) <= possible, "sampled an impossible sequence"
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for seq, p in exact.items():
        if p * n >= 5:
            obs.append(counts.get(seq, 0))
            exp.append(p * n)
        else:
            pool_o += counts.get(seq, 0)
            pool_e += p * n
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    total = sum(exp)
    exp = [e * n / total for e in exp]  # float32 probabilities: renormalise the rounding away
    return float(stats.chisquare(obs, exp).pvalue)


CASES = [("dflash", 1, SamplingConfig(temperature=1.0)), ("ddtree", 8, SamplingConfig(temperature=1.0)),
         ("ddtree", 6, SamplingConfig(temperature=0.8, top_k=6, top_p=0.9)), ("d2sd", 1, SamplingConfig(temperature=1.0))]
# (d2sd-hybrid verifies the same way; its same-seed test below shows it emits AR's very tokens)


@pytest.mark.parametrize("method,budget,sampling", CASES)
def test_distribution_matches_target(tiny_vocab, method, budget, sampling):
    model, drafter, vp_drafter = tiny_vocab
    cfg = DecodeConfig(method=method, budget=budget, max_new_tokens=NEW, sampling=sampling)
    dec = build_decoder(HFTarget(model), cfg, drafter, vp_drafter=vp_drafter)
    samples = sample_outputs(dec, SAMPLES)
    p = gof_pvalue(samples, exact_distribution(model, sampling))
    assert p > 1e-3, f"{method} output distribution differs from the target's (p={p:.2e})"


@pytest.mark.parametrize("method,budget", [("pld", 1), ("dflash", 1), ("ddtree", 4), ("ddtree", 32), ("d2sd", 1),
                                           ("d2sd-hybrid", 16)])
def test_same_seed_same_tokens_as_ar(qwen3_model, method, budget):
    drafter = tiny_drafter(qwen3_model, block_size=16)
    vp_drafter = tiny_drafter(qwen3_model, block_size=16, seed=2)
    target = HFTarget(qwen3_model)
    g = torch.Generator().manual_seed(9)
    for seed in range(6):
        prompt = torch.randint(0, 95, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
        sampling = SamplingConfig(temperature=0.9, top_k=40, top_p=0.95, seed=seed)
        ar = build_decoder(target, DecodeConfig(method="ar", max_new_tokens=30, sampling=sampling)).generate(prompt)
        cfg = DecodeConfig(method=method, budget=budget, max_new_tokens=30, sampling=SamplingConfig(**vars(sampling)))
        spec = build_decoder(target, cfg, drafter, vp_drafter=vp_drafter).generate(prompt)
        assert spec.token_ids == ar.token_ids


class PQVerifier:
    """PLANTED BUG: Leviathan's min(1, p/q) acceptance with residual resampling, applied to a
    tree that was chosen by argmax rather than sampled from q. Biased; the test must catch it."""

    def __init__(self, drafter):
        self.q_rows = None
        self.gen = torch.Generator().manual_seed(0)
        original = drafter.draft

        def draft(root, num_slots):
            logits = original(root, num_slots)
            self.q_rows = torch.softmax(logits.float(), dim=-1)
            return logits

        drafter.draft = draft

    def __call__(self, tree: DraftTree, logits, start, cfg) -> VerifyResult:
        p_rows = process_logits(logits, cfg).exp()
        children = tree.children()
        node, accepted, tokens = 0, [0], []
        while True:
            p = p_rows[node]
            kids = list(children[node].items())
            if kids:
                tok, child = kids[0]
                q = self.q_rows[int(tree.depths[child]) - 1]
                if float(torch.rand(1, generator=self.gen)) < min(1.0, float(p[tok] / q[tok])):
                    accepted.append(child)
                    tokens.append(tok)
                    node = child
                    continue
                p = torch.clamp(p - q, min=0)
                p = p / p.sum()
            tokens.append(int(torch.multinomial(p, 1, generator=self.gen)))
            return VerifyResult(accepted=accepted, tokens=tokens)


def test_planted_pq_verifier_is_caught(tiny_vocab):
    model, _, _ = tiny_vocab
    drafter = tiny_drafter(model, block_size=4, seed=4, init_std=0.3)  # own copy: draft is patched
    sampling = SamplingConfig(temperature=1.0)
    dec = build_decoder(HFTarget(model), DecodeConfig(method="dflash", max_new_tokens=NEW, sampling=sampling), drafter)
    dec.verifier = PQVerifier(drafter)
    p = gof_pvalue(sample_outputs(dec, SAMPLES), exact_distribution(model, sampling))
    assert p < 1e-6, f"the biased verifier went unnoticed (p={p:.2e})"


def test_draw_tree_equals_draw_per_row():
    """The per-depth noise of a tree's draw gives exactly the per-row draw's tokens."""
    from specdiff.config import SamplingConfig
    from specdiff.sampling import draw, draw_tree

    g = torch.Generator().manual_seed(3)
    depths = torch.tensor([0, 1, 1, 2, 3, 2, 1, 4])
    logits = torch.randn(8, 50, generator=g) * 3
    for cfg in (SamplingConfig(temperature=1.0, seed=5), SamplingConfig(temperature=0.7, top_k=10, top_p=0.9, seed=1),
                SamplingConfig()):
        for first in (0, 40, 60, 127):  # 60 and 127: the tree's positions span two cached noise blocks
            assert torch.equal(draw_tree(logits, first, depths, cfg), draw(logits, depths + first, cfg))


def test_cached_gumbel_blocks_are_the_keyed_noise():
    from specdiff.sampling import keyed_gumbel, keyed_uniform

    for seed, first, count in [(0, 0, 5), (3, 62, 9), (7, 1000, 16)]:
        want = -torch.log(-torch.log(keyed_uniform(seed, torch.arange(first, first + count), 30)))
        assert torch.equal(keyed_gumbel(seed, first, count, 30, torch.device("cpu")), want)
