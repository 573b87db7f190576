"""T>0: outputs have the target's exact distribution.

- `draw` processes logits exactly like Hugging Face's temperature / top-k / top-p warpers;
- with the same seed, every method emits the very tokens AR emits (noise is keyed by position):
  with the tiny random drafters, and with drafters that agree with the target (`oracle_drafters`),
  whose drafts are accepted (asserted), for every AR-drafter method;
- a goodness-of-fit test on a tiny vocabulary: every method's outputs, drafted by agreeing
  drafters (asserted: drafts were accepted), against the target's exact distribution of 3-token
  continuations, enumerated;
- planted bugs the tests must catch: a min(1, p/q) verifier on a chosen tree, noise shared
  across depths, the argmax accepted instead of the draw (the filtered-token sampler: test_sampler);
- end-of-text inside a tree and max_new_tokens mid-tree end the output at the exact token.
"""

import dataclasses

import pytest
import torch
from scipy import stats
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from specdiff import sampling as sampling_module
from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.engine import build_decoder
from specdiff.models.tiny import tiny_drafter, tiny_target
from specdiff.sampling import draw_tree, process_logits
from specdiff.target import HFTarget
from specdiff.types import DraftTree, VerifyResult
from specdiff.verify import verify_walk

from oracle_drafters import AR_DRAFTER_METHODS, oracle_decoder

PROMPT = [1, 2, 3]
NEW = 3
SAMPLES = 2000  # the fits are checked against p > 1e-3
SAMPLES_BUG = 500  # a planted bug must give p < 1e-6: each gave p < 1e-30 at this size


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


def sample_outputs(decoder, n: int) -> tuple[list[tuple[int, ...]], int]:
    """n decodes of PROMPT, seeds 0..n-1 -> (outputs, draft tokens accepted in all)."""
    out, accepted = [], 0
    for seed in range(n):
        decoder.cfg.sampling.seed = seed
        r = decoder.generate(PROMPT)
        out.append(tuple(r.token_ids))
        accepted += r.num_new_tokens - r.rounds
    return out, accepted


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


T1 = SamplingConfig(temperature=1.0)
CASES = [("dflash", 1, T1), ("ddtree", 8, T1), ("ddtree", 6, SamplingConfig(temperature=0.8, top_k=6, top_p=0.9)),
         ("ddtree-pld", 6, T1), ("caddtree", 1, T1), ("d2sd", 1, T1),
         ("d2sd-hybrid", 6, SamplingConfig(temperature=1.2, top_p=0.9))]


def agreeing_decoder(model, method: str, budget: int, sampling: SamplingConfig, verifier=None):
    """method's proposer over drafters whose marginals are the target's own (q = p plus noise),
    blind to the sampling noise: the shape of a well-trained drafter. The static engine (tested
    equal to HF's forward) for speed: the walk is what is under test."""
    return oracle_decoder(model, method, sampling, NEW, aware=False, budget=budget, block_size=4, verifier=verifier,
                          engine="static")


@pytest.mark.parametrize("method,budget,sampling", CASES)
def test_distribution_matches_target(tiny_vocab, method, budget, sampling):
    model = tiny_vocab[0]
    samples, accepted = sample_outputs(agreeing_decoder(model, method, budget, sampling), SAMPLES)
    assert accepted > SAMPLES // 2, f"{method}: only {accepted} drafts accepted, the test has no power"
    p = gof_pvalue(samples, exact_distribution(model, sampling))
    assert p > 1e-3, f"{method} output distribution differs from the target's (p={p:.2e})"


def shared_noise_across_depths(keyed_gumbel):
    """PLANTED BUG: every depth of a tree drawn with the first depth's noise."""

    def planted(seed, first_position, count, vocab_size, device, cache=None):
        return keyed_gumbel(seed, first_position, 1, vocab_size, device, cache).expand(count, vocab_size)

    return planted


def argmax_accepted_walk(tree: DraftTree, logits, start, cfg, noise=None) -> VerifyResult:
    """PLANTED BUG: a child is accepted when it is the target's argmax, not its draw; the draw is
    emitted only where no child matches."""
    greedy = logits.argmax(dim=-1).tolist()
    draws = draw_tree(logits, start + 1, tree.depths, cfg, noise).tolist()
    children = tree.children()
    node, accepted, tokens = 0, [0], []
    while True:
        child = children[node].get(greedy[node])
        if child is None:
            tokens.append(draws[node])
            return VerifyResult(accepted=accepted, tokens=tokens)
        tokens.append(greedy[node])
        accepted.append(child)
        node = child


@pytest.mark.parametrize("bug", ["shared noise across depths", "argmax accepted"])
def test_goodness_of_fit_catches_planted_bugs(tiny_vocab, monkeypatch, bug):
    model = tiny_vocab[0]
    verifier = argmax_accepted_walk if bug == "argmax accepted" else None
    if bug == "shared noise across depths":
        monkeypatch.setattr(sampling_module, "keyed_gumbel", shared_noise_across_depths(sampling_module.keyed_gumbel))
    dec = agreeing_decoder(model, "ddtree", 8, T1, verifier)
    samples, _ = sample_outputs(dec, SAMPLES_BUG)
    p = gof_pvalue(samples, exact_distribution(model, T1))
    assert p < 1e-6, f"{bug} went unnoticed (p={p:.2e})"


@pytest.mark.parametrize("method,budget", [("pld", 1), ("dflash", 1), ("ddtree", 4), ("ddtree", 32), ("ddtree-pld", 16),
                                           ("d2sd", 1), ("d2sd-hybrid", 16)])
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


@pytest.mark.parametrize("engine", ["hf", "graph"])
def test_overlapped_ar_draws_the_tokens_of_one_step_at_a_time(qwen3_model, monkeypatch, engine):
    """AR's overlapped loop (the default) draws each token with its own position's noise: the
    tokens of the step-by-step loop with the same seed. Keying its draws one position late
    (planted) is caught."""
    import specdiff.decode as decode_module

    g = torch.Generator().manual_seed(4)
    cases = []
    for seed in range(4):
        prompt = torch.randint(0, 95, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
        cases.append((prompt, SamplingConfig(temperature=0.9, top_k=40, top_p=0.95, seed=seed)))

    def tokens(overlap: bool) -> list[list[int]]:
        out = []
        for prompt, sampling in cases:
            cfg = DecodeConfig(method="ar", max_new_tokens=30, engine=engine, overlap=overlap, sampling=sampling)
            dec = build_decoder(qwen3_model, cfg)
            assert dec._overlaps == overlap
            out.append(dec.generate(prompt).token_ids)
        return out

    step_by_step = tokens(False)
    assert tokens(True) == step_by_step
    late = lambda logits, first, *a, **k: draw_tree(logits, first + 1, *a, **k)  # noqa: E731
    monkeypatch.setattr(decode_module, "draw_tree", late)
    assert sum(a != b for a, b in zip(tokens(True), step_by_step)) >= 3


def sampled_prompts(method: str, n: int = 4, seed: int = 9) -> list[list[int]]:
    """Random prompts; repeated for the methods that look the context up, which pld drafts from
    alone and ddtree-pld beside its drafter."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(0, 95, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        out.append(p * 3 if method in ("pld", "ddtree-pld") else p)
    return out


def oracle_sampling(method: str, seed: int) -> SamplingConfig:
    # prompt lookup needs a target that repeats itself: a top-2 filter at T=1 makes it loop
    if method == "pld":
        return SamplingConfig(temperature=1.0, top_k=2, seed=seed)
    return SamplingConfig(temperature=0.9, top_k=40, top_p=0.95, seed=seed)


def ar_tokens(model, prompt, sampling, max_new, eos_ids=()):
    dec = build_decoder(HFTarget(model), DecodeConfig(method="ar", max_new_tokens=max_new, sampling=sampling),
                        eos_ids=eos_ids)
    return dec.generate(prompt)


def same_seed_mismatches(model, method: str, aware: bool = True, verifier=None) -> tuple[int, int]:
    """(outputs different from AR's, draft tokens accepted) over a few prompts and seeds."""
    mismatches = accepted = 0
    for seed, prompt in enumerate(sampled_prompts(method)):
        sampling = oracle_sampling(method, seed)
        ar = ar_tokens(model, prompt, sampling, 30)
        r = oracle_decoder(model, method, sampling, 30, aware=aware, verifier=verifier).generate(prompt)
        mismatches += r.token_ids != ar.token_ids
        accepted += r.num_new_tokens - r.rounds
    return mismatches, accepted


@pytest.mark.parametrize("method", AR_DRAFTER_METHODS)
def test_agreeing_drafters_give_ars_tokens_at_t_above_0(qwen3_model, method):
    """Drafts that the target accepts (its own sampled continuation, plus noise) at T>0: every
    accepted token must be AR's, and enough are accepted for that to mean something."""
    mismatches, accepted = same_seed_mismatches(qwen3_model, method)
    assert mismatches == 0
    assert accepted >= (10 if method == "pld" else 40), f"{method}: only {accepted} draft tokens accepted"


@pytest.mark.parametrize("bug", ["shared noise across depths", "argmax accepted"])
def test_same_seed_check_catches_planted_bugs(qwen3_model, monkeypatch, bug):
    if bug == "shared noise across depths":
        monkeypatch.setattr(sampling_module, "keyed_gumbel", shared_noise_across_depths(sampling_module.keyed_gumbel))
        mismatches, _ = same_seed_mismatches(qwen3_model, "ddtree")
    else:  # a drafter blind to the noise proposes argmaxes, which the planted walk accepts
        mismatches, _ = same_seed_mismatches(qwen3_model, "ddtree", aware=False, verifier=argmax_accepted_walk)
    assert mismatches >= 2, f"{bug} went unnoticed"


class RecordingWalk:
    """The real walk, recording each round's root position and emitted tokens."""

    def __init__(self):
        self.rounds: list[tuple[int, list[int]]] = []

    def __call__(self, tree, logits, start, cfg, noise=None):
        result = verify_walk(tree, logits, start, cfg, noise)
        self.rounds.append((start, result.tokens))
        return result


def overdrafting(proposer) -> None:
    """A proposer that drafts as deep as it can, ignoring the tokens left: the loop must clip."""
    propose = proposer.propose
    proposer.propose = lambda state: propose(dataclasses.replace(state, max_depth=64))


def multi_token_rounds(model, method: str, prompt: list[int], sampling: SamplingConfig) -> tuple[list[int], list]:
    """A free oracle decode of 30 tokens -> (its tokens, [(offset of a round's first token, the
    round's tokens)] for the rounds that emitted more than one)."""
    walk = RecordingWalk()
    r = oracle_decoder(model, method, sampling, 30, verifier=walk).generate(prompt)
    return r.token_ids, [(start + 1 - len(prompt), tokens) for start, tokens in walk.rounds if len(tokens) > 1]


@pytest.mark.parametrize("method", AR_DRAFTER_METHODS)
def test_eos_and_max_new_tokens_end_a_round_mid_tree_at_t_above_0(qwen3_model, method):
    """At T>0 a round's accepted path may run past end-of-text or past max_new_tokens: the output
    still ends at the exact token AR ends at, and such rounds did occur (asserted).

    Each prompt is extended by AR's own tokens up to a round that emitted several (noise is keyed
    by position, so AR then continues with the rest of its tokens): that round comes first, and
    end-of-text and max_new_tokens are set inside it."""
    eos_inside = clipped = 0
    for seed, prompt in enumerate(sampled_prompts(method, n=3, seed=4)):
        sampling = oracle_sampling(method, seed)
        free = ar_tokens(qwen3_model, prompt, sampling, 30).token_ids
        spec_free, rounds = multi_token_rounds(qwen3_model, method, prompt, sampling)
        assert spec_free == free and rounds, "no round emitted two tokens"
        o, tokens = rounds[0]
        prompt, rest = prompt + free[:o], free[o:]
        j = max(j for j in range(len(tokens) - 1) if rest[j] not in rest[:j])  # first occurrence, not last
        eos = rest[j]
        ref = ar_tokens(qwen3_model, prompt, sampling, 30, eos_ids=[eos])
        assert ref.token_ids == rest[: j + 1] and ref.stop_reason == "eos"
        walk = RecordingWalk()
        r = oracle_decoder(qwen3_model, method, sampling, 30, eos_ids=[eos], verifier=walk).generate(prompt)
        assert r.token_ids == ref.token_ids and r.stop_reason == "eos"
        eos_inside += any(eos in emitted[:-1] for _, emitted in walk.rounds)

        walk = RecordingWalk()
        dec = oracle_decoder(qwen3_model, method, sampling, j + 1, verifier=walk)
        overdrafting(dec.proposer)
        r = dec.generate(prompt)
        assert r.token_ids == rest[: j + 1] and r.stop_reason == "length"
        clipped += any(len(emitted) > j + 1 - (start + 1 - len(prompt)) for start, emitted in walk.rounds)
    assert eos_inside > 0, "no round accepted past end-of-text: the case is untested"
    assert clipped > 0, "no round ran past max_new_tokens: the case is untested"


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

    def __call__(self, tree: DraftTree, logits, start, cfg, noise=None) -> VerifyResult:
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
    cfg = DecodeConfig(method="dflash", max_new_tokens=NEW, sampling=sampling, engine="static")
    dec = build_decoder(model, cfg, drafter)
    dec.verifier = PQVerifier(drafter)
    samples, accepted = sample_outputs(dec, SAMPLES_BUG)
    assert accepted > 0
    p = gof_pvalue(samples, exact_distribution(model, sampling))
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
    from specdiff.sampling import NoiseCache, gumbel, keyed_gumbel, keyed_uniform

    cache = NoiseCache(blocks=2)
    for seed, first, count in [(0, 0, 5), (3, 62, 9), (7, 1000, 16), (0, 0, 5)]:
        want = gumbel(keyed_uniform(seed, torch.arange(first, first + count), 30)).float()
        assert torch.equal(keyed_gumbel(seed, first, count, 30, torch.device("cpu")), want)
        assert torch.equal(keyed_gumbel(seed, first, count, 30, torch.device("cpu"), cache), want)
    assert len(cache._store) == 2  # the oldest blocks were let go
