"""How the target's tokens are drawn: logit processing and position-keyed sampling noise.

Processing follows Hugging Face's sampling warpers in their order (temperature, then top-k, then
top-p), so "plain AR sampling" and every verifier see the same distribution.

Sampling is Gumbel-max with noise that is a pure function of (seed, position, token id): the token
at absolute position p is `argmax(logprobs + g(seed, p))`. Every emitted token of a speculative
round is drawn this way at its own position, from the target's distribution given the accepted
prefix, so a speculative run emits exactly the tokens that AR emits with the same seed, at any
temperature, and the output has the target's distribution exactly. No generator state is carried
between calls, so the noise does not depend on how many model calls a method makes.
"""

from __future__ import annotations

import functools

import torch

from specdiff.config import SamplingConfig

_M32 = 0xFFFFFFFF


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """[..., V] logits -> [..., V] float32 log-probabilities after temperature, top-k and top-p.

    Filtered tokens get -inf. At temperature 0 the logits are returned as float32 (argmax only).
    """
    scores = logits.float()
    if cfg.greedy:
        return scores
    if cfg.temperature != 1.0:  # x / 1.0 == x: skip a kernel
        scores = scores / cfg.temperature
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


_ID_TERMS: dict[tuple[int, str], torch.Tensor] = {}


def _id_term(vocab_size: int, device: torch.device) -> torch.Tensor:
    """[V] the per-token-id part of the hash, computed once per vocabulary and device."""
    key = (vocab_size, str(device))
    if key not in _ID_TERMS:
        ids = torch.arange(vocab_size, dtype=torch.long, device=device)
        _ID_TERMS[key] = (ids * 0x3C6EF35F) & _M32
    return _ID_TERMS[key]


@functools.lru_cache(maxsize=64)
def _seed_hash(seed: int) -> int:
    return int(_mix32(torch.tensor(seed & _M32, dtype=torch.long)))


def keyed_uniform(seed: int, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[P] positions -> [P, V] float32 uniforms in (0, 1), a pure function of (seed, position, id)."""
    seed_h = _seed_hash(seed)  # on the host: no device op
    row = _mix32((seed_h + _mix32(positions.long() & _M32) * 0x61C88647) & _M32)  # [P]
    x = _mix32((row[:, None] ^ _id_term(vocab_size, positions.device)[None, :]) & _M32)
    x = _mix32(x ^ row[:, None])
    return ((x >> 8).float() + 0.5) * (1.0 / (1 << 24))


_BLOCK = 64  # positions per cached block of Gumbel noise


@functools.lru_cache(maxsize=4)
def _gumbel_block(seed: int, block: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """[_BLOCK, V] Gumbel noise -log(-log(u)) of positions block*_BLOCK.. (a round reads one or
    two blocks; computing them once saves the ~40 hash kernels per round that decide T>0's cost)."""
    positions = torch.arange(block * _BLOCK, (block + 1) * _BLOCK, device=device)
    return -torch.log(-torch.log(keyed_uniform(seed, positions, vocab_size)))


def keyed_gumbel(seed: int, first_position: int, count: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """[count, V] the Gumbel noise of positions first_position.. (the same values `draw` makes)."""
    b0, b1 = first_position // _BLOCK, (first_position + count - 1) // _BLOCK
    blocks = [_gumbel_block(seed, b, vocab_size, device) for b in range(b0, b1 + 1)]
    rows = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
    off = first_position - b0 * _BLOCK
    return rows[off : off + count]


def draw_tree(logits: torch.Tensor, first_position: int, depths: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """`draw` for a tree's rows: row i lands at position first_position + depths[i] ([N] host
    long). The noise comes from cached per-position blocks, gathered by depth: the same tokens as
    `draw`, without hashing [N, V] ids every round."""
    logp = process_logits(logits, cfg)
    if cfg.greedy:
        return logp.argmax(dim=-1)
    num_depths = int(depths.max()) + 1
    g = keyed_gumbel(cfg.seed, first_position, num_depths, logp.shape[-1], logits.device)
    return (logp + g[depths.to(logits.device)]).argmax(dim=-1)


def _gumbel_max(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[N, V] log-probs and uniforms -> [N] argmax(logp + Gumbel(u))."""
    return (logp - torch.log(-torch.log(u))).argmax(dim=-1)


def draw(logits: torch.Tensor, positions: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The target's token at each row: [N, V] logits, [N] positions of the drawn tokens -> [N] ids.

    Greedy: argmax. Otherwise Gumbel-max over the processed distribution with noise keyed by
    (cfg.seed, position); rows at the same position share their noise, which is what makes a
    speculative run reproduce AR's tokens.
    """
    logp = process_logits(logits, cfg)
    if cfg.greedy:
        return logp.argmax(dim=-1)
    u = keyed_uniform(cfg.seed, positions, logp.shape[-1])  # [N, V]: same position, same noise
    return _gumbel_max(logp, u)
