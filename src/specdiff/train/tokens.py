"""Token data: the corpus encoded into flat token files, and the windows trainers read from them.

Owns the token files (`--tokens`, default `<corpus>/tokens-<tokenizer sha256[:12]>`): `train.bin`
and `heldout.bin` are flat uint16 arrays in which every document is followed by the eos id;
`tokens_meta.json` (`TokenFiles`) says which tokenizer and corpus text they came from, so a second
run with the same inputs reuses them. Also owns reading token streams from such a folder or from
one flat `.bin` (`load_token_splits`), random training windows (`sample_windows`) and the fixed
held-out windows of an evaluation (`eval_windows`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from specdiff.errors import SpecdiffError
from specdiff.train.config import write_json
from specdiff.train.corpus import iter_documents
from specdiff.train.tokenizer import load_tokenizer

TOKENS_META_FILE = "tokens_meta.json"
SPLITS = ("train", "heldout")
TOKEN_DTYPE = np.uint16
# Text per encoding call. In-process, big batches keep the tokenizer's threads evenly loaded;
# a worker pool wants more, smaller tasks.
_BATCH_BYTES_IN_PROCESS = 8 << 20
_BATCH_BYTES_PER_TASK = 1 << 20


# --- token files ---------------------------------------------------------------------------


@dataclass
class TokenFiles:
    """The encoded corpus; saved as `tokens_meta.json` beside the `.bin` files."""

    dir: str
    tokenizer_sha256: str
    vocab_size: int
    eos_token_id: int
    sources: dict[str, str] = field(default_factory=dict)  # split -> fingerprint of its .txt
    tokens: dict[str, int] = field(default_factory=dict)  # split -> token count
    docs: dict[str, int] = field(default_factory=dict)
    encode_s: float = 0.0
    cached: bool = False  # this call found them already built (not saved)

    def path(self, split: str) -> Path:
        return Path(self.dir) / f"{split}.bin"

    def load(self, split: str) -> np.ndarray:
        """The split's tokens, memory-mapped (read-only)."""
        return np.memmap(self.path(split), dtype=TOKEN_DTYPE, mode="r")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(path: Path) -> str:
    """Size plus a hash of the head and tail: cheap on big files, and independent of mtimes,
    which change when a corpus is copied to another machine."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return f"{size}:{h.hexdigest()[:16]}"


def default_tokens_dir(corpus_dir: Path, tokenizer_dir: Path) -> Path:
    return Path(corpus_dir) / f"tokens-{_sha256_file(Path(tokenizer_dir) / 'tokenizer.json')[:12]}"


def _doc_batches(path: Path, batch_chars: int) -> Iterator[list[str]]:
    """Documents of a corpus file, grouped into lists of about `batch_chars` characters."""
    batch: list[str] = []
    n = 0
    for doc in iter_documents(path):
        batch.append(doc)
        n += len(doc)
        if n >= batch_chars:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def encode_documents(tokenizer: PreTrainedTokenizerFast, docs: list[str], eos_id: int) -> np.ndarray:
    """Flat uint16 tokens of `docs`, each followed by `eos_id` (the fast tokenizer's batch call
    encodes the documents in parallel)."""
    enc = tokenizer(docs, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    ids: list[list[int]] = enc["input_ids"]
    out = np.empty(sum(len(x) for x in ids) + len(ids), dtype=TOKEN_DTYPE)
    pos = 0
    for x in ids:
        out[pos : pos + len(x)] = x
        out[pos + len(x)] = eos_id
        pos += len(x) + 1
    return out


# Per-process tokenizer of the encoding workers (set by `_init_worker`).
_WORKER_TOKENIZER: PreTrainedTokenizerFast | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool already uses every core
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_dir)


def _encode_in_worker(docs: list[str], eos_id: int) -> np.ndarray:
    assert _WORKER_TOKENIZER is not None
    return encode_documents(_WORKER_TOKENIZER, docs, eos_id)


def _encode_file(
    src: Path, dst: Path, tokenizer: PreTrainedTokenizerFast, eos_id: int, pool: Executor | None, workers: int
) -> tuple[int, int]:
    """Encode `src` into `dst` in document order; returns (tokens, documents)."""
    n_tokens = n_docs = 0
    with open(dst, "wb") as f:

        def write(arr: np.ndarray, docs: int) -> None:
            nonlocal n_tokens, n_docs
            arr.tofile(f)
            n_tokens += len(arr)
            n_docs += docs

        if pool is None:
            for batch in _doc_batches(src, _BATCH_BYTES_IN_PROCESS):
                write(encode_documents(tokenizer, batch, eos_id), len(batch))
            return n_tokens, n_docs
        pending: deque[tuple[Future[np.ndarray], int]] = deque()
        for batch in _doc_batches(src, _BATCH_BYTES_PER_TASK):
            pending.append((pool.submit(_encode_in_worker, batch, eos_id), len(batch)))
            if len(pending) >= 2 * workers:  # bounded read-ahead keeps memory flat
                fut, docs = pending.popleft()
                write(fut.result(), docs)
        while pending:
            fut, docs = pending.popleft()
            write(fut.result(), docs)
    return n_tokens, n_docs


def _cached_tokens(out_dir: Path, tok_sha: str, sources: dict[str, str]) -> TokenFiles | None:
    meta_path = out_dir / TOKENS_META_FILE
    if not meta_path.is_file():
        return None
    meta = TokenFiles(**json.loads(meta_path.read_text(encoding="utf-8")))
    meta.dir = str(out_dir)
    if meta.tokenizer_sha256 != tok_sha or meta.sources != sources:
        return None
    for split in SPLITS:
        path = meta.path(split)
        if not path.is_file() or path.stat().st_size != meta.tokens[split] * np.dtype(TOKEN_DTYPE).itemsize:
            return None
    meta.cached = True
    return meta


def _spawn_context() -> BaseContext | None:
    """Spawn, not fork: forking a process with torch's and the tokenizer's threads running can
    deadlock the child. None when a spawned child could not re-import this program's `__main__`
    (a script read from stdin); the caller then encodes in-process."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not Path(main_file).is_file():
        return None
    return multiprocessing.get_context("spawn")


def tokenize_corpus(
    corpus_dir: Path, tokenizer_dir: Path, out_dir: Path | None = None, num_workers: int = 1
) -> TokenFiles:
    """Encode `train.txt` and `heldout.txt` into `out_dir/{train,heldout}.bin` (uint16), or return
    the files already there when they came from the same tokenizer and corpus text.

    With `num_workers` 1 this process encodes big batches of documents, which the fast tokenizer
    spreads over every core (65 MB of text in 7 s on 16 cores). More workers encode smaller
    batches in that many spawned processes; each must first import torch and transformers, so on
    that corpus 16 of them took 16 s: worth it only for much larger corpora."""
    corpus_dir, tokenizer_dir = Path(corpus_dir), Path(tokenizer_dir)
    out_dir = default_tokens_dir(corpus_dir, tokenizer_dir) if out_dir is None else Path(out_dir)
    workers = max(1, num_workers)
    srcs = {split: corpus_dir / f"{split}.txt" for split in SPLITS}
    for split, src in srcs.items():
        if not src.is_file():
            raise SpecdiffError(f"no {src.name} in corpus directory {corpus_dir} (run `specdiff corpus`)")
    tokenizer = load_tokenizer(tokenizer_dir)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise SpecdiffError(f"tokenizer at {tokenizer_dir} has no eos token")
    if len(tokenizer) > np.iinfo(TOKEN_DTYPE).max + 1:
        raise SpecdiffError(f"vocab size {len(tokenizer)} does not fit uint16 token files")
    tok_sha = _sha256_file(tokenizer_dir / "tokenizer.json")
    sources = {split: _fingerprint(src) for split, src in srcs.items()}
    cached = _cached_tokens(out_dir, tok_sha, sources)
    if cached is not None:
        return cached

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TOKENS_META_FILE).unlink(missing_ok=True)  # written last: present means complete
    meta = TokenFiles(str(out_dir), tok_sha, len(tokenizer), eos_id, sources)
    t0 = time.perf_counter()
    pool = None
    ctx = _spawn_context() if workers > 1 else None
    if ctx is not None:
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(str(tokenizer_dir),)
        )
    try:
        for split, src in srcs.items():
            tmp = out_dir / f"{split}.bin.tmp"
            meta.tokens[split], meta.docs[split] = _encode_file(src, tmp, tokenizer, eos_id, pool, workers)
            tmp.replace(meta.path(split))  # a killed run leaves no half-written .bin behind
    finally:
        if pool is not None:
            pool.shutdown()
    meta.encode_s = round(time.perf_counter() - t0, 2)
    saved = asdict(meta)
    saved.pop("cached")
    write_json(out_dir / TOKENS_META_FILE, saved)
    return meta


# --- token streams and windows -------------------------------------------------------------


@dataclass
class TokenSplits:
    train: np.ndarray  # [N] flat uint16 stream
    heldout: np.ndarray  # [M] flat uint16 stream
    source: str
    vocab_size: int = 0  # of the token files, when they say (0: unknown)


def load_token_splits(
    tokens: Path | None, corpus: Path | None, tokenizer_dir: Path, heldout_frac: float
) -> TokenSplits:
    """Token streams from `tokens` (a token folder, or one flat .bin whose last `heldout_frac` is
    held out) or from `corpus`, encoded with `tokenize_corpus` (cached)."""
    if tokens is not None and tokens.is_file():
        data = np.memmap(tokens, dtype=TOKEN_DTYPE, mode="r")
        cut = len(data) - int(len(data) * heldout_frac)
        return TokenSplits(data[:cut], data[cut:], f"{tokens} (last {heldout_frac:.0%} held out)")
    if tokens is not None and (tokens / "train.bin").is_file() and corpus is None:
        files = [tokens / f"{s}.bin" for s in SPLITS]
        if not files[1].is_file():
            raise SpecdiffError(f"no heldout.bin beside train.bin in {tokens}")
        meta = tokens / TOKENS_META_FILE
        vocab = json.loads(meta.read_text())["vocab_size"] if meta.is_file() else 0
        return TokenSplits(*(np.memmap(f, dtype=TOKEN_DTYPE, mode="r") for f in files), str(tokens), vocab)
    if corpus is not None:
        if not corpus.is_dir():
            raise SpecdiffError(f"corpus directory not found: {corpus}")
        encoded = tokenize_corpus(corpus, tokenizer_dir, tokens)
        return TokenSplits(encoded.load("train"), encoded.load("heldout"), encoded.dir, encoded.vocab_size)
    if tokens is not None:
        raise SpecdiffError(f"no token file or folder (train.bin) at {tokens}")
    raise SpecdiffError("no training data: pass --tokens FILE.bin|DIR or --corpus DIR")


def sample_windows(data: np.ndarray, batch_size: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """[batch_size, width] long: random windows of the stream `data` [N]. A next-token trainer asks
    for `seq_len + 1` tokens (inputs plus shifted targets)."""
    starts = rng.integers(0, len(data) - width + 1, size=batch_size)
    return torch.from_numpy(np.stack([data[s : s + width] for s in starts]).astype(np.int64))


def eval_windows(data: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """[n, seq_len + 1] int64: fixed, evenly spaced windows covering about `n_tokens` targets, so
    every evaluation of every run scores the same text."""
    n = max(1, min(n_tokens // seq_len, (len(data) - 1) // seq_len))
    starts = np.linspace(0, len(data) - seq_len - 1, n).astype(np.int64)
    return np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64)
