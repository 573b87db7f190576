"""`specdiff serve`."""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from specdiff.cli.common import add_decode_args, add_model_args, decode_config, load_models, load_vp_drafter
from specdiff.errors import SpecdiffError

COMMANDS = ("serve",)


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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from specdiff.engine import build_decoder
    from specdiff.loading import encode, eos_ids
    from specdiff.methods import needs_drafter, needs_vp_drafter
    from specdiff.serve.app import create_app
    from specdiff.serve.worker import Worker

    if args.queue < 1 or args.max_prompt_tokens < 1:
        raise SpecdiffError("--queue and --max-prompt-tokens must be >= 1")
    with socket.socket() as s:  # a taken port is the user's problem: one line, before loading models
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise SpecdiffError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    cfg = decode_config(args)
    model, tokenizer, drafter = load_models(args, needs_drafter(cfg.method))
    vp_drafter = load_vp_drafter(args) if needs_vp_drafter(cfg.method) else None
    decoder = build_decoder(model, cfg, drafter, eos_ids(model, tokenizer), vp_drafter=vp_drafter)
    decoder.prepare(args.max_prompt_tokens)  # caches sized and graphs captured once, not per request
    decoder.generate(encode(tokenizer, "def warm_up():\n"))
    app = create_app(Worker(decoder, tokenizer, args.queue), tokenizer, args.model_name, cfg.method)
    print(f"specdiff serve: {cfg.method} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM, then raises the signal again for the handler it found: make that
    # one a no-op, so a drained server exits 0 rather than dying of the signal
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
