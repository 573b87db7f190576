"""`specdiff serve`."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import socket
import sys
from pathlib import Path

from specdiff.cli.common import add_decode_args, add_model_args, decode_config, load_models, load_vp_drafter
from specdiff.errors import SpecdiffError

COMMANDS = ("serve", "bench-serve")


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """an OpenAI-compatible server: models loaded once, requests decoded one at a time, streamed

    specdiff serve --method ddtree --budget 16 --port 8000
    """
    add_model_args(p)
    add_decode_args(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on")
    p.add_argument("--queue", type=int, default=16, help="requests waiting at most; more get 429")
    p.add_argument("--max-prompt-tokens", type=int, default=1024,
                   help="the longest prompt the caches and graphs are prepared for at start-up")
    p.add_argument("--model-name", default="specdiff", help="the model id the API reports")


def need(command: str, modules: tuple[str, ...]) -> None:
    """One line, not a traceback, where a library the command runs on is missing (each installs
    with specdiff; a bare environment may lack them)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise SpecdiffError(f"specdiff {command} needs the {name} package, which installs with specdiff: "
                                f"pip install {name.replace('_', '-')}")


def cmd_serve(args: argparse.Namespace) -> int:
    need("serve", ("fastapi", "uvicorn", "sse_starlette", "prometheus_client"))
    if args.queue < 1 or args.max_prompt_tokens < 1:
        raise SpecdiffError("--queue and --max-prompt-tokens must be >= 1")
    # a taken port is the user's problem: one line, before the libraries and the models load
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise SpecdiffError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    import uvicorn

    from specdiff.engine import build_decoder
    from specdiff.loading import encode, eos_ids
    from specdiff.methods import needs_drafter, needs_vp_drafter
    from specdiff.serve.app import create_app
    from specdiff.serve.worker import Worker

    cfg = decode_config(args)
    model, tokenizer, drafter = load_models(args, needs_drafter(cfg.method))
    vp_drafter = load_vp_drafter(args) if needs_vp_drafter(cfg.method) else None
    decoder = build_decoder(model, cfg, drafter, eos_ids(model, tokenizer), vp_drafter=vp_drafter)
    decoder.prepare(args.max_prompt_tokens)  # caches sized and graphs captured once, not per request
    decoder.generate(encode(tokenizer, "def warm_up():\n"))
    app = create_app(Worker(decoder, tokenizer, args.queue), tokenizer, args.model_name, cfg.method)
    t = decoder.target
    print(f"specdiff serve: {cfg.method} on http://{args.host}:{args.port} ({t.engine} engine, {t.kernels_ran} kernels, "
          f"{t.numerics} numerics)", file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM, then raises the signal again for the handler it found: make that
    # one a no-op, so a drained server exits 0 rather than dying of the signal
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_bench_serve_args(p: argparse.ArgumentParser) -> None:
    """a Poisson stream of streamed requests against running servers: TTFT, per-token latency, tokens/s

    specdiff bench-serve --url http://127.0.0.1:8000 --url http://127.0.0.1:8001 --rate 2 --requests 32
    """
    p.add_argument("--url", action="append", required=True, help="a `specdiff serve` URL (repeat: ar beside a "
                                                                   "speculative method)")
    p.add_argument("--rate", type=float, default=1.0, help="requests per second (Poisson arrivals)")
    p.add_argument("--requests", type=int, default=16, help="requests per server")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every request")
    p.add_argument("--seed", type=int, default=0, help="the arrivals' and the sampling's seed")
    p.add_argument("--prompts", help="a JSONL prompt file (its `prompt` fields, cycled; default: one code prompt)")
    p.add_argument("--out", type=Path, help="a folder for results.json and latency.png")


def cmd_bench_serve(args: argparse.Namespace) -> int:
    need("bench-serve", ("httpx",))
    import json

    from specdiff.bench.serve_load import LoadConfig, plot, run, table
    from specdiff.loading import read_text

    prompts = None
    if args.prompts:
        try:
            prompts = [json.loads(line)["prompt"] for line in read_text(args.prompts, "prompt file").splitlines()
                       if line.strip()]
        except (ValueError, KeyError, TypeError):
            raise SpecdiffError(f"{args.prompts} is not JSONL with a `prompt` field on every line") from None
        if not prompts:
            raise SpecdiffError(f"{args.prompts} holds no prompts")
    result = run(LoadConfig(urls=args.url, rate=args.rate, requests=args.requests, max_tokens=args.max_tokens,
                            temperature=args.temperature, seed=args.seed, prompts=prompts))
    print(table(result), end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        if plot(result, args.out / "latency.png"):
            print(f"plot: {args.out / 'latency.png'}")
    return 0
