"""Training of specdiff's own masked-diffusion LM: a small Qwen3 transformer used
bidirectionally, trained from scratch with LLaDA's masked-diffusion loss, for Spiffy.

What it is trained for. Spiffy is exact in two modes (research notes 2.5): block-causal
attention (SDAR-like) and the dual cache. We decode in the block-causal mode
(`base_visibility(..., block_causal=True)`), so training reproduces exactly what a row sees
there: a prompt of random length that stays clean and is visible to every row; after it the
answer, cut into blocks of `block_length` tokens; a row of answer block b sees the clean prompt,
the *clean* blocks before b (decoding has committed them) and the noised block b itself, never a
later block. Each window is laid out twice, at the same positions (as Spiffy's draft copies reuse
the block's positions):

    rows 0..S-1    x0: the clean window; block-causal among themselves (they give the keys and
                   values a decode sees for the prompt and the committed blocks)
    rows S..2S-1   xt: the answer with every block noised on its own; an answer row sees the
                   clean prompt and clean earlier blocks (left half) and its own noised block
                   (right half); prompt rows of this half are placeholders that see themselves

so all blocks of a window train in one forward (the block-diffusion layout of BD3-LM, here
with explicit 4-D masks as `specdiff.dllm.model` passes them). A full bidirectional forward
over a masked suffix (LLaDA without cache, or the dual cache's first step) is outside this
training distribution: Spiffy stays exact there with the dual cache, acceptance may be lower.

Loss (LLaDA): per block a noise level t ~ U(eps, 1]; each answer token is replaced by
`<|mask|>` with probability t; cross-entropy on the masked tokens weighted 1/t, summed and
divided by the window's answer length, averaged over the batch. Per block rather than per
sequence, since a block is what one decode denoises from all-mask to clean.

Data: the target's tokenizer (`data/tokenizer`: `<|endoftext|>` 0, `<|mask|>` 1) and its token
streams (`specdiff.train.tokens.load_token_splits`): `--tokens DIR` (train.bin and heldout.bin),
`--tokens FILE.bin` (one flat uint16 stream, e.g. scripts/gpu_target.sh's tokens_sample.bin; its
last `heldout_frac` is held out), or `--corpus DIR`, encoded with the cached `tokenize_corpus`.
The loop (AdamW, warmup + cosine learning rate, clipping, autocast, optional `torch.compile`) is
`specdiff.train.loop.Trainer`; this module owns the settings, the batches, the loss, the
evaluation and the output folder.

Output folder (`--out`): a Hugging Face folder (`config.json` with `"mask_token_id"` and
`"specdiff_dllm": true`, bf16 safetensors in shards under 16 MiB, `tokenizer.json` and
`tokenizer_config.json`), `specdiff_dllm.json` (`DLLMTrainConfig` and the run's statistics),
`train_log.jsonl` and a model card `README.md`. Load it with `specdiff.dllm.load_dllm`.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import Qwen3ForCausalLM

from specdiff.errors import SpecdiffError
from specdiff.train.config import DTYPES, ModelTrainConfig, Runtime, model_config, resolve_runtime, write_json
from specdiff.train.loop import LOG_FILE, MAX_SHARD_SIZE, Reporter, Trainer, TrainerState, append_log
from specdiff.train.tokens import TokenSplits, sample_windows

CONFIG_FILE = "specdiff_dllm.json"
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[3] / "data" / "tokenizer"


@dataclass
class DLLMTrainConfig(ModelTrainConfig):
    """Every setting of a dLLM training run; saved in `specdiff_dllm.json`. The fields shared with
    pretraining are `ModelTrainConfig`'s; those redeclared here only take other defaults."""

    # Model shape (vocab_size, eos and mask ids come from the tokenizer).
    mask_token_id: int = 1
    hidden_size: int = 320
    num_layers: int = 6
    num_heads: int = 5
    num_kv_heads: int = 5
    intermediate_size: int = 960
    max_position_embeddings: int = 512  # = seq_len: the longest prompt + answer it has seen
    tie_word_embeddings: bool = True
    # Diffusion layout.
    seq_len: int = 512  # window S: prompt + answer
    block_length: int = 32
    min_prompt: int = 8  # prompt length ~ U[min_prompt, seq_len - block_length]
    eps: float = 1e-3  # t ~ U(eps, 1]
    # Optimisation, horizon, evaluation and logging.
    batch_size: int = 32
    max_steps: int = 100_000
    eval_windows: int = 128  # fixed held-out windows (same text, prompts and noise every time)
    heldout_frac: float = 0.02  # flat token file: the tail held out
    log_every: int = 50

    POSITIVE = (*ModelTrainConfig.POSITIVE, "block_length", "eval_windows")

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.min_prompt <= self.seq_len - self.block_length:
            raise SpecdiffError(f"need 1 <= min prompt ({self.min_prompt}) <= seq len - block length "
                                f"({self.seq_len - self.block_length})")
        if not 0.0 < self.eps < 1.0:
            raise SpecdiffError(f"eps must be in (0, 1), got {self.eps}")
        if not 0.0 < self.heldout_frac < 0.5:
            raise SpecdiffError(f"heldout frac must be in (0, 0.5), got {self.heldout_frac}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise SpecdiffError(f"mask token id {self.mask_token_id} is outside the vocabulary of {self.vocab_size}")


# --- batches and loss ----------------------------------------------------------------------


@dataclass
class DiffusionBatch:
    ids: torch.Tensor  # [B, 2S] long: x0 then xt
    visible: torch.Tensor  # [B, 1, 2S, 2S] bool: row q may attend to column k
    position_ids: torch.Tensor  # [B, 2S]: both halves at positions 0..S-1
    target: torch.Tensor  # [B, S] x0
    masked: torch.Tensor  # [B, S] bool: noised answer positions (scored)
    weight: torch.Tensor  # [B, S] float: 1 / (t * answer length) at masked positions, else 0
    prompt_len: torch.Tensor  # [B] long


def diffusion_batch(x0: torch.Tensor, cfg: DLLMTrainConfig, g: torch.Generator) -> DiffusionBatch:
    """Clean windows x0 [B, S] -> the two-half block-diffusion layout (module docstring).

    Example, S = 6, prompt 2, block 2 (blk: -1 prompt, then answer blocks 0, 0, 1, 1): the xt row
    at position 4 (block 1) sees x0 columns 0..3 (prompt and clean block 0) and xt columns 4, 5."""
    B, S = x0.shape
    dev = x0.device
    prompt = torch.randint(cfg.min_prompt, S - cfg.block_length + 1, (B, 1), generator=g, device=dev)
    idx = torch.arange(S, device=dev)
    answer = idx[None] >= prompt  # [B, S]
    blk = torch.where(answer, torch.div(idx[None] - prompt, cfg.block_length, rounding_mode="floor"), -1)
    num_blocks = -(-(S - cfg.min_prompt) // cfg.block_length)
    t = cfg.eps + (1.0 - cfg.eps) * torch.rand(B, num_blocks, generator=g, device=dev)  # [B, nb] per block
    t_pos = t.gather(1, blk.clamp(min=0))  # [B, S]
    masked = answer & (torch.rand(B, S, generator=g, device=dev) < t_pos)
    xt = torch.where(masked, torch.full_like(x0, cfg.mask_token_id), x0)
    bq, bk = blk[:, :, None], blk[:, None, :]  # [B, S, 1], [B, 1, S]
    clean = bk <= bq  # block-causal over the clean half; the prompt (-1) sees the prompt
    noisy_to_clean = (bk < bq) & answer[:, :, None]
    noisy_to_noisy = (bk == bq) & answer[:, :, None] & answer[:, None, :]
    noisy_to_noisy |= torch.eye(S, dtype=torch.bool, device=dev) & ~answer[:, :, None]  # placeholders
    visible = torch.cat([torch.cat([clean, torch.zeros_like(clean)], 2),
                         torch.cat([noisy_to_clean, noisy_to_noisy], 2)], 1)[:, None]
    weight = masked / (t_pos * answer.sum(1, keepdim=True))
    return DiffusionBatch(torch.cat([x0, xt], 1), visible, torch.cat([idx, idx])[None].expand(B, -1), x0, masked,
                          weight, prompt[:, 0])


def diffusion_logits(model: torch.nn.Module, batch: DiffusionBatch) -> torch.Tensor:
    """[B, S, V] logits of the xt half (the only rows scored)."""
    return model(input_ids=batch.ids, attention_mask=batch.visible, position_ids=batch.position_ids,
                 use_cache=False, logits_to_keep=batch.target.shape[1]).logits


def diffusion_loss(logits: torch.Tensor, batch: DiffusionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (LLaDA loss: weighted masked CE, mean over the batch; per-position CE [B, S], fp32)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), batch.target.flatten(), reduction="none").view_as(batch.weight)
    return (ce * batch.weight).sum() / batch.target.shape[0], ce


# --- model and evaluation ------------------------------------------------------------------


def build_model(cfg: DLLMTrainConfig) -> Qwen3ForCausalLM:
    torch.manual_seed(cfg.seed)
    hf_cfg = model_config(cfg)
    hf_cfg.mask_token_id = cfg.mask_token_id
    hf_cfg.specdiff_dllm = True
    hf_cfg.pad_token_id = cfg.eos_token_id
    hf_cfg.bos_token_id = None
    return Qwen3ForCausalLM(hf_cfg)


@dataclass
class EvalResult:
    loss: float  # the training objective
    ce: float  # mean CE per masked token
    acc: float  # masked-token argmax accuracy
    masked_tokens: int


@torch.no_grad()
def evaluate(model: torch.nn.Module, heldout: np.ndarray, cfg: DLLMTrainConfig, rt: Runtime) -> EvalResult:
    """The same held-out windows, prompt lengths and noise at every call (a fixed seed)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(1234)
    g = torch.Generator(rt.device).manual_seed(1234)
    loss = ce_sum = correct = n = 0.0
    for i in range(0, cfg.eval_windows, cfg.batch_size):
        x0 = sample_windows(heldout, min(cfg.batch_size, cfg.eval_windows - i), cfg.seq_len, rng).to(rt.device)
        batch = diffusion_batch(x0, cfg, g)
        with rt.autocast():
            logits = diffusion_logits(model, batch)
            batch_loss, ce = diffusion_loss(logits, batch)
        loss += batch_loss.item() * x0.shape[0]
        ce_sum += ce[batch.masked].sum().item()
        correct += (logits.argmax(-1) == batch.target)[batch.masked].sum().item()
        n += batch.masked.sum().item()
    model.train(was_training)
    return EvalResult(loss / cfg.eval_windows, ce_sum / max(n, 1), correct / max(n, 1), int(n))


# --- saving --------------------------------------------------------------------------------


def save_model(out: Path, model: Qwen3ForCausalLM, cfg: DLLMTrainConfig, tokenizer_dir: Path,
               stats: dict[str, Any]) -> float:
    """The folder of the module docstring; returns the weight files' size in MB."""
    out.mkdir(parents=True, exist_ok=True)
    frozen = copy.deepcopy(model).to("cpu", DTYPES[cfg.save_dtype])  # the live model keeps fp32
    frozen.save_pretrained(out, max_shard_size=MAX_SHARD_SIZE)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, out / name)
    write_json(out / CONFIG_FILE, {"config": asdict(cfg), "stats": stats})
    mb = round(sum(f.stat().st_size for f in out.glob("model*.safetensors")) / 1e6, 2)
    (out / "README.md").write_text(model_card(cfg, stats, mb), encoding="utf-8")
    return mb


def model_card(cfg: DLLMTrainConfig, stats: dict[str, Any], weights_mb: float) -> str:
    """README.md of a trained folder: every number comes from this run's `stats`."""
    ev = stats.get("heldout") or {}
    held = (f"loss {ev['loss']:.4f}, masked-token CE {ev['ce']:.4f}, accuracy {ev['acc']:.4f} on "
            f"{ev['masked_tokens']:,} masked tokens" if ev else "not evaluated")
    return f"""# specdiff masked-diffusion LM (dLLM) for Spiffy

A `Qwen3ForCausalLM`-shaped transformer trained from scratch by `specdiff train-dllm` with LLaDA's
masked-diffusion loss, used bidirectionally (block-causal over 32-token answer blocks) through
`specdiff.dllm.MaskedDiffusionModel`. It is *not* a causal LM: `AutoModelForCausalLM` loads the
weights, but only `specdiff.dllm.load_dllm` (or `specdiff dllm generate`) decodes it.

| | |
|---|---|
| architecture | Qwen3, {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads ({cfg.num_kv_heads} KV heads, head_dim {cfg.head_dim}), MLP {cfg.intermediate_size}, tied embedding/head, RoPE theta {cfg.rope_theta:g}, {cfg.max_position_embeddings} positions |
| parameters | {stats['params_total'] / 1e6:.2f}M; {cfg.save_dtype} safetensors, {weights_mb} MB |
| tokenizer | the target's byte-level BPE (`data/tokenizer`), {cfg.vocab_size} tokens; `<\\|mask\\|>` = {cfg.mask_token_id} (`mask_token_id` in config.json), `<\\|endoftext\\|>` = {cfg.eos_token_id} |
| objective | prompt of random length (clean, seen by all rows) + answer in blocks of {cfg.block_length}; per block t ~ U({cfg.eps:g}, 1], mask with probability t, CE on masked tokens x 1/t over the answer length; block-causal visibility with clean earlier blocks (`specdiff.train.dllm_train`) |
| data | {stats['data']} |
| training | {stats['steps']:,} steps x {cfg.batch_size} windows x {cfg.seq_len} tokens ({stats['stop_reason']}), AdamW lr {cfg.lr:g}, warmup {cfg.warmup_steps}, cosine to {cfg.min_lr_frac:g}x, {stats['train_time_s']:.0f} s on {stats['device']} (autocast {stats['autocast_dtype']}) |
| losses | final train loss {stats['final_train_loss']:.4f}; held-out {held} |

Command: `{stats['command']}`. Every setting and these statistics are in `{CONFIG_FILE}`; the
curve in `{LOG_FILE}`. Spiffy numbers: `docs/methods/spiffy.md`.
"""


# --- training ------------------------------------------------------------------------------


class DLLMTrainer(Trainer):
    """The shared loop on block-diffusion batches of the train stream (never resumed)."""

    def __init__(self, cfg: DLLMTrainConfig, data: TokenSplits, out: Path, reporter: Reporter | None = None) -> None:
        rt = resolve_runtime(cfg)
        super().__init__(cfg, build_model(cfg), rt, out, TrainerState(), reporter)
        self.cfg: DLLMTrainConfig = cfg
        self.data = data
        self.rng = np.random.default_rng(cfg.seed)
        self.g = torch.Generator(rt.device).manual_seed(cfg.seed)
        self.tokens_per_step = cfg.batch_size * cfg.seq_len

    def next_batch(self) -> DiffusionBatch:
        x0 = sample_windows(self.data.train, self.cfg.batch_size, self.cfg.seq_len, self.rng)  # [B, S]
        return diffusion_batch(x0.to(self.rt.device, non_blocking=True), self.cfg, self.g)

    def forward_backward(self, batch: DiffusionBatch) -> torch.Tensor:
        with self.rt.autocast():
            loss, _ = diffusion_loss(diffusion_logits(self.fwd, batch), batch)
        loss.backward()
        return loss

    def train_row(self, loss: float, lr: float, gnorm: float, steps_per_s: float, elapsed_s: float
                  ) -> tuple[dict[str, Any], str]:
        row = {"step": self.state.step, "loss": round(loss, 5), "lr": lr,
               "windows_per_s": round(steps_per_s * self.cfg.batch_size, 1), "elapsed_s": round(elapsed_s, 2)}
        return row, f"step {self.state.step} | loss {loss:.4f} | lr {lr:.2e} | {elapsed_s:.0f}s"

    def evaluate(self) -> EvalResult:
        ev = evaluate(self.model, self.data.heldout, self.cfg, self.rt)
        append_log(self.out, {"step": self.state.step, "heldout_loss": round(ev.loss, 5),
                              "heldout_ce": round(ev.ce, 5), "heldout_acc": round(ev.acc, 5)})
        self.reporter.line(f"eval step {self.state.step} | held-out loss {ev.loss:.4f} | masked CE {ev.ce:.4f} "
                           f"| acc {ev.acc:.4f}")
        return ev


def train(cfg: DLLMTrainConfig, data: TokenSplits, tokenizer_dir: Path, out: Path, command: str = "",
          reporter: Reporter | None = None) -> dict[str, Any]:
    """Train and save the folder `out`; returns the run's statistics. Progress goes to `reporter`
    (default: log lines on stdout)."""
    t_wall = time.perf_counter()
    cfg.validate()
    for name, split in (("train", data.train), ("held-out", data.heldout)):
        if len(split) < cfg.seq_len:
            raise SpecdiffError(f"{name} split has {len(split)} tokens, fewer than seq len {cfg.seq_len}")
    resolve_runtime(cfg)  # a missing device fails before the output folder is touched
    out.mkdir(parents=True, exist_ok=True)
    (out / LOG_FILE).unlink(missing_ok=True)
    trainer = DLLMTrainer(cfg, data, out, reporter)
    rt, params = trainer.rt, trainer.params
    trainer.reporter.line(f"dllm: {params.total / 1e6:.2f}M params; {len(data.train):,} train tokens from "
                          f"{data.source}; {rt.name}, autocast {rt.amp_dtype or 'off'}")
    loop = trainer.loop()
    ev = trainer.final_eval()
    last_loss = trainer.state.last_train_loss
    stats = {
        "steps": trainer.state.step, "stop_reason": loop.stop_reason,
        "final_train_loss": float("nan") if last_loss is None else last_loss, "heldout": asdict(ev),
        "train_time_s": round(loop.seconds, 2), "first_step_s": round(loop.first_step_s, 2),
        "windows_per_s": round(loop.steps_per_s * cfg.batch_size, 1),
        "params_total": params.total, "device": rt.name, "autocast_dtype": rt.amp_name, "data": data.source,
        "command": command or "specdiff train-dllm", "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }  # fmt: skip
    stats["weights_mb"] = save_model(out, trainer.model, cfg, tokenizer_dir, stats)
    stats["wall_time_s"] = round(time.perf_counter() - t_wall, 2)
    return stats
