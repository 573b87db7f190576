"""Pretraining of the target model: a small Qwen3 causal LM trained from scratch on the corpus.

Owns every setting of a run (`PretrainConfig`), the model it builds, the next-token loss on
random windows of the train tokens (`specdiff.train.tokens`), the held-out loss on fixed windows,
the run's summary (`PretrainStats`) and the checkpoint folder, which resumes training and loads
with `AutoModelForCausalLM` + `AutoTokenizer`. The loop itself (AdamW, warmup + cosine learning
rate, gradient clipping, bf16 autocast on CUDA, optional `torch.compile`) is
`specdiff.train.loop.Trainer`.

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

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from specdiff.errors import SpecdiffError
from specdiff.train.config import DTYPES, ModelTrainConfig, Runtime, model_config, resolve_runtime, write_json
from specdiff.train.loop import (
    LOG_FILE, MAX_SHARD_SIZE, STATE_FILE, Reporter, Trainer, TrainerState, append_log, load_trainer_state,
    save_trainer_state, warn,
)  # fmt: skip
from specdiff.train.tokenizer import load_tokenizer
from specdiff.train.tokens import SPLITS, TOKEN_DTYPE, TokenFiles, eval_windows, sample_windows, tokenize_corpus

CONFIG_FILE = "specdiff_pretrain.json"
STATS_FILE = "pretrain_stats.json"


@dataclass
class PretrainConfig(ModelTrainConfig):
    """Every setting of a pretraining run; saved as `specdiff_pretrain.json` in each checkpoint.
    The model shape, optimisation, horizon and runtime fields are `ModelTrainConfig`'s."""

    eval_tokens: int = 262_144  # held-out tokens scored per evaluation
    save_every: int = 0  # 0: only at the end
    save_optimizer: bool = True

    POSITIVE = (*ModelTrainConfig.POSITIVE, "max_position_embeddings")
    NON_NEGATIVE = (*ModelTrainConfig.NON_NEGATIVE, "save_every", "eval_tokens")

    def validate(self) -> None:
        super().validate()
        if self.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
            raise SpecdiffError(f"vocab size {self.vocab_size} does not fit uint16 token files")

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> PretrainConfig:
        if not path.is_file():
            raise SpecdiffError(f"no {path.name} in {path.parent}: not a specdiff pretraining checkpoint")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


# Fields that fix the weights' shapes: a resumed run must keep them.
SHAPE_FIELDS = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "intermediate_size", "tie_word_embeddings",
)  # fmt: skip


def check_resume_config(saved: PretrainConfig, cfg: PretrainConfig) -> None:
    for name in SHAPE_FIELDS:
        if getattr(saved, name) != getattr(cfg, name):
            raise SpecdiffError(
                f"cannot resume: {name} is {getattr(saved, name)} in the checkpoint, {getattr(cfg, name)} now"
            )


# --- model and loss ------------------------------------------------------------------------


def set_special_ids(model: Qwen3ForCausalLM, eos_id: int) -> None:
    model.config.eos_token_id = model.config.pad_token_id = eos_id
    model.config.bos_token_id = None
    gen = model.generation_config
    gen.eos_token_id = gen.pad_token_id = eos_id
    gen.bos_token_id = None


def build_model(cfg: PretrainConfig) -> Qwen3ForCausalLM:
    """A freshly initialised fp32 model (seeded by `cfg.seed`)."""
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(model_config(cfg))
    set_special_ids(model, cfg.eos_token_id)
    return model


def next_token_loss(model: torch.nn.Module, xy: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting `xy[:, 1:]` from `xy[:, :-1]` (xy [B, L + 1]), computed in fp32."""
    logits = model(input_ids=xy[:, :-1], use_cache=False).logits  # [B, L, V]
    return F.cross_entropy(logits.float().flatten(0, 1), xy[:, 1:].flatten(), reduction=reduction)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    ppl: float
    tokens: int


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: np.ndarray, batch_size: int, rt: Runtime) -> EvalResult:
    """Mean next-token loss over `windows` [n, L + 1]."""
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
    dtype = DTYPES[cfg.save_dtype]
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
    save_trainer_state(out, state, data_rng, optimizer if cfg.save_optimizer else None)
    files = sorted(out.glob("model*.safetensors"))
    big = [f.name for f in files if f.stat().st_size > 16 * 2**20]
    if big:
        warn(f"weight files over 16 MiB: {', '.join(big)}")
    return round(sum(f.stat().st_size for f in files) / 1e6, 2)


# --- training ------------------------------------------------------------------------------


class PretrainTrainer(Trainer):
    """The shared loop on next-token batches of the train tokens, from scratch or resumed."""

    def __init__(
        self, cfg: PretrainConfig, tokens: TokenFiles, tokenizer: PreTrainedTokenizerFast, out: Path,
        resume: bool, reporter: Reporter | None = None,
    ) -> None:  # fmt: skip
        rt = resolve_runtime(cfg)
        self.tokenizer = tokenizer
        self.train_data = tokens.load("train")
        heldout = tokens.load("heldout")
        self.windows = eval_windows(heldout, cfg.seq_len, cfg.eval_tokens) if cfg.eval_tokens else None
        self.data_rng = np.random.default_rng(cfg.seed)
        state, opt_state = TrainerState(), None
        if resume:
            model = Qwen3ForCausalLM.from_pretrained(out, dtype=torch.float32)
            set_special_ids(model, cfg.eos_token_id)
            state, opt_state = load_trainer_state(out, self.data_rng)
        else:
            model = build_model(cfg)
        super().__init__(cfg, model, rt, out, state, reporter)
        self.cfg: PretrainConfig = cfg
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)
        elif resume:
            warn("checkpoint has no optimizer state; AdamW moments start from zero")
        self.tokens_per_step = cfg.batch_size * cfg.seq_len
        self.save_every = cfg.save_every

    def next_batch(self) -> torch.Tensor:
        """[B, L + 1] long on the device: inputs plus next-token targets."""
        pin = self.rt.device.type == "cuda"
        xy = sample_windows(self.train_data, self.cfg.batch_size, self.cfg.seq_len + 1, self.data_rng)
        return (xy.pin_memory() if pin else xy).to(self.rt.device, non_blocking=pin)

    def forward_backward(self, batch: torch.Tensor) -> torch.Tensor:
        with self.rt.autocast():
            loss = next_token_loss(self.fwd, batch)
        loss.backward()
        return loss

    def train_row(self, loss: float, lr: float, gnorm: float, steps_per_s: float, elapsed_s: float
                  ) -> tuple[dict[str, Any], str]:
        tok_s = steps_per_s * self.tokens_per_step
        row = {
            "step": self.state.step, "loss": round(loss, 5), "lr": lr, "grad_norm": round(gnorm, 4),
            "tokens_seen": self.state.tokens_seen, "tokens_per_s": round(tok_s, 1),
            "elapsed_s": round(elapsed_s, 2),
        }  # fmt: skip
        text = (
            f"step {self.state.step}/{self.cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | gnorm {gnorm:.3f} "
            f"| {tok_s / 1e3:.1f}k tok/s | {elapsed_s:.0f}s"
        )
        return row, text

    def evaluate(self) -> EvalResult | None:
        if self.windows is None:
            return None
        res = evaluate(self.model, self.windows, self.cfg.batch_size, self.rt)
        self.state.heldout_loss = res.loss
        row = {"step": self.state.step, "heldout_loss": round(res.loss, 5), "heldout_ppl": round(res.ppl, 3)}
        append_log(self.out, row)
        self.reporter.line(f"eval step {self.state.step} | held-out loss {res.loss:.4f} | ppl {res.ppl:.2f}")
        return res

    def save(self) -> float:
        return save_checkpoint(
            self.out, self.model, self.tokenizer, self.cfg, self.state, self.optimizer, self.data_rng
        )


def pretrain(
    cfg: PretrainConfig,
    corpus_dir: Path,
    tokenizer_dir: Path | None,
    out: Path,
    *,
    resume: bool = False,
    tokens_dir: Path | None = None,
    num_workers: int = 1,
    reporter: Reporter | None = None,
) -> PretrainStats:
    """Train (or, with `resume`, continue training) and save the checkpoint folder `out`.

    `cfg.vocab_size` and `cfg.eos_token_id` are taken from the tokenizer. On resume the model
    shape must match the checkpoint's; `tokenizer_dir` defaults to the checkpoint's own copy.
    Progress goes to `reporter` (default: log lines on stdout)."""
    t_wall = time.perf_counter()
    out = Path(out)
    reporter = reporter or Reporter()
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
    reporter.line(f"tokens: train {n['train']:,}, held-out {n['heldout']:,} ({how}) in {tokens.dir}")
    cfg.vocab_size, cfg.eos_token_id = tokens.vocab_size, tokens.eos_token_id
    cfg.validate()
    for split in SPLITS:
        if n[split] < cfg.seq_len + 2:
            raise SpecdiffError(f"{split} split has {n[split]} tokens, fewer than seq len {cfg.seq_len} + 2")
    if resume:
        check_resume_config(PretrainConfig.load(out / CONFIG_FILE), cfg)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / LOG_FILE).unlink(missing_ok=True)

    trainer = PretrainTrainer(cfg, tokens, load_tokenizer(tokenizer_dir), out, resume, reporter)
    p, rt = trainer.params, trainer.rt
    budget = f" or {cfg.time_budget_s:.0f}s" if cfg.time_budget_s else ""
    reporter.line(
        f"model: {p.total / 1e6:.2f}M params ({p.embedding / 1e6:.2f}M embedding, "
        f"{p.non_embedding / 1e6:.2f}M non-embedding); {rt.name}, autocast {rt.amp_dtype or 'off'}; "
        f"step {trainer.state.step} -> {cfg.max_steps}{budget}"
    )
    loop = trainer.loop()
    final = trainer.final_eval()
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
        autocast_dtype=rt.amp_name,
        params_embedding=p.embedding,
        params_non_embedding=p.non_embedding,
        params_total=p.total,
        checkpoint_mb=ckpt_mb,
    )
    write_json(out / STATS_FILE, asdict(stats))
    return stats
