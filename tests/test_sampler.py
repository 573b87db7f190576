"""The keyed sampler itself: uniforms strictly inside (0, 1) for every key, noise wide enough to
draw any token above PROB_FLOOR, filtered tokens never drawn at Qwen3's vocabulary, and
temperatures that are either refused or handled exactly.

Each property is also checked against a planted copy of the earlier 24-bit float32 sampler, whose
u = ((x >> 8) + 0.5) / 2^24 rounds to 1.0 for x >> 8 = 2^24 - 1 (infinite noise: a filtered token
wins) and whose noise spans 20 nats only.

SPECDIFF_SAMPLER_POSITIONS sets how many positions the filtered-token test draws (default 1,024
on the CPU; the GPU check runs 10^6), on CUDA when there is one.
"""

import math
import os

import pytest
import torch
from scipy import stats

from specdiff import sampling
from specdiff.config import MIN_TEMPERATURE, SamplingConfig
from specdiff.errors import SpecdiffError
from specdiff.sampling import (
    GRID_BITS, PROB_FLOOR, NoiseCache, draw, draw_tree, grid_uniform, gumbel, keyed_bits, keyed_noise, keyed_uniform,
    process_logits,
)

QWEN3_VOCAB = 151_936
POSITIONS = int(os.environ.get("SPECDIFF_SAMPLER_POSITIONS", "1024"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def old_keyed_noise(seed: int, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """PLANTED BUG: the earlier sampler's noise, a 24-bit float32 grid that reaches u = 1.0."""
    x = keyed_bits(seed, positions, vocab_size) & 0xFFFFFFFF
    u = ((x >> 8).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))


# -- the grid -----------------------------------------------------------------------------------


def test_every_grid_uniform_lies_strictly_inside_0_1_with_finite_noise():
    """A key's uniform is grid_uniform(m) for an int m in [0, 2^GRID_BITS), whatever the hash gave.
    That map is exact (2m + 1 < 2^53 is an integer float64 holds, scaled by a power of two) and
    increasing, and the logs are monotone, so the grid's two ends bound every key. Every m where
    rounding could reach 0 or 1 or saturate a log is enumerated: the 2^24 lowest and the 2^24
    highest. A million evenly spaced m show the map increases across the rest."""
    chunk, span, top = 1 << 22, 1 << 24, 1 << GRID_BITS
    for start in [*range(0, span, chunk), *range(top - span, top, chunk)]:
        m = torch.arange(start, start + chunk, dtype=torch.long)
        u = grid_uniform(m)
        assert torch.equal((u * 2.0 ** (GRID_BITS + 1) - 1) / 2, m.double())  # exact: m comes back
        assert float(u.min()) > 0.0 and float(u.max()) < 1.0
        assert bool((u[1:] > u[:-1]).all())
        g = gumbel(u)
        assert bool(torch.isfinite(g.float()).all()) and bool((g[1:] >= g[:-1]).all())
    m = torch.linspace(0, top - 1, 1 << 20, dtype=torch.float64).long()
    u = grid_uniform(m)
    assert bool((u[1:] > u[:-1]).all()) and float(u[0]) > 0.0 and float(u[-1]) < 1.0


def test_keyed_bits_fill_the_grid():
    """Every key maps into [0, 2^GRID_BITS), and each of its bits is a fair coin (both hash lanes
    feed it: a lane left out would leave bits at 0)."""
    bits = keyed_bits(11, torch.arange(300), 4000)
    assert int(bits.min()) >= 0 and int(bits.max()) < 1 << GRID_BITS
    ones = torch.stack([((bits >> b) & 1).double().mean() for b in range(GRID_BITS)])
    assert float((ones - 0.5).abs().max()) < 0.01


def test_keyed_uniforms_are_uniform_and_keyed():
    u = keyed_uniform(7, torch.arange(200), 500)
    assert u.dtype == torch.float64 and u.min() > 0 and u.max() < 1
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    assert torch.equal(u[5], keyed_uniform(7, torch.tensor([5]), 500)[0])  # a pure function of the key
    for other in (8, 7 + (1 << 32), -7):  # the seed's 64 bits all count
        assert not torch.equal(u, keyed_uniform(other, torch.arange(200), 500))
    assert abs(float(torch.corrcoef(torch.stack([u[:, 0], u[:, 1]]))[0, 1])) < 0.2  # neighbouring ids
    assert abs(float(torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1])) < 0.2  # neighbouring positions


def test_cpu_pieces_equal_one_pass():
    """The CPU computes the hash in cache-sized pieces; any piece size gives the same bits."""
    whole = keyed_bits(3, torch.arange(40), 3000)
    old = sampling._CPU_PIECE
    try:
        for piece in (1000, 1 << 12, 1 << 30):
            sampling._CPU_PIECE = piece
            assert torch.equal(keyed_bits(3, torch.arange(40), 3000), whole)
            assert torch.equal(keyed_noise(3, torch.arange(40), 3000), gumbel(grid_uniform(whole)).float())
    finally:
        sampling._CPU_PIECE = old


# -- what can be drawn --------------------------------------------------------------------------


def noise_ends(noise_fn) -> tuple[float, float]:
    """The smallest and largest noise a sampler can add: at the grid's ends (its map is monotone)."""
    bits = torch.tensor([0, (1 << GRID_BITS) - 1])
    if noise_fn is old_keyed_noise:
        u = torch.tensor([0.5, (1 << 24) - 1.5]) * (1.0 / (1 << 24))  # its ends short of u = 1.0
        g = -torch.log(-torch.log(u))
    else:
        g = gumbel(grid_uniform(bits)).float()
    return float(g[0]), float(g[1])


@pytest.mark.parametrize("noise_fn,drawable", [(keyed_noise, True), (old_keyed_noise, False)])
def test_a_token_at_the_floor_can_be_drawn(noise_fn, drawable):
    """A token of probability PROB_FLOOR next to one of 1 - PROB_FLOOR wins when its noise is the
    largest and the other's the smallest: the noise spans more than log(1 / PROB_FLOOR) nats."""
    lo, hi = noise_ends(noise_fn)
    logp = process_logits(torch.tensor([[0.0, math.log(PROB_FLOOR)]]), SamplingConfig(temperature=1.0))[0]
    wins = float(logp[1]) + hi > float(logp[0]) + lo
    assert wins == drawable, (lo, hi)


def test_a_rare_token_is_drawn_at_its_rate():
    """p = 1e-4 over a million positions: the count is Poisson(100)."""
    p, n = 1e-4, 1_000_000
    logits = torch.tensor([0.0, math.log(p / (1 - p))]).expand(n, 2)
    drawn = int(draw(logits, torch.arange(n), SamplingConfig(temperature=1.0, seed=5)).sum())
    assert stats.poisson.cdf(drawn, p * n) > 1e-4 and stats.poisson.sf(drawn - 1, p * n) > 1e-4, drawn


def filtered_draws(cfg: SamplingConfig, positions: int, vocab: int = QWEN3_VOCAB, stop_at_first: bool = False) -> int:
    """Draws through the walk's sampler (cached noise blocks) that landed on a filtered token."""
    gen = torch.Generator(DEVICE).manual_seed(0)
    noise = NoiseCache()
    hits = 0
    for p0 in range(0, positions, 64):
        n = min(64, positions - p0)
        logits = torch.randn(n, vocab, generator=gen, device=DEVICE) * 4
        tokens = draw_tree(logits, p0, torch.arange(n), cfg, noise)
        hits += int(torch.isinf(process_logits(logits, cfg).gather(1, tokens[:, None])).sum())
        if hits and stop_at_first:
            break
    return hits


@pytest.mark.parametrize("cfg,share", [
    (SamplingConfig(temperature=0.8, top_k=1, seed=848), 1.0),
    (SamplingConfig(temperature=1.0, top_k=50, seed=1), 0.125),
    (SamplingConfig(temperature=1.3, top_p=0.5, seed=2), 0.125),
])
def test_filtered_tokens_are_never_drawn(cfg, share):
    assert filtered_draws(cfg, max(64, int(POSITIONS * share))) == 0


def test_planted_sampler_that_draws_filtered_tokens_is_caught(monkeypatch):
    """The old sampler emits a filtered token at about V / 2^24 of the positions (0.9% here)."""
    monkeypatch.setattr(sampling, "keyed_noise", old_keyed_noise)
    assert filtered_draws(SamplingConfig(temperature=0.8, top_k=1, seed=848), 2048, stop_at_first=True) > 0


# -- temperature ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [math.inf, math.nan, -0.5, 1e-45, MIN_TEMPERATURE / 2])
def test_temperatures_outside_the_exact_range_are_refused(temperature):
    with pytest.raises(SpecdiffError, match="--temperature must be 0"):
        SamplingConfig(temperature=temperature).validate()


@pytest.mark.parametrize("temperature", [0.0, MIN_TEMPERATURE, 1e30])
def test_temperatures_in_range_are_accepted(temperature):
    SamplingConfig(temperature=temperature).validate()


def test_extreme_temperatures_are_handled_exactly():
    """At the smallest temperature the distribution is the exact limit: an even split over the tied
    maxima and probability 0 elsewhere (never NaN or +inf); at 1e30 it is uniform."""
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0], [50.0, -50.0, 49.9, 0.0]])
    logp = process_logits(logits, SamplingConfig(temperature=MIN_TEMPERATURE))
    assert not bool(torch.isnan(logp).any()) and not bool((logp == math.inf).any())
    assert torch.equal(logp.exp(), torch.tensor([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    tied = draw(logits[:1].expand(400, 4), torch.arange(400), SamplingConfig(temperature=MIN_TEMPERATURE, seed=3))
    assert set(tied.tolist()) == {1, 2}  # the noise still splits the tie
    flat = process_logits(logits, SamplingConfig(temperature=1e30))
    torch.testing.assert_close(flat, torch.full_like(flat, -math.log(4)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_greedy_tokens_in_the_logits_dtype_are_the_float32_argmax(dtype):
    """T=0 draws take the argmax in the logits' own dtype, without a float32 copy: the same tokens
    as the float32 log-probs' argmax, ties (frequent in bf16) to the first, as a tree's rows and
    `draw` both give."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(64, 500, generator=g) * 4).to(dtype)
    logits[:, 100] = logits[:, 7] = logits.float().amax(dim=-1).to(dtype) + 1  # a tie at the top: 7 wins
    cfg = SamplingConfig(temperature=0.0)
    want = sampling.process_logits(logits, cfg).argmax(dim=-1)
    assert torch.equal(want, torch.full((64,), 7))
    assert torch.equal(sampling.greedy_tokens(logits), want)
    depths = torch.zeros(64, dtype=torch.long)
    assert torch.equal(sampling.draw_tree(logits, 5, depths, cfg), want)
    assert torch.equal(sampling.draw(logits, torch.arange(64), cfg), want)
