"""Cost of one cached block of sampling noise (64 positions x V), the keyed sampler against the
earlier one-lane 24-bit float32 sampler it replaced, on the device given.

    python runs/sampler_cost.py [--device cuda] [--vocab 8192,151936]
"""

import argparse
import statistics
import time

import torch

from specdiff.sampling import _M32, _mix32, keyed_noise


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


if __name__ == "__main__":
    main()
