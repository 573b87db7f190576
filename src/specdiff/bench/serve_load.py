"""`specdiff bench-serve`: a Poisson stream of streamed requests against running servers.

Each server (a `specdiff serve` URL; one per method, ar beside a speculative one) gets the same
requests at the same seeded arrival times. Per request: time to first token (arrival to the
first text), per-token latency after it ((end - first) / (tokens - 1)), and the tokens. Per
server: p50/p99 of both, tokens/s over the whole stream, and failures (429s included).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from specdiff.errors import SpecdiffError


@dataclass
class LoadConfig:
    urls: list[str]
    rate: float = 1.0  # requests per second (Poisson)
    requests: int = 16
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    prompts: list[str] | None = None  # cycled; None: a fixed code prompt


@dataclass
class RequestRecord:
    arrival_s: float  # scheduled, from the stream's start
    ttft_ms: float | None
    per_token_ms: float | None
    tokens: int
    error: str | None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


async def one_request(client, url: str, prompt: str, cfg: LoadConfig, start: float, arrival: float) -> RequestRecord:
    import httpx

    await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
    sent = time.perf_counter()
    first = None
    tokens = 0
    body = {"prompt": prompt, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "seed": cfg.seed,
            "stream": True}
    try:
        async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
            if r.status_code != 200:
                return RequestRecord(arrival, None, None, 0, f"HTTP {r.status_code}")
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if first is None and any(c.get("text") for c in event.get("choices", [])):
                    first = time.perf_counter()
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        return RequestRecord(arrival, None, None, 0, type(e).__name__)
    end = time.perf_counter()
    if first is None:
        return RequestRecord(arrival, None, None, tokens, None)
    return RequestRecord(arrival, 1000 * (first - sent), 1000 * (end - first) / max(1, tokens - 1), tokens, None)


async def run_server(url: str, cfg: LoadConfig, arrivals: list[float], prompts: list[str]) -> dict:
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as client:
        try:
            method = (await client.get(url + "/v1/models", timeout=10)).json()["data"][0]["id"]
            probe = await client.post(url + "/v1/completions", json={"prompt": prompts[0], "max_tokens": 1}, timeout=600)
            method = probe.json().get("specdiff", {}).get("method", method)
        except (httpx.HTTPError, KeyError, ValueError) as e:
            raise SpecdiffError(f"no specdiff server answers at {url} ({type(e).__name__})") from None
        start = time.perf_counter()
        records = await asyncio.gather(*(one_request(client, url, prompts[i % len(prompts)], cfg, start, t)
                                         for i, t in enumerate(arrivals)))
        wall = time.perf_counter() - start
    ok = [r for r in records if r.error is None and r.ttft_ms is not None]
    tokens = sum(r.tokens for r in ok)
    return {"url": url, "method": method, "records": [asdict(r) for r in records], "summary": {
        "requests": len(records), "failed": len(records) - len(ok), "tokens": tokens, "tokens_per_s": tokens / wall,
        "ttft_p50_ms": percentile([r.ttft_ms for r in ok], 50), "ttft_p99_ms": percentile([r.ttft_ms for r in ok], 99),
        "per_token_p50_ms": percentile([r.per_token_ms for r in ok], 50),
        "per_token_p99_ms": percentile([r.per_token_ms for r in ok], 99)}}


def run(cfg: LoadConfig) -> dict:
    """Every server under the same seeded Poisson stream -> {"config", "servers": [...]}."""
    if cfg.rate <= 0 or cfg.requests < 1 or cfg.max_tokens < 1:
        raise SpecdiffError("--rate, --requests and --max-tokens must be positive")
    rng = random.Random(cfg.seed)
    arrivals, t = [], 0.0
    for _ in range(cfg.requests):
        arrivals.append(t)
        t += rng.expovariate(cfg.rate)
    prompts = cfg.prompts or ["def quicksort(xs):\n"]
    servers = [asyncio.run(run_server(url.rstrip("/"), cfg, arrivals, prompts)) for url in cfg.urls]
    return {"config": asdict(cfg), "servers": servers}


def table(result: dict) -> str:
    from specdiff.bench.tables import markdown_table

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    rows = [[s["method"], s["url"], str(s["summary"]["requests"]), str(s["summary"]["failed"]),
             ms(s["summary"]["ttft_p50_ms"]), ms(s["summary"]["ttft_p99_ms"]), ms(s["summary"]["per_token_p50_ms"]),
             ms(s["summary"]["per_token_p99_ms"]), f"{s['summary']['tokens_per_s']:.1f}"] for s in result["servers"]]
    cfg = result["config"]
    head = f"{cfg['requests']} requests, Poisson at {cfg['rate']:g}/s, {cfg['max_tokens']} tokens, T={cfg['temperature']:g}"
    return "\n".join([head, "", *markdown_table(["method", "server", "requests", "failed", "TTFT p50 ms", "TTFT p99 ms",
                                                  "per-token p50 ms", "per-token p99 ms", "tokens/s"], rows)]) + "\n"


def plot(result: dict, path: Path) -> bool:
    """TTFT and per-token latency CDFs per server (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for s in result["servers"]:
        for ax, key in zip(axes, ("ttft_ms", "per_token_ms")):
            values = sorted(r[key] for r in s["records"] if r[key] is not None)
            if values:
                ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=s["method"])
    for ax, title in zip(axes, ("time to first token (ms)", "per-token latency (ms)")):
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of requests")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
