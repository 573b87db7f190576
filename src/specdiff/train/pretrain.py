"""Pretraining of the target model: a small Qwen3 causal LM trained from scratch on the corpus.

Owns: encoding a corpus into flat token files (cached), every model-shape and training setting
(`PretrainConfig`), the training loop (random windows of the train tokens, AdamW, warmup + cosine
learning rate, gradient clipping, bf16 autocast on CUDA, optional `torch.compile`, periodic
held-out loss on fixed windows), and the checkpoint folder, which resumes training and loads
with `AutoModelForCausalLM` + `AutoTokenizer`.

Token files (`--tokens`, default `<corpus>/tokens-<tokenizer sha256[:12]>`): `train.bin` and
`heldout.bin` are flat uint16 arrays in which every document is followed by the eos id;
`tokens_meta.json` (`TokenFiles`) says which tokenizer and corpus text they came from.

Checkpoint folder (`--out`), written at the end of a run (and every `save_every` steps):

- the Hugging Face model (`config.json`, `generation_config.json`, safetensors shards of at most
  15 MB, bf16 by default) and the tokenizer files;
- `specdiff_pretrain.json` (`PretrainConfig`), `pretrain_stats.json` (`PretrainStats`) and
  `train_log.jsonl` (one row per logged step and per held-out evaluation);
- `trainer_state.pt`: step, tokens seen, schedule progress, RNG states and (unless
  `save_optimizer` is off) the AdamW state, about 8 bytes per parameter, for `--resume`.

A resumed run starts from the saved weights, so with the default bf16 `save_dtype` they are the
bf16-rounded master weights; save in float32 for a bit-exact continuation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from specdiff.errors import SpecdiffError
from specdiff.train.corpus import iter_documents
from specdiff.train.tokenizer import load_tokenizer

CONFIG_FILE = "specdiff_pretrain.json"
STATS_FILE = "pretrain_stats.json"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.pt"
TOKENS_META_FILE = "tokens_meta.json"
SPLITS = ("train", "heldout")
MAX_SHARD_SIZE = "15MB"  # files coming back from the GPU machine must stay under 16 MiB
_TOKEN_DTYPE = np.uint16
# Text per encoding call. In-process, big batches keep the tokenizer's threads evenly loaded;
# a worker pool wants more, smaller tasks.
_BATCH_BYTES_IN_PROCESS = 8 << 20
_BATCH_BYTES_PER_TASK = 1 << 20
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


# --- settings ------------------------------------------------------------------------------


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run; saved as `specdiff_pretrain.json` in each checkpoint."""

    # Model shape. vocab_size and eos_token_id are filled from the tokenizer.
    vocab_size: int = 0
    eos_token_id: int = 0
    hidden_size: int = 384
    num_layers: int = 8
    num_heads: int = 6
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 1024
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    init_std: float = 0.02
    # Optimisation.
    seq_len: int = 512
    batch_size: int = 64
    lr: float = 1.5e-3
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup_steps: int = 200
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # Horizon: stop at max_steps or after time_budget_s of training loop, whichever comes first.
    max_steps: int = 10_000
    time_budget_s: float | None = None
    # Evaluation, logging, saving.
    eval_every: int = 500  # 0: only at the end
    eval_tokens: int = 262_144
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    save_dtype: str = "bfloat16"
    save_optimizer: bool = True
    # Runtime.
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # autocast dtype; auto: bfloat16 on CUDA, float32 (no autocast) on CPU
    compile: bool = False

    def validate(self) -> None:
        positive = (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
            "intermediate_size", "max_position_embeddings", "seq_len", "batch_size", "max_steps",
            "log_every",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise SpecdiffError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size > np.iinfo(_TOKEN_DTYPE).max + 1:
            raise SpecdiffError(f"vocab size {self.vocab_size} does not fit uint16 token files")
        if self.num_heads % self.num_kv_heads:
            raise SpecdiffError(
                f"heads ({self.num_heads}) must be a multiple of kv heads ({self.num_kv_heads})"
            )
        if self.seq_len > self.max_position_embeddings:
            raise SpecdiffError(
                f"seq len {self.seq_len} exceeds max positions {self.max_position_embeddings}"
            )
        if not 0.0 <= self.min_lr_frac <= 1.0 or self.lr <= 0:
            raise SpecdiffError(f"need lr > 0 and 0 <= min lr frac <= 1, got {self.lr}, {self.min_lr_frac}")
        if min(self.warmup_steps, self.eval_every, self.save_every, self.eval_tokens) < 0:
            raise SpecdiffError("warmup steps, eval every, save every and eval tokens must be >= 0")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise SpecdiffError(f"time budget must be positive, got {self.time_budget_s}")
        if self.dtype not in ("auto", *_DTYPES):
            raise SpecdiffError(f"dtype must be auto, bfloat16 or float32, got {self.dtype!r}")
        if self.save_dtype not in _DTYPES:
            raise SpecdiffError(f"save dtype must be bfloat16 or float32, got {self.save_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}  # tolerate keys of newer versions
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        if not path.is_file():
            raise SpecdiffError(f"no {path.name} in {path.parent}: not a specdiff pretraining checkpoint")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


# Fields that fix the weights' shapes: a resumed run must keep them.
_SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "intermediate_size", "tie_word_embeddings",
)  # fmt: skip


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes, resolved from the config's `device` and `dtype`."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.amp.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type


def resolve_runtime(cfg: PretrainConfig) -> Runtime:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecdiffError("device cuda asked for, but torch sees no CUDA device")
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    return Runtime(device, None if dtype == "float32" else _DTYPES[dtype])


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
        return np.memmap(self.path(split), dtype=_TOKEN_DTYPE, mode="r")


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
    out = np.empty(sum(len(x) for x in ids) + len(ids), dtype=_TOKEN_DTYPE)
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
        if not path.is_file() or path.stat().st_size != meta.tokens[split] * np.dtype(_TOKEN_DTYPE).itemsize:
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
    if len(tokenizer) > np.iinfo(_TOKEN_DTYPE).max + 1:
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
    _write_json(out_dir / TOKENS_META_FILE, saved)
    return meta


# --- model ---------------------------------------------------------------------------------


def model_config(cfg: PretrainConfig) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.eos_token_id,
        attn_implementation="sdpa",
    )


def _set_special_ids(model: Qwen3ForCausalLM, eos_id: int) -> None:
    model.config.eos_token_id = model.config.pad_token_id = eos_id
    model.config.bos_token_id = None
    gen = model.generation_config
    gen.eos_token_id = gen.pad_token_id = eos_id
    gen.bos_token_id = None


def build_model(cfg: PretrainConfig) -> Qwen3ForCausalLM:
    """A freshly initialised fp32 model (seeded by `cfg.seed`)."""
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(model_config(cfg))
    _set_special_ids(model, cfg.eos_token_id)
    return model


@dataclass(frozen=True)
class ParamCount:
    embedding: int  # input embeddings plus the output head (when untied)
    non_embedding: int

    @property
    def total(self) -> int:
        return self.embedding + self.non_embedding


def count_parameters(model: torch.nn.Module) -> ParamCount:
    heads = (model.get_input_embeddings(), model.get_output_embeddings())
    embed = {id(p) for m in heads for p in m.parameters()}
    unique = {id(p): p for p in model.parameters()}  # tied weights count once
    n_embed = sum(p.numel() for i, p in unique.items() if i in embed)
    return ParamCount(n_embed, sum(p.numel() for p in unique.values()) - n_embed)


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not on norms' gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8, fused=device.type == "cuda")


# --- schedule, batches, evaluation ---------------------------------------------------------


def lr_at(cfg: PretrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from `lr` to `lr * min_lr_frac` as
    `progress` goes from 0 to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * p)))


@dataclass
class Schedule:
    """How far through its decay a run is: by steps, or by wall-clock over `decay_s` seconds when
    a time budget is set and binds first, so a time-limited run still anneals. `start_progress` is
    where a resumed run stood; its new time budget covers the rest of the decay."""

    cfg: PretrainConfig
    start_progress: float = 0.0
    decay_s: float | None = None  # None: by steps alone

    def progress(self, step: int, elapsed_s: float) -> float:
        span = max(1, self.cfg.max_steps - self.cfg.warmup_steps)
        by_steps = (step - self.cfg.warmup_steps) / span
        by_time = 0.0
        if self.decay_s is not None:
            frac = min(1.0, elapsed_s / self.decay_s) if self.decay_s > 0 else 1.0
            by_time = self.start_progress + (1.0 - self.start_progress) * frac
        return min(1.0, max(by_steps, by_time, self.start_progress))


def sample_batch(data: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """`batch_size` random windows of `seq_len + 1` tokens (inputs plus next-token targets)."""
    starts = rng.integers(0, len(data) - seq_len, size=batch_size)
    return torch.from_numpy(np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64))


def eval_windows(data: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """Fixed, evenly spaced windows of `seq_len + 1` tokens covering about `n_tokens` targets, so
    every evaluation of every run scores the same text."""
    n = max(1, min(n_tokens // seq_len, (len(data) - 1) // seq_len))
    starts = np.linspace(0, len(data) - seq_len - 1, n).astype(np.int64)
    return np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    ppl: float
    tokens: int


def next_token_loss(model: torch.nn.Module, xy: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting `xy[:, 1:]` from `xy[:, :-1]`, computed in fp32."""
    logits = model(input_ids=xy[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), xy[:, 1:].flatten(), reduction=reduction)


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: np.ndarray, batch_size: int, rt: Runtime) -> EvalResult:
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=rt.device)
    for i in range(0, len(windows), batch_size):
        xy = torch.from_numpy(windows[i : i + batch_size]).to(rt.device)
        with rt.autocast():
            total += next_token_loss(model, xy, reduction="sum")
    model.train(was_training)
    n = windows.shape[0] * (windows.shape[1] - 1)
    loss = total.item() / n
    return EvalResult(loss, math.exp(min(loss, 50.0)), n)


# --- checkpoints ---------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where training stands; saved in `trainer_state.pt` with the optimizer and RNG states."""

    step: int = 0
    tokens_seen: int = 0
    progress: float = 0.0  # of the LR decay, in [0, 1]
    train_time_s: float = 0.0  # summed over the training loops of every run so far
    last_train_loss: float | None = None
    heldout_loss: float | None = None


@dataclass
class PretrainStats:
    """Summary of a run; saved as `pretrain_stats.json`."""

    steps: int
    tokens_seen: int
    final_train_loss: float | None
    heldout_loss: float | None
    heldout_ppl: float | None
    heldout_tokens: int
    stop_reason: str  # max_steps | time_budget
    wall_time_s: float  # this invocation, setup and saving included
    train_time_s: float  # training loops of all runs so far
    run_steps: int  # steps taken by this invocation
    tokens_per_s: float  # this invocation's training loop after its first step
    first_step_s: float  # the first step, torch.compile and CUDA warm-up included
    device: str
    autocast_dtype: str
    params_embedding: int
    params_non_embedding: int
    params_total: int
    checkpoint_mb: float = 0.0  # model weight files
    torch_version: str = torch.__version__
    transformers_version: str = transformers.__version__


def _rng_state(data_rng: np.random.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        # JSON text: numpy's PCG64 state holds 128-bit ints, which weights_only loading refuses.
        "data": json.dumps(data_rng.bit_generator.state),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], data_rng: np.random.Generator) -> None:
    data_rng.bit_generator.state = json.loads(state["data"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _weight_files(out: Path) -> list[Path]:
    return sorted(out.glob("model*.safetensors"))


def save_checkpoint(
    out: Path,
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    cfg: PretrainConfig,
    state: TrainerState,
    optimizer: torch.optim.Optimizer,
    data_rng: np.random.Generator,
) -> float:
    """Write the whole checkpoint folder; returns the size of the weight files in MB."""
    out.mkdir(parents=True, exist_ok=True)
    dtype = _DTYPES[cfg.save_dtype]
    # A converted copy, so the live fp32 model keeps training after a mid-run save.
    weights = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=weights, max_shard_size=MAX_SHARD_SIZE)
    # save_pretrained records the live model's fp32; name the dtype the shards hold, so a plain
    # from_pretrained (dtype "auto") loads them as saved.
    hf_config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    hf_config["dtype"] = cfg.save_dtype
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(out))
    cfg.save(out / CONFIG_FILE)
    trainer: dict[str, Any] = {"state": asdict(state), "rng": _rng_state(data_rng)}
    if cfg.save_optimizer:
        trainer["optimizer"] = optimizer.state_dict()
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(trainer, tmp)
    tmp.replace(out / STATE_FILE)
    files = _weight_files(out)
    big = [f.name for f in files if f.stat().st_size > 16 * 2**20]
    if big:
        print(f"warning: weight files over 16 MiB: {', '.join(big)}", file=sys.stderr)
    return round(sum(f.stat().st_size for f in files) / 1e6, 2)


# --- training ------------------------------------------------------------------------------


def _append_log(out: Path, row: dict[str, Any]) -> None:
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _check_resume_config(saved: PretrainConfig, cfg: PretrainConfig) -> None:
    for name in _SHAPE_FIELDS:
        if getattr(saved, name) != getattr(cfg, name):
            raise SpecdiffError(
                f"cannot resume: {name} is {getattr(saved, name)} in the checkpoint, {getattr(cfg, name)} now"
            )


@dataclass
class _Interval:
    """Training since the last log line. Losses are summed on the device, so the only host sync
    is one `.item()` per logging interval; eval time is added to `t_start` so tok/s counts
    training alone."""

    t_start: float
    steps: int = 0
    loss_sum: torch.Tensor | None = None

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum = loss.detach() if self.loss_sum is None else self.loss_sum + loss.detach()
        self.steps += 1


@dataclass
class LoopResult:
    stop_reason: str  # max_steps | time_budget
    steps: int
    seconds: float
    first_step_s: float  # includes torch.compile and CUDA warm-up

    @property
    def steps_per_s(self) -> float:
        """Steady rate: the steps after the first, over their time (evals included)."""
        if self.steps < 2:
            return 0.0
        return (self.steps - 1) / max(self.seconds - self.first_step_s, 1e-9)


class Trainer:
    """One invocation's training: the model, its optimizer and data, and where it stands."""

    def __init__(
        self,
        cfg: PretrainConfig,
        tokens: TokenFiles,
        tokenizer: PreTrainedTokenizerFast,
        out: Path,
        resume: bool,
    ) -> None:
        self.cfg, self.tokenizer, self.out = cfg, tokenizer, out
        self.rt = resolve_runtime(cfg)
        if self.rt.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        self.train_data = tokens.load("train")
        heldout = tokens.load("heldout")
        self.windows = eval_windows(heldout, cfg.seq_len, cfg.eval_tokens) if cfg.eval_tokens else None
        self.data_rng = np.random.default_rng(cfg.seed)
        self.state = TrainerState()
        saved: dict[str, Any] = {}
        if resume:
            self.model = Qwen3ForCausalLM.from_pretrained(out, dtype=torch.float32)
            _set_special_ids(self.model, cfg.eos_token_id)
            # Our own file; weights_only still refuses anything but tensors and plain containers.
            saved = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
            self.state = TrainerState(**saved["state"])
            _restore_rng(saved["rng"], self.data_rng)
        else:
            self.model = build_model(cfg)
        self.model.to(self.rt.device).train()
        self.optimizer = make_optimizer(self.model, cfg, self.rt.device)
        if "optimizer" in saved:
            self.optimizer.load_state_dict(saved["optimizer"])
        elif resume:
            print(
                "warning: checkpoint has no optimizer state; AdamW moments start from zero",
                file=sys.stderr,
            )
        self.fwd = torch.compile(self.model) if cfg.compile else self.model
        self.schedule = Schedule(cfg, start_progress=self.state.progress)
        self.params = count_parameters(self.model)
        self.tokens_per_step = cfg.batch_size * cfg.seq_len

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a fresh random batch; returns (loss, grad norm) on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        pin = self.rt.device.type == "cuda"
        xy = sample_batch(self.train_data, self.cfg.batch_size, self.cfg.seq_len, self.data_rng)
        xy = (xy.pin_memory() if pin else xy).to(self.rt.device, non_blocking=pin)
        with self.rt.autocast():
            loss = next_token_loss(self.fwd, xy)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return loss, gnorm

    def log_train(self, interval: _Interval, lr: float, gnorm: torch.Tensor, t0: float) -> None:
        now = time.perf_counter()
        assert interval.loss_sum is not None
        loss = interval.loss_sum.item() / interval.steps
        tok_s = interval.steps * self.tokens_per_step / max(now - interval.t_start, 1e-9)
        self.state.last_train_loss = loss
        gn = gnorm.item()
        row = {
            "step": self.state.step, "loss": round(loss, 5), "lr": lr, "grad_norm": round(gn, 4),
            "tokens_seen": self.state.tokens_seen, "tokens_per_s": round(tok_s, 1),
            "elapsed_s": round(now - t0, 2),
        }  # fmt: skip
        _append_log(self.out, row)
        print(
            f"step {self.state.step}/{self.cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | gnorm {gn:.3f} "
            f"| {tok_s / 1e3:.1f}k tok/s | {now - t0:.0f}s",
            flush=True,
        )

    def evaluate(self) -> EvalResult | None:
        if self.windows is None:
            return None
        res = evaluate(self.model, self.windows, self.cfg.batch_size, self.rt)
        self.state.heldout_loss = res.loss
        row = {"step": self.state.step, "heldout_loss": round(res.loss, 5), "heldout_ppl": round(res.ppl, 3)}
        _append_log(self.out, row)
        print(f"eval step {self.state.step} | held-out loss {res.loss:.4f} | ppl {res.ppl:.2f}", flush=True)
        return res

    def save(self) -> float:
        return save_checkpoint(
            self.out, self.model, self.tokenizer, self.cfg, self.state, self.optimizer, self.data_rng
        )

    def loop(self) -> LoopResult:
        """Train until `max_steps` or the time budget, logging, evaluating and saving on the way."""
        cfg, state = self.cfg, self.state
        start_step, t0 = state.step, time.perf_counter()
        # The time-driven decay starts after the first step, so compile time does not use it up.
        t_decay, first_step_s = t0, 0.0
        interval = _Interval(t0)
        lr, gnorm = cfg.lr, torch.zeros(())
        stop_reason = "max_steps"
        while state.step < cfg.max_steps:
            now = time.perf_counter()
            if cfg.time_budget_s is not None and now - t0 >= cfg.time_budget_s:
                stop_reason = "time_budget"
                break
            state.progress = self.schedule.progress(state.step, now - t_decay)
            lr = lr_at(cfg, state.step, state.progress)
            loss, gnorm = self.train_step(lr)
            interval.add(loss)
            if state.step == start_step + 1:
                t_decay = time.perf_counter()
                first_step_s = t_decay - t0
                if cfg.time_budget_s is not None:
                    self.schedule.decay_s = cfg.time_budget_s - first_step_s
            if state.step % cfg.log_every == 0:
                self.log_train(interval, lr, gnorm, t0)
                interval = _Interval(time.perf_counter())
            last = state.step == cfg.max_steps  # the final eval and save come after the loop
            if cfg.eval_every and state.step % cfg.eval_every == 0 and not last:
                t_eval = time.perf_counter()
                self.evaluate()
                interval.t_start += time.perf_counter() - t_eval
            if cfg.save_every and state.step % cfg.save_every == 0 and not last:
                self.save()
        if interval.steps:
            self.log_train(interval, lr, gnorm, t0)
        seconds = time.perf_counter() - t0
        state.train_time_s += seconds
        return LoopResult(stop_reason, state.step - start_step, seconds, first_step_s)


def pretrain(
    cfg: PretrainConfig,
    corpus_dir: Path,
    tokenizer_dir: Path | None,
    out: Path,
    *,
    resume: bool = False,
    tokens_dir: Path | None = None,
    num_workers: int = 1,
) -> PretrainStats:
    """Train (or, with `resume`, continue training) and save the checkpoint folder `out`.

    `cfg.vocab_size` and `cfg.eos_token_id` are taken from the tokenizer. On resume the model
    shape must match the checkpoint's; `tokenizer_dir` defaults to the checkpoint's own copy."""
    t_wall = time.perf_counter()
    out = Path(out)
    if resume:
        if not (out / STATE_FILE).is_file():
            raise SpecdiffError(f"cannot resume: no {STATE_FILE} in {out}")
        tokenizer_dir = out if tokenizer_dir is None else tokenizer_dir
    elif (out / STATE_FILE).is_file():
        raise SpecdiffError(f"{out} already holds a checkpoint: pass --resume, or choose another --out")
    if tokenizer_dir is None:
        raise SpecdiffError("a tokenizer directory is needed (--tokenizer)")

    tokens = tokenize_corpus(corpus_dir, tokenizer_dir, tokens_dir, num_workers)
    how = "cached" if tokens.cached else f"encoded in {tokens.encode_s:.1f}s"
    n = tokens.tokens
    print(f"tokens: train {n['train']:,}, held-out {n['heldout']:,} ({how}) in {tokens.dir}", flush=True)
    cfg.vocab_size, cfg.eos_token_id = tokens.vocab_size, tokens.eos_token_id
    cfg.validate()
    for split in SPLITS:
        if n[split] < cfg.seq_len + 2:
            raise SpecdiffError(f"{split} split has {n[split]} tokens, fewer than seq len {cfg.seq_len} + 2")
    if resume:
        _check_resume_config(PretrainConfig.load(out / CONFIG_FILE), cfg)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / LOG_FILE).unlink(missing_ok=True)

    trainer = Trainer(cfg, tokens, load_tokenizer(tokenizer_dir), out, resume)
    p, rt = trainer.params, trainer.rt
    budget = f" or {cfg.time_budget_s:.0f}s" if cfg.time_budget_s else ""
    print(
        f"model: {p.total / 1e6:.2f}M params ({p.embedding / 1e6:.2f}M embedding, "
        f"{p.non_embedding / 1e6:.2f}M non-embedding); {rt.name}, autocast {rt.amp_dtype or 'off'}; "
        f"step {trainer.state.step} -> {cfg.max_steps}{budget}",
        flush=True,
    )
    loop = trainer.loop()
    final = trainer.evaluate()
    ckpt_mb = trainer.save()
    stats = PretrainStats(
        steps=trainer.state.step,
        tokens_seen=trainer.state.tokens_seen,
        final_train_loss=trainer.state.last_train_loss,
        heldout_loss=final.loss if final else None,
        heldout_ppl=final.ppl if final else None,
        heldout_tokens=final.tokens if final else 0,
        stop_reason=loop.stop_reason,
        wall_time_s=round(time.perf_counter() - t_wall, 2),
        train_time_s=round(trainer.state.train_time_s, 2),
        run_steps=loop.steps,
        tokens_per_s=round(loop.steps_per_s * trainer.tokens_per_step, 1),
        first_step_s=round(loop.first_step_s, 2),
        device=rt.name,
        autocast_dtype=str(rt.amp_dtype or "float32").removeprefix("torch."),
        params_embedding=p.embedding,
        params_non_embedding=p.non_embedding,
        params_total=p.total,
        checkpoint_mb=ckpt_mb,
    )
    _write_json(out / STATS_FILE, asdict(stats))
    return stats


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
