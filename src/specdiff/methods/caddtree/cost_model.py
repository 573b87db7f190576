"""Measured cost of a round: drafter pass C_d and verification C_v(n, context length).

`CostProfile` is what `specdiff profile` measures on one device for one (target, drafter) pair
and saves as JSON. Each context length's verify curve is fitted monotone (more nodes never cost
less) and convex (the marginal cost of a node never falls), which makes the cost-aware objective
unimodal; lookups interpolate linearly in context length and extrapolate linearly in n.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from specdiff.errors import SpecdiffError


class RoundOverhead:
    """What a whole decode round costs beyond the profile's C_d + C_v(n), measured online.

    The profile times the drafter step and the target step apart, each at its fastest; a real
    round also pays the loop's own host work between them (the proposer's update, the bookkeeping
    of the decode loop, the gaps between syncs). That part is about constant per round (0.6 ms on
    an H100 host, a quarter of a round), and a constant added to every tree size favours larger
    trees, so caddtree adds it. `observe` takes each round's wall time against its predicted cost;
    the estimate is an exponential moving average of the residual, each residual clipped to the
    predicted cost so that one stalled round (a GC pause) moves it little."""

    def __init__(self, weight: float = 0.05):
        self.weight = weight
        self.ms = 0.0  # current estimate
        self.rounds = 0  # rounds observed

    def observe(self, wall_ms: float, predicted_ms: float) -> None:
        residual = min(max(wall_ms - predicted_ms, -0.5 * predicted_ms), predicted_ms)
        w = max(self.weight, 1.0 / (self.rounds + 1))  # a plain mean until the EMA's horizon
        self.ms += w * (residual - self.ms)
        self.rounds += 1


class DecodeRate:
    """caddtree's lam: the tokens per ms a decode expects to run at, for the decode horizon.

    A round's own ratio (1 + Phi(n)) / C(n) peaks where a node's delta equals that round's ratio
    times its marginal cost, so a confident round (high ratio) stops early and an unsure one grows
    wide: the wrong way round for the decode's tokens per ms, sum(1 + Phi) / sum(C), which a round
    raises by adding a node exactly when delta > lam * its marginal cost, lam being that decode
    ratio (renewal-reward; Dinkelbach's iteration for a ratio of sums). `observe` takes each
    chosen round's expected tokens and predicted cost, in the units the choice uses (the
    drafter's Phi, the profile's cost), so a miscalibrated drafter moves both sides alike; lam is
    the ratio of their moving averages, and 0 (the round's own ratio) before the first round."""

    def __init__(self, weight: float = 0.02):
        self.weight = weight
        self.tokens = self.ms = 0.0  # moving averages per round
        self.rounds = 0

    @property
    def lam(self) -> float:
        return self.tokens / self.ms if self.rounds else 0.0

    def observe(self, tokens: float, ms: float) -> None:
        w = max(self.weight, 1.0 / (self.rounds + 1))  # a plain mean until the average's horizon
        self.tokens += w * (tokens - self.tokens)
        self.ms += w * (ms - self.ms)
        self.rounds += 1


def fit_monotone_convex(n: list[float], y: list[float]) -> list[float]:
    """Least-squares-ish projection of (n, y) onto non-decreasing convex curves.

    Slopes between grid points are made non-negative and non-decreasing by weighted isotonic
    regression (pool-adjacent-violators), then the intercept is refit by least squares.
    """
    x, v = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return v.tolist()
    dx = np.diff(x)
    slopes = np.maximum(np.diff(v) / dx, 0.0)
    blocks = [[s, w, 1] for s, w in zip(slopes, dx)]  # [mean slope, weight, count]
    merged: list[list[float]] = []
    for b in blocks:
        merged.append(b)
        while len(merged) > 1 and merged[-2][0] > merged[-1][0]:
            s2, w2, c2 = merged.pop()
            s1, w1, c1 = merged.pop()
            merged.append([(s1 * w1 + s2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    fitted = np.concatenate([[s] * int(c) for s, _, c in merged])
    shape = np.concatenate([[0.0], np.cumsum(fitted * dx)])
    intercept = float(np.mean(v - shape))
    return (shape + intercept).tolist()


def fit_verify_row(n: list[int], y: list[float]) -> list[float]:
    """One context's fitted C_v row: monotone convex from 2 nodes up, where every step builds,
    walks and commits a tree; the 1-node step (no tree) kept as measured, capped by the 2-node
    cost. A convex fit through both would lift the 1-node cost and flatten the slope where trees
    are chosen (measured: 0.79 -> 1.15 ms at 1 node, bf16 on an H100)."""
    if len(n) >= 3 and n[0] == 1:
        rest = fit_monotone_convex(n[1:], y[1:])
        return [min(y[0], rest[0])] + rest
    return fit_monotone_convex(n, y)


@dataclass(frozen=True, eq=False)
class CostProfile:
    """A device's measured costs, fitted; immutable once made (`dataclasses.replace` makes another).
    Reads at a size or a set of sizes are memoised per profile (`memo`): a round's host time is
    round time on a GPU."""

    device: str
    target: str
    drafter: str
    dtype: str
    draft_ms: float  # one drafter pass
    contexts: list[int]  # context lengths measured, increasing
    nodes: list[int]  # tree sizes measured (root included), increasing
    verify_ms: list[list[float]]  # [context][nodes], fitted
    raw_verify_ms: list[list[float]] = field(default_factory=list)  # minima as measured
    # node-count buckets the engine pads a tree to (graph engine), or [] when cost is per node
    buckets: list[int] = field(default_factory=list)
    # "rounds": C_d + C_v(n) is a whole decode round as measured; "steps": the two steps timed apart
    measure: str = "steps"
    # [context]: caddtree's root-alone step, which fetched candidates before choosing ([] in
    # profiles made before it was measured: priced as C_v(1))
    root_alone_ms: list[float] = field(default_factory=list)
    # one pass of the VP drafter over D²SD's `redraft_rows` branch rows (with its context
    # extension), where the profile was made with a VP drafter (0: not measured). caddtree never
    # pays it; `bench.round_costs` prices D²SD's rounds with it
    redraft_ms: float = 0.0
    redraft_rows: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memo", {})  # not a field: never saved, compared or copied

    def memo(self, key: tuple, make):
        """The value `make()` gave for `key` on this profile, made once."""
        if key not in self._memo:
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[key] = make()
        return self._memo[key]

    def verify(self, n: int, context: int) -> float:
        """C_v(n, l) in ms: linear in l between measured contexts, linear in n beyond the grid."""
        rows = self.memo(("at_n", n), lambda: [self._at_n(row, n) for row in self.verify_ms])  # per context
        i0, i1, t = _blend(self.contexts, context)
        return rows[i0] + (rows[i1] - rows[i0]) * t

    def root_alone(self, context: int) -> float:
        """The step of a round that keeps the root alone after searching the candidates, in ms
        (linear in context between the measured ones, flat outside them)."""
        if len(self.root_alone_ms) != len(self.contexts):
            return self.verify(1, context)
        cs, ys = self.contexts, self.root_alone_ms
        i0, i1, t = _blend(cs, min(max(context, cs[0]), cs[-1]))
        return ys[i0] + (ys[i1] - ys[i0]) * t

    def tree_step(self, n: int, context: int) -> float:
        """The target step of a drafted round whose tree has n nodes (root included), as the engine
        runs it: the root alone after the candidate fetch, else C_v at the bucket the tree pads to
        (or at n itself on an unpadded engine)."""
        if n == 1:
            return self.root_alone(context)
        return self.verify(next((b for b in self.buckets if b >= n), n), context)

    def costs_at(self, context: int, sizes: tuple[int, ...]) -> list[float]:
        """[C_v(n, context) for n in sizes] as `verify` gives them. caddtree asks once per round for
        the sizes it compares (a round's host time is round time on a GPU): the rows at those
        sizes are cached, and a round pays one interpolation in context over len(sizes) values."""
        rows = self.memo(("sizes", sizes), lambda: [[self._at_n(row, n) for n in sizes] for row in self.verify_ms])
        i0, i1, t = _blend(self.contexts, context)
        return [a + (b - a) * t for a, b in zip(rows[i0], rows[i1])]

    def _at_n(self, row: list[float], n: int) -> float:
        xs = self.nodes
        if n <= xs[0]:
            return row[0]
        i = min(bisect.bisect_right(xs, n), len(xs) - 1)
        x0, x1 = xs[i - 1], xs[i]
        return row[i - 1] + (row[i] - row[i - 1]) * (n - x0) / (x1 - x0)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))

    @staticmethod
    def load(path: Path) -> CostProfile:
        if not path.is_file():
            raise SpecdiffError(f"cost profile not found: {path} (make one with `specdiff profile`)")
        try:
            return CostProfile(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise SpecdiffError(f"cost profile {path} is not a specdiff profile ({e})") from None


def _blend(contexts: list[int], context: int) -> tuple[int, int, float]:
    """(i0, i1, t): a value measured per context, v, is v[i0] + (v[i1] - v[i0]) * t at `context`:
    linear between measured contexts, extrapolated linearly past the last, flat before the first."""
    if len(contexts) == 1 or context <= contexts[0]:
        return 0, 0, 0.0
    if context >= contexts[-1]:
        return len(contexts) - 2, len(contexts) - 1, 1 + (context - contexts[-1]) / (contexts[-1] - contexts[-2])
    i = bisect.bisect_right(contexts, context)
    return i - 1, i, (context - contexts[i - 1]) / (contexts[i] - contexts[i - 1])
