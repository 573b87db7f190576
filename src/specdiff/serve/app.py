"""The OpenAI-compatible HTTP API over a `Worker` (FastAPI; SSE by sse-starlette; Prometheus metrics).

    GET  /health, /v1/models, /metrics
    POST /v1/completions, /v1/chat/completions   (stream: SSE chunks, then `data: [DONE]`)

A malformed request gets 400 with an OpenAI-style error object; a full queue 429 with
Retry-After; SIGTERM finishes the requests in flight (uvicorn's graceful shutdown) and exits 0. Beside OpenAI's `usage`, every response carries specdiff's own `specdiff` block
(method, rounds, tau).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from specdiff.config import SamplingConfig
from specdiff.errors import SpecdiffError
from specdiff.loading import encode, encode_chat
from specdiff.serve.worker import DONE, Job, Worker, collect


DRAIN_S = 600.0  # how long a shutdown waits for a stream in flight


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields this server does not use

    model: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    seed: int = 0
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("specdiff_requests", "requests answered", ["endpoint", "status"], registry=r)
        self.tokens = Counter("specdiff_generated_tokens", "tokens generated", registry=r)
        self.decode_seconds = Counter("specdiff_decode_seconds", "time spent decoding", registry=r)
        self.tokens_per_s = Gauge("specdiff_tokens_per_second", "the last request's tokens per second", registry=r)
        self.tau = Histogram("specdiff_tau", "tokens per verification round, per request",
                             buckets=(1, 1.5, 2, 3, 4, 6, 8, 12, 16), registry=r)
        self.queue = Gauge("specdiff_queue_depth", "requests waiting or decoding", registry=r)
        self.ttft = Histogram("specdiff_time_to_first_token_seconds", "from arrival to the first token", registry=r)


def error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status,
                        headers=headers)


def finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"  # a stop string and end-of-text both end a turn


def create_app(worker: Worker, tokenizer, model_name: str, method: str, metrics: Metrics | None = None,
               retry_after_s: int = 1) -> FastAPI:
    app = FastAPI(title="specdiff")
    metrics = metrics or Metrics()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(400, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "queue_depth": worker.depth}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "specdiff"}]}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(worker.depth)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            return error(400, "prompt: one prompt per request")
        return await serve(req, lambda: encode(tokenizer, prompts[0]), chat=False, endpoint="completions")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        messages = [m.model_dump() for m in req.messages]
        return await serve(req, lambda: encode_chat(tokenizer, messages), chat=True, endpoint="chat")

    async def serve(req: Sampling, encoder, chat: bool, endpoint: str):
        try:
            ids = encoder()
            sampling = SamplingConfig(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed)
            sampling.validate()
        except SpecdiffError as e:
            metrics.requests.labels(endpoint, "400").inc()
            return error(400, str(e))
        if not ids:
            return error(400, "the prompt is empty")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        loop = asyncio.get_running_loop()
        job = Job(ids, req.max_tokens, sampling, stop, loop, asyncio.Queue())
        if not worker.submit(job):
            metrics.requests.labels(endpoint, "429").inc()
            return error(429, "the server's queue is full; retry later", "rate_limit_error",
                         {"Retry-After": str(retry_after_s)})
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req.stream:
            # on SIGTERM the stream in flight is finished, not cut (sse-starlette ends streams at
            # shutdown unless given a grace period)
            return EventSourceResponse(stream(job, rid, created, chat, endpoint), ping=15,
                                       shutdown_grace_period=DRAIN_S)
        chunks = []
        while (item := await job.out.get()) is not DONE:
            if isinstance(item, Exception):
                metrics.requests.labels(endpoint, "500").inc()
                return error(500, f"{type(item).__name__}: {item}", "server_error")
            chunks.append(item)
        text, tokens, reason, rounds = collect(chunks)
        account(job, chunks, endpoint)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat else
                  {"index": 0, "text": text, "logprobs": None})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model_name, "choices": [{**choice, "finish_reason": finish(reason)}],
                "usage": usage(ids, tokens), "specdiff": stats(tokens, rounds)}

    async def stream(job: Job, rid: str, created: int, chat: bool, endpoint: str):
        kind = "chat.completion.chunk" if chat else "text_completion"
        chunks = []
        try:
            if chat:
                yield event(rid, kind, created, {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None})
            while (item := await job.out.get()) is not DONE:
                if isinstance(item, Exception):
                    yield json.dumps({"error": {"message": f"{type(item).__name__}: {item}", "type": "server_error"}})
                    break
                chunks.append(item)
                reason = finish(item.finish_reason) if item.finish_reason else None
                body = {"index": 0, "delta": {"content": item.text}} if chat else {"index": 0, "text": item.text}
                if item.text or reason:
                    yield event(rid, kind, created, {**body, "finish_reason": reason})
            _, tokens, _, rounds = collect(chunks)
            last = json.loads(event(rid, kind, created, None))
            last["choices"], last["usage"], last["specdiff"] = [], usage(job.prompt_ids, tokens), stats(tokens, rounds)
            yield json.dumps(last)
            yield "[DONE]"
            account(job, chunks, endpoint)
        finally:  # the client left (or the stream ended): the decode stops at its next round
            job.cancelled.set()

    def event(rid: str, kind: str, created: int, choice: dict | None) -> str:
        return json.dumps({"id": rid, "object": kind, "created": created, "model": model_name,
                           "choices": [] if choice is None else [choice]})

    def usage(ids: list[int], tokens: list[int]) -> dict:
        return {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "total_tokens": len(ids) + len(tokens)}

    def stats(tokens: list[int], rounds: int) -> dict:
        return {"method": method, "rounds": rounds, "tau": len(tokens) / rounds if rounds else 0.0}

    def account(job: Job, chunks: list, endpoint: str) -> None:
        tokens = sum(len(c.tokens) for c in chunks)
        seconds = sum(c.round.round_ms for c in chunks) / 1000
        metrics.requests.labels(endpoint, "200").inc()
        metrics.tokens.inc(tokens)
        metrics.decode_seconds.inc(seconds)
        if seconds > 0:
            metrics.tokens_per_s.set(tokens / seconds)
        if chunks:
            metrics.tau.observe(tokens / len(chunks))
        if job.first_token_s is not None:
            metrics.ttft.observe(job.first_token_s)

    return app
