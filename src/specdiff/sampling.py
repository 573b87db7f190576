"""How the target's tokens are drawn: logit processing and position-keyed sampling noise.

Processing follows Hugging Face's sampling warpers in their order (temperature, then top-k, then
top-p), so "plain AR sampling" and every verifier see the same distribution.

Sampling is Gumbel-max with noise that is a pure function of (seed, position, token id): the token
at absolute position p is `argmax(logprobs + g(seed, p))`. Every emitted token of a speculative
round is drawn this way at its own position, from the target's distribution given the accepted
prefix, so a speculative run emits exactly the tokens that AR emits with the same seed, at any
temperature, and the output has the target's distribution. No generator state is carried between
calls, so the noise does not depend on how many model calls a method makes.

The noise comes from uniforms on a 2^52-point grid strictly inside (0, 1) (GRID_BITS): finite for
every key, so filtered tokens are never drawn, and 40 nats wide, so every token above PROB_FLOOR
is drawn at its probability (docs/design.md, "What the target's distribution means").
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

import torch

from specdiff.config import SamplingConfig
from specdiff.ops import device_index

_M32 = 0xFFFFFFFF


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """[..., V] logits -> [..., V] float32 log-probabilities after temperature, top-k and top-p.

    Filtered tokens get -inf. At temperature 0 the logits are returned as float32 (argmax only).
    """
    scores = logits.float()
    if cfg.greedy:
        return scores
    if cfg.temperature != 1.0:  # x / 1.0 == x: skip a kernel
        # shifted by the row's max first: the same distribution, and no overflow at a small T (the
        # max becomes 0, the others finite or -inf, never inf or NaN; SamplingConfig bounds T)
        scores = (scores - scores.amax(dim=-1, keepdim=True)) / cfg.temperature
    if 0 < cfg.top_k < scores.shape[-1]:
        # HF TopKLogitsWarper: drop everything below the k-th largest value (ties are kept)
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        # HF TopPLogitsWarper: sort ascending, drop the low tail whose mass is <= 1 - top_p,
        # always keep the most likely token
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1.0 - cfg.top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors holding values in [0, 2^32).

    Multipliers are odd and below 2^31, so every product stays below 2^63: no signed overflow.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x297A2D39) & _M32
    return x ^ (x >> 15)


# The uniforms lie on the grid u = (2m + 1) / 2^53, m in [0, 2^GRID_BITS). 2m + 1 < 2^53 is exact
# in float64, so every key gives 2^-53 <= u <= 1 - 2^-53: the Gumbel noise -log(-log u) is finite
# (-3.61 .. 36.74) and a filtered token (log-prob -inf) can never win.
GRID_BITS = 52
# The noise spans 40.3 nats, so a token within 40.3 nats of the top can be drawn. Above this floor
# the grid's step (2^-52 near u = 1) moves a token's chance of being drawn by under 0.1% of itself.
PROB_FLOOR = 1e-12
_HALF = GRID_BITS // 2  # bits taken from each of the two 32-bit hash lanes


_ID_TERMS: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _id_terms(vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[V] x 2: the per-token-id parts of the two hash lanes, computed once per vocabulary and device."""
    key = (vocab_size, str(device))
    if key not in _ID_TERMS:
        ids = torch.arange(vocab_size, dtype=torch.long, device=device)
        _ID_TERMS[key] = ((ids * 0x3C6EF35F) & _M32, (ids * 0x2545F491) & _M32)
    return _ID_TERMS[key]


@functools.lru_cache(maxsize=64)
def _seed_lanes(seed: int) -> tuple[int, int]:
    """The seed (any int, read as 64 bits) -> two 32-bit lane keys; distinct 64-bit seeds give
    distinct pairs' worth of noise."""
    s = seed % (1 << 64)
    lo, hi = torch.tensor(s & _M32, dtype=torch.long), torch.tensor(s >> 32, dtype=torch.long)
    a = _mix32((_mix32(lo) ^ hi) & _M32)
    b = _mix32((_mix32(hi ^ 0x5BD1E995) + lo * 0x1B873593) & _M32)
    return int(a), int(b)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """`_mix32` in place (no [P, V] temporaries but the shifts')."""
    x ^= x >> 16
    x.mul_(0x7FEB352D).bitwise_and_(_M32)
    x ^= x >> 15
    x.mul_(0x2C1B3C6D).bitwise_and_(_M32)
    x ^= x >> 16
    x.mul_(0x297A2D39).bitwise_and_(_M32)
    x ^= x >> 15
    return x


def _row_lanes(seed: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[P] positions -> two [P] 32-bit lane keys of (seed, position)."""
    seed_a, seed_b = _seed_lanes(seed)  # on the host: no device op
    pos = positions.long() & _M32
    row_a = _mix32((seed_a + _mix32(pos) * 0x61C88647) & _M32)
    row_b = _mix32((seed_b ^ _mix32(pos ^ 0x68E31DA4)) & _M32)
    return row_a, row_b


# A CPU computes the [P, V] hash in pieces of this many elements, which stay in its cache (7x
# faster than whole [P, V] passes at an 8,192-token vocabulary); a GPU in one piece.
_CPU_PIECE = 1 << 16


def _pieces(rows: int, cols: int, device: torch.device):
    """(row slice, column slice) pieces covering [rows, cols]."""
    if device.type != "cpu":
        yield slice(0, rows), slice(0, cols)
        return
    width = min(cols, _CPU_PIECE)
    height = max(1, _CPU_PIECE // width)
    for r in range(0, rows, height):
        for c in range(0, cols, width):
            yield slice(r, r + height), slice(c, c + width)


def _keyed_pieces(seed: int, positions: torch.Tensor, vocab_size: int):
    """(row slice, column slice, int64 bits of that piece) covering [P, V]: `keyed_bits` in pieces."""
    row_a, row_b = _row_lanes(seed, positions)
    id_a, id_b = _id_terms(vocab_size, positions.device)
    for rs, cs in _pieces(positions.shape[0], vocab_size, positions.device):
        ra, rb = row_a[rs, None], row_b[rs, None]  # [p, 1]
        hi = _mix32_(_mix32_(ra ^ id_a[cs]) ^ rb)  # [p, v]
        lo = _mix32_(_mix32_(rb ^ id_b[cs]) ^ ra)
        hi >>= 32 - _HALF
        hi <<= _HALF
        lo >>= 32 - _HALF
        yield rs, cs, hi.bitwise_or_(lo)


def keyed_bits(seed: int, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[P] positions -> [P, V] int64 in [0, 2^GRID_BITS), a pure function of (seed, position, id).

    Two 32-bit lanes keyed by the 64-bit seed and the position carry 64 bits of key state into each
    element (one 32-bit lane would leave a 2^-32 granularity across seeds, far above PROB_FLOOR);
    each lane's element hash gives GRID_BITS / 2 bits."""
    out = torch.empty(positions.shape[0], vocab_size, dtype=torch.long, device=positions.device)
    for rs, cs, bits in _keyed_pieces(seed, positions, vocab_size):
        out[rs, cs] = bits
    return out


def grid_uniform(bits: torch.Tensor) -> torch.Tensor:
    """int64 m in [0, 2^GRID_BITS) -> float64 (2m + 1) / 2^(GRID_BITS + 1), exactly."""
    return (2 * bits + 1).double().mul_(2.0 ** -(GRID_BITS + 1))


def keyed_uniform(seed: int, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[P] positions -> [P, V] float64 uniforms strictly inside (0, 1) (see GRID_BITS), a pure
    function of (seed, position, id)."""
    return grid_uniform(keyed_bits(seed, positions, vocab_size))


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """float64 uniforms in (0, 1) -> float64 Gumbel(0, 1) noise -log(-log u), finite on the grid."""
    return -torch.log(-torch.log(u))


def keyed_noise(seed: int, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[P] positions -> [P, V] float32 Gumbel noise, `gumbel(keyed_uniform(..))` rounded once: what
    a draw at each position adds to the float32 log-probs (the cached blocks hold these values)."""
    out = torch.empty(positions.shape[0], vocab_size, dtype=torch.float32, device=positions.device)
    for rs, cs, bits in _keyed_pieces(seed, positions, vocab_size):
        out[rs, cs] = grid_uniform(bits).log_().neg_().log_().neg_()
    return out


def derive_seed(seed: int, *parts: str) -> int:
    """A 64-bit seed of its own for (seed, parts), e.g. a bench prompt's (seed, prompt set, prompt
    id): the samples of different prompts are independent, and every method decodes a prompt with
    the same seed (so each must reproduce AR's tokens)."""
    key = "\0".join([str(seed), *parts]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


_BLOCK = 64  # positions per cached block of Gumbel noise


class NoiseCache:
    """A decoder's cached blocks of keyed Gumbel noise, [_BLOCK, V] float32 each (39 MB at a
    151,936-token vocabulary), the last `blocks` kept. A round reads one or two blocks; computing
    each once saves the hash kernels that would otherwise decide T>0's cost."""

    def __init__(self, blocks: int = 4):
        self.blocks = blocks
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def block(self, seed: int, index: int, vocab_size: int, device: torch.device) -> torch.Tensor:
        """[_BLOCK, V] the noise of positions index*_BLOCK.."""
        key = (seed, index, vocab_size, str(device))
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        positions = torch.arange(index * _BLOCK, (index + 1) * _BLOCK, device=device)
        self._store[key] = noise = keyed_noise(seed, positions, vocab_size)
        while len(self._store) > self.blocks:
            self._store.popitem(last=False)
        return noise


def keyed_gumbel(seed: int, first_position: int, count: int, vocab_size: int, device: torch.device,
                 cache: NoiseCache | None = None) -> torch.Tensor:
    """[count, V] the Gumbel noise of positions first_position.. (the same values `draw` makes),
    from `cache`'s blocks, or computed for these positions alone without one."""
    if cache is None:
        return keyed_noise(seed, torch.arange(first_position, first_position + count, device=device), vocab_size)
    b0, b1 = first_position // _BLOCK, (first_position + count - 1) // _BLOCK
    blocks = [cache.block(seed, b, vocab_size, device) for b in range(b0, b1 + 1)]
    rows = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
    off = first_position - b0 * _BLOCK
    return rows[off : off + count]


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] -> [N] argmax, in the logits' own dtype: widening bf16 to float32 is exact and keeps
    the order and the first of equal maxima, so the tokens are `process_logits`' argmax without its
    float32 copy of every row (at an 8B tree of 257 rows, 156 MB written and read again)."""
    return logits.argmax(dim=-1)


def draw_tree(logits: torch.Tensor, first_position: int, depths: torch.Tensor, cfg: SamplingConfig,
              noise: NoiseCache | None = None, depth_bound: int | None = None) -> torch.Tensor:
    """`draw` for a tree's rows: row i lands at position first_position + depths[i] ([N] long, on
    the host, or on the logits' device with `depth_bound`, no depth above it, so that nothing is
    read). The noise is made per depth (from `noise`'s cached blocks, when given) and gathered by
    depth: the same tokens as `draw`, without hashing [N, V] ids every round."""
    if cfg.greedy:
        return greedy_tokens(logits)
    logp = process_logits(logits, cfg)
    num_depths = (int(depths.max()) if depth_bound is None else depth_bound) + 1
    g = keyed_gumbel(cfg.seed, first_position, num_depths, logp.shape[-1], logits.device, noise)
    if depths.device != logits.device:  # a host tree's: a pageable copy would wait for the forward
        depths = device_index(depths.tolist(), logits.device)
    return (logp + g[depths]).argmax(dim=-1)


def draw(logits: torch.Tensor, positions: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The target's token at each row: [N, V] logits, [N] positions of the drawn tokens -> [N] ids.

    Greedy: argmax. Otherwise Gumbel-max over the processed distribution with noise keyed by
    (cfg.seed, position); rows at the same position share their noise, which is what makes a
    speculative run reproduce AR's tokens.
    """
    if cfg.greedy:
        return greedy_tokens(logits)
    logp = process_logits(logits, cfg)
    g = keyed_noise(cfg.seed, positions.long(), logp.shape[-1])  # [N, V]: same position, same noise
    return (logp + g.to(logp.device)).argmax(dim=-1)
