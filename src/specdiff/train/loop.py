"""The training loop the Qwen3 trainers share, and what it keeps between steps and between runs.

Owns the learning-rate schedule (linear warmup, then cosine decay by steps or, under a time
budget, by wall-clock), the AdamW setup, parameter counts, where a run stands (`TrainerState`) and
its resumable file (`trainer_state.pt`: state, RNG states, optimizer), the log file
(`train_log.jsonl`, one JSON row per logged interval and per evaluation), the progress reports
(`Reporter`) and `Trainer`: one optimizer step after another until `max_steps` or the time budget,
logging every `log_every` steps and evaluating every `eval_every`. What is trained, on which
batches, with which loss, and how a run is saved, is the subclass's.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specdiff.train.config import ModelTrainConfig, Runtime

LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.pt"
MAX_SHARD_SIZE = "15MB"  # files coming back from the GPU machine must stay under 16 MiB


# --- schedule and optimizer ----------------------------------------------------------------


def lr_at(cfg: ModelTrainConfig, step: int, progress: float) -> float:
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

    cfg: ModelTrainConfig
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


def make_optimizer(model: torch.nn.Module, cfg: ModelTrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not on norms' gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8, fused=device.type == "cuda")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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


# --- state, resume, log --------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where training stands; saved in `trainer_state.pt` with the optimizer and RNG states."""

    step: int = 0
    tokens_seen: int = 0
    progress: float = 0.0  # of the LR decay, in [0, 1]
    train_time_s: float = 0.0  # summed over the training loops of every run so far
    last_train_loss: float | None = None
    heldout_loss: float | None = None


def rng_state(data_rng: np.random.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        # JSON text: numpy's PCG64 state holds 128-bit ints, which weights_only loading refuses.
        "data": json.dumps(data_rng.bit_generator.state),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], data_rng: np.random.Generator) -> None:
    data_rng.bit_generator.state = json.loads(state["data"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(
    out: Path, state: TrainerState, data_rng: np.random.Generator, optimizer: torch.optim.Optimizer | None
) -> None:
    """`trainer_state.pt`, written whole or not at all (a killed save leaves the last one)."""
    trainer: dict[str, Any] = {"state": asdict(state), "rng": rng_state(data_rng)}
    if optimizer is not None:
        trainer["optimizer"] = optimizer.state_dict()
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(trainer, tmp)
    tmp.replace(out / STATE_FILE)


def load_trainer_state(out: Path, data_rng: np.random.Generator) -> tuple[TrainerState, dict[str, Any] | None]:
    """-> (state, optimizer state or None); restores the RNGs saved beside them."""
    # Our own file; weights_only still refuses anything but tensors and plain containers.
    saved = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    restore_rng(saved["rng"], data_rng)
    return TrainerState(**saved["state"]), saved.get("optimizer")


def append_log(out: Path, row: dict[str, Any]) -> None:
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# --- progress ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTick:
    """Where a run stands after an optimizer step. Loss and rate are those of the last logged
    interval: reading the loss every step would cost a device sync per step."""

    step: int
    max_steps: int
    loss: float | None  # None before the first log line
    tokens_per_s: float | None


class Reporter:
    """Where a run reports: `line` gets the log lines (setup, loss per interval, evaluations),
    `tick` is called after every optimizer step. This default prints the lines on stdout and
    ignores the ticks; a caller that draws a progress bar passes its own."""

    def line(self, text: str) -> None:
        print(text, flush=True)

    def tick(self, tick: StepTick) -> None:
        pass


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


# --- the loop ------------------------------------------------------------------------------


@dataclass
class Interval:
    """Training since the last log line. Losses are summed on the device, so the only host sync
    is one `.item()` per logging interval; eval time is added to `t_start` so the rate counts
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
    """One invocation's training of `model` (fp32 master weights) from `state`. A subclass gives
    the batches (`next_batch`), the loss (`forward_backward`), the log rows (`train_row`) and the
    held-out evaluation (`evaluate`); `save_every` > 0 also calls its `save` mid-run."""

    tokens_per_step: int = 0
    save_every: int = 0

    def __init__(
        self, cfg: ModelTrainConfig, model: torch.nn.Module, rt: Runtime, out: Path,
        state: TrainerState, reporter: Reporter | None = None,
    ) -> None:  # fmt: skip
        self.cfg, self.rt, self.out, self.state = cfg, rt, out, state
        if rt.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        self.reporter = reporter or Reporter()
        self.model = model.to(rt.device).train()
        self.optimizer = make_optimizer(model, cfg, rt.device)
        self.fwd = torch.compile(model) if cfg.compile else model
        self.schedule = Schedule(cfg, start_progress=state.progress)
        self.params = count_parameters(model)
        self.last_eval: Any = None
        self.last_eval_step = -1
        self.last_rate: float | None = None  # tokens/s of the last logged interval

    # The subclass's part.
    def next_batch(self) -> Any:
        raise NotImplementedError

    def forward_backward(self, batch: Any) -> torch.Tensor:
        """The batch's loss through `self.fwd` under autocast, backpropagated; returns the loss."""
        raise NotImplementedError

    def train_row(self, loss: float, lr: float, gnorm: float, steps_per_s: float, elapsed_s: float
                  ) -> tuple[dict[str, Any], str]:
        """-> (log row, log line) of an interval with mean `loss`."""
        raise NotImplementedError

    def evaluate(self) -> Any:
        raise NotImplementedError

    def save(self) -> Any:
        raise NotImplementedError

    # The shared part.
    def train_step(self, lr: float, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a fresh batch; returns (loss, grad norm) on the device."""
        set_lr(self.optimizer, lr)
        batch = self.next_batch()
        try:
            loss = self.forward_backward(batch)
        except Exception as e:  # a failed torch.compile must not cost the run: fall back to eager once
            if self.fwd is self.model or not first:
                raise
            warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); training eager")
            self.fwd = self.model
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.forward_backward(batch)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return loss, gnorm

    def log_train(self, interval: Interval, lr: float, gnorm: torch.Tensor, t0: float) -> None:
        now = time.perf_counter()
        assert interval.loss_sum is not None
        loss = interval.loss_sum.item() / interval.steps
        steps_per_s = interval.steps / max(now - interval.t_start, 1e-9)
        self.state.last_train_loss = loss
        self.last_rate = steps_per_s * self.tokens_per_step
        row, text = self.train_row(loss, lr, gnorm.item(), steps_per_s, now - t0)
        append_log(self.out, row)
        self.reporter.line(text)

    def run_eval(self) -> Any:
        self.last_eval, self.last_eval_step = self.evaluate(), self.state.step
        return self.last_eval

    def final_eval(self) -> Any:
        """The evaluation at the step the run stopped at (once: a time budget can stop the loop
        right after an evaluation)."""
        return self.last_eval if self.last_eval_step == self.state.step else self.run_eval()

    def loop(self) -> LoopResult:
        """Train until `max_steps` or the time budget, logging, evaluating and saving on the way."""
        cfg, state = self.cfg, self.state
        start_step, t0 = state.step, time.perf_counter()
        # The time-driven decay starts after the first step, so compile time does not use it up.
        t_decay, first_step_s = t0, 0.0
        interval = Interval(t0)
        lr, gnorm = cfg.lr, torch.zeros(())
        stop_reason = "max_steps"
        while state.step < cfg.max_steps:
            now = time.perf_counter()
            if cfg.time_budget_s is not None and now - t0 >= cfg.time_budget_s:
                stop_reason = "time_budget"
                break
            state.progress = self.schedule.progress(state.step, now - t_decay)
            lr = lr_at(cfg, state.step, state.progress)
            loss, gnorm = self.train_step(lr, first=state.step == start_step)
            interval.add(loss)
            if state.step == start_step + 1:
                t_decay = time.perf_counter()
                first_step_s = t_decay - t0
                if cfg.time_budget_s is not None:
                    self.schedule.decay_s = cfg.time_budget_s - first_step_s
            if state.step % cfg.log_every == 0:
                self.log_train(interval, lr, gnorm, t0)
                interval = Interval(time.perf_counter())
            last = state.step == cfg.max_steps  # the final eval and save come after the loop
            if cfg.eval_every and state.step % cfg.eval_every == 0 and not last:
                t_eval = time.perf_counter()
                self.run_eval()
                interval.t_start += time.perf_counter() - t_eval
            if self.save_every and state.step % self.save_every == 0 and not last:
                self.save()
            self.reporter.tick(StepTick(state.step, cfg.max_steps, state.last_train_loss, self.last_rate))
        if interval.steps:
            self.log_train(interval, lr, gnorm, t0)
        seconds = time.perf_counter() - t0
        state.train_time_s += seconds
        return LoopResult(stop_reason, state.step - start_step, seconds, first_step_s)
