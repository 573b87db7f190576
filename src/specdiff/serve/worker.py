"""The decode worker: one decode at a time on its own thread, a bounded queue in front of it.

Speculative decoding serves latency, so requests are decoded one after another with the models
loaded (and, on a GPU, their graphs captured) once. Each request is a `Job`; its text chunks go
back to the request's event loop through an asyncio queue (`call_soon_threadsafe`), so a waiting
client holds no thread. A job whose client left is cancelled: the decode stops at the next round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field

from specdiff.config import SamplingConfig
from specdiff.streaming import TextChunk, stream_text

DONE = None  # the job's last item on its queue


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue  # TextChunk ..., then an Exception or DONE
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None  # time to first token, once known

    def send(self, item) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Worker:
    """Runs jobs through one `SpeculativeDecoder` (its config's sampling and length set per job)."""

    def __init__(self, decoder, tokenizer, max_queue: int, metrics=None):
        self.decoder, self.tokenizer, self.metrics = decoder, tokenizer, metrics
        self.base_cfg = decoder.cfg
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.busy = threading.Event()
        self.thread = threading.Thread(target=self._run, name="specdiff-decode", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self.jobs.qsize() + (1 if self.busy.is_set() else 0)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            self.busy.set()
            try:
                if not job.cancelled.is_set():
                    self._decode(job)
            except Exception as e:  # a failing request never takes the worker down
                job.send(e)
            finally:
                self.busy.clear()
                job.send(DONE)

    def _decode(self, job: Job) -> None:
        self.decoder.cfg = dataclasses.replace(self.base_cfg, sampling=job.sampling,
                                               max_new_tokens=min(job.max_tokens, self.base_cfg.max_new_tokens))
        chunks = stream_text(self.decoder, self.tokenizer, job.prompt_ids, stop=job.stop)
        try:
            for chunk in chunks:
                if job.first_token_s is None and chunk.tokens:
                    job.first_token_s = time.perf_counter() - job.submitted
                job.send(chunk)
                if job.cancelled.is_set():  # the client left: end at this round
                    break
        finally:
            chunks.close()


def collect(chunks: list[TextChunk]) -> tuple[str, list[int], str, int]:
    """A finished job's chunks -> (text, token ids, finish reason, rounds)."""
    text = "".join(c.text for c in chunks)
    tokens = [t for c in chunks for t in c.tokens]
    reason = chunks[-1].finish_reason if chunks else "length"
    return text, tokens, reason or "length", len(chunks)
