"""The settings the trainers share, and where a run computes.

Owns `TrainConfig` (optimisation, horizon and seed: what every trainer has, the DFlash drafter's
included), `ModelTrainConfig` (a Qwen3 trained from scratch by the shared loop: model shape,
schedule, logging and runtime; the target's pretraining and the dLLM extend it) and the Hugging
Face config it describes (`model_config`), `Runtime` (device
and autocast dtype resolved from the settings) and the JSON writer every settings file goes
through. Each trainer keeps every setting of a run in one subclass, saved with what it trains.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3Config

from specdiff.errors import SpecdiffError

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class TrainConfig:
    """Optimisation, horizon and seed. A subclass that wants other defaults redeclares the field
    (it keeps its place, so saved key sets stay what they were)."""

    batch_size: int = 64
    lr: float = 1.5e-3
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Horizon: stop at max_steps or after time_budget_s of training loop, whichever comes first.
    max_steps: int = 10_000
    time_budget_s: float | None = None
    eval_every: int = 500  # 0: only at the end
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelTrainConfig(TrainConfig):
    """A Qwen3 model trained from scratch by `specdiff.train.loop.Trainer`. The shape fields are
    named as `model_config` reads them; vocab_size and eos_token_id come from the tokenizer."""

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
    seq_len: int = 512
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    betas: tuple[float, float] = (0.9, 0.95)
    log_every: int = 10
    save_dtype: str = "bfloat16"
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # autocast dtype; auto: bfloat16 on CUDA, float32 (no autocast) on CPU
    compile: bool = False

    # Fields that must be positive and fields that must not be negative; subclasses add theirs.
    POSITIVE = (
        "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
        "intermediate_size", "seq_len", "batch_size", "max_steps", "log_every",
    )  # fmt: skip
    NON_NEGATIVE = ("warmup_steps", "eval_every")

    def validate(self) -> None:
        for name in self.POSITIVE:
            if getattr(self, name) <= 0:
                raise SpecdiffError(f"{name} must be positive, got {getattr(self, name)}")
        for name in self.NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise SpecdiffError(f"{name} must be >= 0, got {getattr(self, name)}")
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
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise SpecdiffError(f"time budget must be positive, got {self.time_budget_s}")
        if self.dtype not in ("auto", *DTYPES):
            raise SpecdiffError(f"dtype must be auto, bfloat16 or float32, got {self.dtype!r}")
        if self.save_dtype not in DTYPES:
            raise SpecdiffError(f"save dtype must be bfloat16 or float32, got {self.save_dtype!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}  # tolerate keys of newer versions
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])  # JSON gives a list
        return cls(**kwargs)


def model_config(cfg: ModelTrainConfig) -> Qwen3Config:
    """The Hugging Face config of the model `cfg` describes (eos doubles as the pad id)."""
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

    @property
    def amp_name(self) -> str:
        return str(self.amp_dtype or "float32").removeprefix("torch.")


def resolve_runtime(cfg: ModelTrainConfig) -> Runtime:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecdiffError("device cuda asked for, but torch sees no CUDA device")
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    return Runtime(device, None if dtype == "float32" else DTYPES[dtype])


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
