"""Training of specdiff's own masked-diffusion LM (issue 6): a small Qwen3 transformer used
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
streams (`specdiff.train.pretrain`): `--tokens DIR` (train.bin and heldout.bin), `--tokens
FILE.bin` (one flat uint16 stream, e.g. scripts/gpu_target.sh's tokens_sample.bin; its last
`heldout_frac` is held out), or `--corpus DIR`, encoded with pretrain's cached `tokenize_corpus`.

Output folder (`--out`): a Hugging Face folder (`config.json` with `"mask_token_id"` and
`"specdiff_dllm": true`, bf16 safetensors in shards under 16 MiB, `tokenizer.json` and
`tokenizer_config.json`), `specdiff_dllm.json` (`DLLMTrainConfig` and the run's statistics),
`train_log.jsonl` and a model card `README.md`. Load it with `specdiff.dllm.load_dllm`.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import Qwen3ForCausalLM

from specdiff.errors import SpecdiffError
from specdiff.train import pretrain as pt

CONFIG_FILE = "specdiff_dllm.json"
LOG_FILE = pt.LOG_FILE
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[3] / "data" / "tokenizer"


@dataclass
class DLLMTrainConfig:
    """Every setting of a dLLM training run; saved in `specdiff_dllm.json`. Model-shape and
    optimisation fields share PretrainConfig's names, so pretrain's helpers (model config,
    optimizer, schedule, runtime) apply to it unchanged."""

    # Model shape (vocab_size, eos and mask ids come from the tokenizer).
    vocab_size: int = 0
    eos_token_id: int = 0
    mask_token_id: int = 1
    hidden_size: int = 320
    num_layers: int = 6
    num_heads: int = 5
    num_kv_heads: int = 5
    head_dim: int = 64
    intermediate_size: int = 960
    max_position_embeddings: int = 512  # = seq_len: the longest prompt + answer it has seen
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    init_std: float = 0.02
    # Diffusion layout.
    seq_len: int = 512  # window S: prompt + answer
    block_length: int = 32
    min_prompt: int = 8  # prompt length ~ U[min_prompt, seq_len - block_length]
    eps: float = 1e-3  # t ~ U(eps, 1]
    # Optimisation.
    batch_size: int = 32
    lr: float = 1.5e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    max_steps: int = 100_000
    time_budget_s: float | None = None
    # Evaluation and logging.
    eval_every: int = 500  # 0: only at the end
    eval_windows: int = 128  # fixed held-out windows (same text, prompts and noise every time)
    heldout_frac: float = 0.02  # flat token file: the tail held out
    log_every: int = 50
    save_dtype: str = "bfloat16"
    # Runtime.
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # autocast; auto: bfloat16 on CUDA, none on CPU
    compile: bool = False

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "seq_len", "block_length", "batch_size", "max_steps", "log_every",
                     "eval_windows"):
            if getattr(self, name) <= 0:
                raise SpecdiffError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise SpecdiffError(f"heads ({self.num_heads}) must be a multiple of kv heads ({self.num_kv_heads})")
        if self.seq_len > self.max_position_embeddings:
            raise SpecdiffError(f"seq len {self.seq_len} exceeds max positions {self.max_position_embeddings}")
        if not 1 <= self.min_prompt <= self.seq_len - self.block_length:
            raise SpecdiffError(f"need 1 <= min prompt ({self.min_prompt}) <= seq len - block length "
                                f"({self.seq_len - self.block_length})")
        if not 0.0 < self.eps < 1.0:
            raise SpecdiffError(f"eps must be in (0, 1), got {self.eps}")
        if not 0.0 <= self.min_lr_frac <= 1.0 or self.lr <= 0:
            raise SpecdiffError(f"need lr > 0 and 0 <= min lr frac <= 1, got {self.lr}, {self.min_lr_frac}")
        if min(self.warmup_steps, self.eval_every) < 0:
            raise SpecdiffError("warmup steps and eval every must be >= 0")
        if not 0.0 < self.heldout_frac < 0.5:
            raise SpecdiffError(f"heldout frac must be in (0, 0.5), got {self.heldout_frac}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise SpecdiffError(f"time budget must be positive, got {self.time_budget_s}")
        if self.dtype not in ("auto", *pt._DTYPES) or self.save_dtype not in pt._DTYPES:
            raise SpecdiffError(f"dtype must be auto, bfloat16 or float32 (got {self.dtype!r}, {self.save_dtype!r})")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise SpecdiffError(f"mask token id {self.mask_token_id} is outside the vocabulary of {self.vocab_size}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DLLMTrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


# --- data ----------------------------------------------------------------------------------


@dataclass
class TokenSplits:
    train: np.ndarray  # flat uint16 streams
    heldout: np.ndarray
    source: str
    vocab_size: int = 0  # of the token files, when they say (0: unknown)


def load_tokens(tokens: Path | None, corpus: Path | None, tokenizer_dir: Path, heldout_frac: float) -> TokenSplits:
    """Token streams from --tokens (a pretrain token folder or one flat .bin) or --corpus."""
    if tokens is not None and tokens.is_file():
        data = np.memmap(tokens, dtype=np.uint16, mode="r")
        cut = len(data) - int(len(data) * heldout_frac)
        return TokenSplits(data[:cut], data[cut:], f"{tokens} (last {heldout_frac:.0%} held out)")
    if tokens is not None and (tokens / "train.bin").is_file() and corpus is None:
        files = [tokens / f"{s}.bin" for s in pt.SPLITS]
        if not files[1].is_file():
            raise SpecdiffError(f"no heldout.bin beside train.bin in {tokens}")
        meta = tokens / pt.TOKENS_META_FILE
        vocab = json.loads(meta.read_text())["vocab_size"] if meta.is_file() else 0
        return TokenSplits(*(np.memmap(f, dtype=np.uint16, mode="r") for f in files), str(tokens), vocab)
    if corpus is not None:
        if not corpus.is_dir():
            raise SpecdiffError(f"corpus directory not found: {corpus}")
        files = pt.tokenize_corpus(corpus, tokenizer_dir, tokens)
        return TokenSplits(files.load("train"), files.load("heldout"), files.dir, files.vocab_size)
    if tokens is not None:
        raise SpecdiffError(f"no token file or folder (train.bin) at {tokens}")
    raise SpecdiffError("no training data: pass --tokens FILE.bin|DIR or --corpus DIR")


def sample_windows(data: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """[B, S] long: random windows of the stream."""
    starts = rng.integers(0, len(data) - seq_len + 1, size=batch_size)
    return torch.from_numpy(np.stack([data[s : s + seq_len] for s in starts]).astype(np.int64))


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
    hf_cfg = pt.model_config(cfg)  # type: ignore[arg-type]  (same field names)
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
def evaluate(model: torch.nn.Module, heldout: np.ndarray, cfg: DLLMTrainConfig, rt: pt.Runtime) -> EvalResult:
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
    frozen = copy.deepcopy(model).to("cpu", pt._DTYPES[cfg.save_dtype])  # the live model keeps fp32
    frozen.save_pretrained(out, max_shard_size=pt.MAX_SHARD_SIZE)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, out / name)
    pt._write_json(out / CONFIG_FILE, {"config": asdict(cfg), "stats": stats})
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


def train(cfg: DLLMTrainConfig, data: TokenSplits, tokenizer_dir: Path, out: Path, command: str = "") -> dict[str, Any]:
    """Train and save the folder `out`; returns the run's statistics."""
    t_wall = time.perf_counter()
    cfg.validate()
    for name, split in (("train", data.train), ("held-out", data.heldout)):
        if len(split) < cfg.seq_len:
            raise SpecdiffError(f"{name} split has {len(split)} tokens, fewer than seq len {cfg.seq_len}")
    rt = pt.resolve_runtime(cfg)  # type: ignore[arg-type]
    if rt.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    out.mkdir(parents=True, exist_ok=True)
    (out / LOG_FILE).unlink(missing_ok=True)
    model = build_model(cfg).to(rt.device).train()
    params = pt.count_parameters(model)
    optimizer = pt.make_optimizer(model, cfg, rt.device)  # type: ignore[arg-type]
    fwd = torch.compile(model) if cfg.compile else model
    schedule = pt.Schedule(cfg)  # type: ignore[arg-type]
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator(rt.device).manual_seed(cfg.seed)
    print(f"dllm: {params.total / 1e6:.2f}M params; {len(data.train):,} train tokens from {data.source}; "
          f"{rt.name}, autocast {rt.amp_dtype or 'off'}", flush=True)

    step, loss_sum, interval_steps, last_loss = 0, torch.zeros((), device=rt.device), 0, float("nan")
    t0 = t_decay = t_log = time.perf_counter()
    first_step_s, stop_reason, ev, ev_step = 0.0, "max_steps", None, -1
    while step < cfg.max_steps:
        now = time.perf_counter()
        if cfg.time_budget_s is not None and now - t0 >= cfg.time_budget_s:
            stop_reason = "time_budget"
            break
        lr = pt.lr_at(cfg, step, schedule.progress(step, now - t_decay))  # type: ignore[arg-type]
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0 = sample_windows(data.train, cfg.batch_size, cfg.seq_len, rng).to(rt.device, non_blocking=True)
        batch = diffusion_batch(x0, cfg, g)
        try:
            loss = _forward_backward(fwd, batch, rt)
        except Exception as e:  # a failed torch.compile must not cost the run: fall back to eager once
            if fwd is model or step > 0:
                raise
            print(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "training eager", file=sys.stderr, flush=True)
            fwd = model
            optimizer.zero_grad(set_to_none=True)
            loss = _forward_backward(fwd, batch, rt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_sum += loss.detach()
        interval_steps += 1
        if step == 1:  # the time-driven decay starts after compilation
            t_decay = time.perf_counter()
            first_step_s = t_decay - t0
            if cfg.time_budget_s is not None:
                schedule.decay_s = cfg.time_budget_s - first_step_s
        if step % cfg.log_every == 0:
            last_loss = loss_sum.item() / interval_steps
            now = time.perf_counter()
            pt._append_log(out, {"step": step, "loss": round(last_loss, 5), "lr": lr,
                                 "windows_per_s": round(interval_steps * cfg.batch_size / (now - t_log), 1),
                                 "elapsed_s": round(now - t0, 2)})
            print(f"step {step} | loss {last_loss:.4f} | lr {lr:.2e} | {now - t0:.0f}s", flush=True)
            loss_sum, interval_steps, t_log = torch.zeros((), device=rt.device), 0, now
        if cfg.eval_every and step % cfg.eval_every == 0:
            ev, ev_step = _log_eval(model, data, cfg, rt, out, step), step
    if interval_steps:
        last_loss = loss_sum.item() / interval_steps
    train_s = time.perf_counter() - t0
    if ev is None or ev_step != step:
        ev = _log_eval(model, data, cfg, rt, out, step)
    stats = {
        "steps": step, "stop_reason": stop_reason, "final_train_loss": last_loss, "heldout": asdict(ev),
        "train_time_s": round(train_s, 2), "first_step_s": round(first_step_s, 2),
        "windows_per_s": round((step - 1) * cfg.batch_size / max(train_s - first_step_s, 1e-9), 1),
        "params_total": params.total, "device": rt.name,
        "autocast_dtype": str(rt.amp_dtype or "float32").removeprefix("torch."), "data": data.source,
        "command": command or "specdiff train-dllm", "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }  # fmt: skip
    stats["weights_mb"] = save_model(out, model, cfg, tokenizer_dir, stats)
    stats["wall_time_s"] = round(time.perf_counter() - t_wall, 2)
    return stats


def _forward_backward(fwd: torch.nn.Module, batch: DiffusionBatch, rt: pt.Runtime) -> torch.Tensor:
    with rt.autocast():
        loss, _ = diffusion_loss(diffusion_logits(fwd, batch), batch)
    loss.backward()
    return loss


def _log_eval(model, data: TokenSplits, cfg: DLLMTrainConfig, rt: pt.Runtime, out: Path, step: int) -> EvalResult:
    ev = evaluate(model, data.heldout, cfg, rt)
    pt._append_log(out, {"step": step, "heldout_loss": round(ev.loss, 5), "heldout_ce": round(ev.ce, 5),
                         "heldout_acc": round(ev.acc, 5)})
    print(f"eval step {step} | held-out loss {ev.loss:.4f} | masked CE {ev.ce:.4f} | acc {ev.acc:.4f}", flush=True)
    return ev
