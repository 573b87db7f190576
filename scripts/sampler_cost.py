"""Cost of one cached block of sampling noise (64 positions x V), the keyed sampler against the
earlier one-lane 24-bit float32 sampler it replaced, on the device given; and the sampler's cost
per decoded token at T=1 (AR's draw over 512 positions, the blocks it needs included).

    python scripts/sampler_cost.py [--device cuda] [--vocab 8192,151936]
"""

import argparse
import statistics
import time

import torch

from specdiff.config import SamplingConfig
from specdiff.sampling import _BLOCK, _M32, NoiseCache, _mix32, draw_tree, keyed_noise, process_logits


def one_lane_24bit_noise(seed: int, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The earlier sampler, for the comparison only: u = ((x >> 8) + 0.5) / 2^24 can round to 1."""
    seed_h = int(_mix32(torch.tensor(seed & _M32, dtype=torch.long)))
    row = _mix32((seed_h + _mix32(positions.long() & _M32) * 0x61C88647) & _M32)
    ids = (torch.arange(vocab_size, dtype=torch.long, device=positions.device) * 0x3C6EF35F) & _M32
    x = _mix32((row[:, None] ^ ids[None, :]) & _M32)
    x = _mix32(x ^ row[:, None])
    u = ((x >> 8).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))


def time_ms(fn, device: torch.device, reps: int = 20) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn(0)
    times = []
    for seed in range(1, reps + 1):
        sync()
        t0 = time.perf_counter()
        fn(seed)
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def per_token_ms(vocab: int, device: torch.device, old: bool, tokens: int = 512) -> float:
    """ms per token of AR's T=1 draw (process, noise, argmax) over `tokens` positions."""
    cfg = SamplingConfig(temperature=1.0)
    logits = torch.randn(1, vocab, device=device)
    depth0 = torch.zeros(1, dtype=torch.long)
    blocks: dict[int, torch.Tensor] = {}

    def old_draw(p: int) -> torch.Tensor:
        b = p // _BLOCK
        if b not in blocks:
            blocks[b] = one_lane_24bit_noise(cfg.seed, torch.arange(b * _BLOCK, (b + 1) * _BLOCK, device=device), vocab)
        rows = blocks[b][p % _BLOCK : p % _BLOCK + 1]  # [depths, V], gathered by depth as draw_tree does
        return (process_logits(logits, cfg) + rows[depth0.to(device)]).argmax(dim=-1)

    def run(seed: int) -> None:
        cache = NoiseCache()
        blocks.clear()
        for p in range(tokens):
            tok = old_draw(p) if old else draw_tree(logits, p, depth0, cfg, cache)
            tok.cpu()  # the round's sync

    return time_ms(run, device, reps=3) / tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", default="8192,151936")
    args = ap.parse_args()
    device = torch.device(args.device)
    pos = torch.arange(64, device=device)
    print("| vocabulary | keyed sampler, ms per 64-position block | earlier 24-bit sampler | device |")
    print("|---|---|---|---|")
    for v in (int(x) for x in args.vocab.split(",")):
        new = time_ms(lambda s: keyed_noise(s, pos, v), device)
        old = time_ms(lambda s: one_lane_24bit_noise(s, pos, v), device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"| {v} | {new:.3f} | {old:.3f} | {name} |")
    print("\n| vocabulary | keyed sampler, ms per token (T=1 draw) | earlier sampler | device |")
    print("|---|---|---|---|")
    for v in (int(x) for x in args.vocab.split(",")):
        print(f"| {v} | {per_token_ms(v, device, False):.4f} | {per_token_ms(v, device, True):.4f} | {name} |")


if __name__ == "__main__":
    main()
