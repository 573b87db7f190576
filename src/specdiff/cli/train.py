"""`specdiff corpus`, `tokenizer`, `pretrain`, `train-drafter` and `train-dllm`: the training
pipeline's commands (the work is in `specdiff.train`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specdiff.loading import check_device
from specdiff.errors import SpecdiffError

# -- tokenizer --

def add_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    from specdiff.train.tokenizer import TokenizerConfig

    defaults = TokenizerConfig()
    parser.add_argument(
        "--corpus", required=True, type=Path, metavar="DIR", help="corpus directory (train.txt)"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="tokenizer output directory")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="tokens in the vocabulary, special tokens included")
    parser.add_argument("--min-frequency", type=int, default=defaults.min_frequency, help="merges seen fewer times are not learnt")
    parser.add_argument("--max-bytes", type=int, default=defaults.max_bytes, help="cap on training bytes")


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from specdiff.train.tokenizer import TokenizerConfig, train_tokenizer

    cfg = TokenizerConfig(
        vocab_size=args.vocab_size, min_frequency=args.min_frequency, max_bytes=args.max_bytes
    )
    stats = train_tokenizer(cfg, args.corpus, args.out)
    print(
        f"tokenizer: vocab {stats.vocab_size}, trained on {stats.train_docs} docs / "
        f"{stats.train_bytes} bytes; held-out bytes/token {stats.heldout_bytes_per_token}"
    )
    return 0


# -- corpus --

def add_corpus_args(parser: argparse.ArgumentParser) -> None:
    from specdiff.train.corpus import CorpusConfig

    defaults = CorpusConfig(src_dirs=[])
    parser.add_argument(
        "--src",
        action="append",
        metavar="DIR",
        help="source tree to walk (repeatable; default: this Python's stdlib and site-packages)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="corpus output directory")
    parser.add_argument(
        "--prompts-out", type=Path, metavar="DIR", help="prompt-set directory (default: --out)"
    )
    parser.add_argument("--heldout-frac", type=float, default=defaults.heldout_frac, help="share of files held out (split by content hash)")
    parser.add_argument("--num-prompts", type=int, default=defaults.num_prompts, help="per prompt set")
    parser.add_argument("--salt", default=defaults.split_salt, help="split salt")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="prompt selection seed")
    parser.add_argument("--heldout-paths", type=Path, metavar="FILE",
                        help="file of relative paths to hold out whatever their content (one per line)")


def corpus_config(args: argparse.Namespace):
    from specdiff.train.corpus import CorpusConfig

    cfg = CorpusConfig(
        heldout_frac=args.heldout_frac,
        split_salt=args.salt,
        num_prompts=args.num_prompts,
        seed=args.seed,
    )
    if args.src:
        cfg.src_dirs = [str(Path(d).resolve()) for d in args.src]
    if args.heldout_paths is not None:
        if not args.heldout_paths.is_file():
            raise SpecdiffError(f"held-out paths file not found: {args.heldout_paths}")
        cfg.heldout_paths = sorted({line.strip() for line in args.heldout_paths.read_text().splitlines() if line.strip()})
    return cfg


def cmd_corpus(args: argparse.Namespace) -> int:
    from specdiff.train.corpus import build_corpus

    cfg = corpus_config(args)
    stats = build_corpus(cfg, args.out, args.prompts_out)
    print(
        f"corpus: {stats.files_seen} files seen, {stats.unique_files} unique "
        f"({stats.duplicates} duplicates, skipped {stats.skipped}); "
        f"train {stats.train_files} files / {stats.train_bytes} bytes, "
        f"held-out {stats.heldout_files} files / {stats.heldout_bytes} bytes; "
        f"prompts: {stats.function_prompts} function, {stats.continuation_prompts} continuation"
    )
    for name, n in (("function", stats.function_prompts), ("continuation", stats.continuation_prompts)):
        if n < cfg.num_prompts:
            print(f"warning: only {n} {name} prompts (asked for {cfg.num_prompts})", file=sys.stderr)
    return 0


# -- pretrain --

# flag -> PretrainConfig field; each flag defaults to None so that on --resume only the flags
# actually given override the checkpoint's saved settings.
_FLAG_FIELDS = {
    "steps": "max_steps", "time_budget": "time_budget_s", "batch_size": "batch_size", "seq_len": "seq_len",
    "lr": "lr", "min_lr_frac": "min_lr_frac", "warmup_steps": "warmup_steps", "weight_decay": "weight_decay",
    "grad_clip": "grad_clip", "hidden": "hidden_size", "layers": "num_layers", "heads": "num_heads",
    "kv_heads": "num_kv_heads", "head_dim": "head_dim", "intermediate": "intermediate_size",
    "max_positions": "max_position_embeddings", "rope_theta": "rope_theta", "eval_every": "eval_every",
    "eval_tokens": "eval_tokens", "log_every": "log_every", "save_every": "save_every", "seed": "seed",
    "device": "device", "dtype": "dtype", "save_dtype": "save_dtype",
}  # fmt: skip


def add_pretrain_args(parser: argparse.ArgumentParser) -> None:
    from specdiff.train.pretrain import _DTYPES, PretrainConfig

    d = PretrainConfig()
    p = parser.add_argument
    p("--corpus", required=True, type=Path, metavar="DIR", help="corpus directory (train.txt, heldout.txt)")
    p("--tokenizer", type=Path, metavar="DIR", help="tokenizer directory (on --resume: the checkpoint's)")
    p("--out", required=True, type=Path, metavar="DIR", help="checkpoint directory")
    p("--tokens", type=Path, metavar="DIR", help="token cache (default <corpus>/tokens-<tokenizer hash>)")
    p("--workers", type=int, default=1, metavar="N", help="tokenization processes (default 1: in-process)")
    p(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out; settings not given as flags come from it",
    )
    p("--steps", type=int, metavar="N", help=f"stop at this total step count (default {d.max_steps})")
    p("--time-budget", type=float, metavar="S", help="stop the training loop after S seconds (then save)")
    p("--batch-size", type=int, metavar="B", help=f"sequences per step (default {d.batch_size})")
    p("--seq-len", type=int, metavar="L", help=f"tokens per sequence (default {d.seq_len})")
    p("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    p("--min-lr-frac", type=float, help=f"final lr as a fraction of the peak (default {d.min_lr_frac})")
    p("--warmup-steps", type=int, help=f"default {d.warmup_steps}")
    p("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p("--grad-clip", type=float, help=f"default {d.grad_clip}")
    p("--hidden", type=int, help=f"hidden size (default {d.hidden_size})")
    p("--layers", type=int, help=f"default {d.num_layers}")
    p("--heads", type=int, help=f"attention heads (default {d.num_heads})")
    p("--kv-heads", type=int, help=f"key/value heads (default {d.num_kv_heads})")
    p("--head-dim", type=int, help=f"default {d.head_dim}")
    p("--intermediate", type=int, help=f"MLP size (default {d.intermediate_size})")
    p("--max-positions", type=int, help=f"default {d.max_position_embeddings}")
    p("--rope-theta", type=float, help=f"default {d.rope_theta}")
    p("--eval-every", type=int, metavar="N", help=f"held-out loss every N steps (default {d.eval_every})")
    p("--eval-tokens", type=int, help=f"held-out tokens scored per evaluation (default {d.eval_tokens})")
    p("--log-every", type=int, metavar="N", help=f"default {d.log_every}")
    p("--save-every", type=int, metavar="N", help="also save every N steps (default: only at the end)")
    p("--seed", type=int, help=f"default {d.seed}")
    p("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p("--dtype", choices=["auto", *_DTYPES], help="autocast dtype (default bfloat16 on CUDA, float32 on CPU)")
    p("--save-dtype", choices=list(_DTYPES), help=f"dtype of the saved weights (default {d.save_dtype})")
    p("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p(
        "--save-optimizer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the AdamW state in trainer_state.pt for --resume (default on; ~8 bytes/param)",
    )


def pretrain_config(args: argparse.Namespace):
    """Defaults (or, on --resume, the checkpoint's saved settings) overridden by the given flags."""
    from specdiff.train.pretrain import CONFIG_FILE, PretrainConfig

    cfg = PretrainConfig.load(args.out / CONFIG_FILE) if args.resume else PretrainConfig()
    for flag, name in {**_FLAG_FIELDS, "compile": "compile", "save_optimizer": "save_optimizer"}.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, name, value)
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from specdiff.train.pretrain import pretrain

    check_device(args.device)
    cfg = pretrain_config(args)
    stats = pretrain(
        cfg, args.corpus, args.tokenizer, args.out,
        resume=args.resume, tokens_dir=args.tokens, num_workers=args.workers,
    )  # fmt: skip
    ppl = f"{stats.heldout_ppl:.2f}" if stats.heldout_ppl is not None else "n/a"
    held = f"{stats.heldout_loss:.4f}" if stats.heldout_loss is not None else "n/a"
    train = f"{stats.final_train_loss:.4f}" if stats.final_train_loss is not None else "n/a"
    print(
        f"pretrain: {stats.steps} steps ({stats.stop_reason}), {stats.tokens_seen:,} tokens, "
        f"{stats.tokens_per_s / 1e3:.1f}k tok/s on {stats.device}; train loss {train}, "
        f"held-out loss {held} (ppl {ppl}); {stats.params_total / 1e6:.2f}M params, "
        f"{stats.checkpoint_mb} MB of weights in {args.out}"
    )
    return 0


# -- train-drafter --

def add_train_drafter_args(p: argparse.ArgumentParser) -> None:
    import torch

    from specdiff.train.dflash_train import DrafterTrainConfig

    d = DrafterTrainConfig()
    p.add_argument("--target", type=Path, required=True, help="the target model folder the drafter serves")
    p.add_argument("--tokens", type=Path, help="uint16 .bin of corpus tokens (prompts for regeneration)")
    p.add_argument("--data", type=Path, required=True, help="regenerated data (.pt): created if missing")
    p.add_argument("--out", type=Path, required=True, help="drafter output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--layers", type=int, default=d.layers, help="drafter layers")
    p.add_argument("--intermediate-size", type=int, default=None, help="drafter MLP width (default: the target's)")
    p.add_argument("--num-features", type=int, default=d.num_features, help="target layers tapped for the drafter's context")
    p.add_argument("--block-size", type=int, default=d.block_size, help="tokens per drafted block, root included")
    p.add_argument("--anchors", type=int, default=d.anchors_per_seq, help="blocks trained per sequence")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--steps", type=int, default=d.max_steps, help="training steps at most")
    p.add_argument("--time-budget", type=float, default=d.time_budget_s, help="stop training after this many seconds")
    p.add_argument("--num-sequences", type=int, default=d.regen.num_sequences, help="sequences the target regenerates")
    p.add_argument("--prompt-len", type=int, default=d.regen.prompt_len, help="corpus tokens each regenerated sequence starts from")
    p.add_argument("--response-len", type=int, default=d.regen.response_len, help="tokens the target writes after each prompt")
    p.add_argument("--regen-batch", type=int, default=d.regen.batch_size, help="sequences regenerated per batch")
    p.add_argument("--objective", choices=["dflash", "vp"], default=d.objective,
                   help="dflash: anchor + masks; vp: D²SD's variable-prefix drafter")
    p.add_argument("--vp-beta", type=float, default=d.vp_beta, help="vp objective: prefix lengths l are drawn with P(l) ~ vp_beta^l")
    p.add_argument("--sampled-frac", type=float, default=d.regen.sampled_frac,
                   help="share of regenerated responses sampled at T=0.8 (the rest greedy)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def cmd_train_drafter(args: argparse.Namespace) -> int:
    import torch

    from specdiff.train.dflash_train import DrafterTrainConfig, RegenConfig, ensure_data, train

    regen = RegenConfig(num_sequences=args.num_sequences, prompt_len=args.prompt_len,
                        response_len=args.response_len, batch_size=args.regen_batch,
                        sampled_frac=args.sampled_frac)
    cfg = DrafterTrainConfig(layers=args.layers, intermediate_size=args.intermediate_size,
                             num_features=args.num_features, block_size=args.block_size,
                             anchors_per_seq=args.anchors, batch_size=args.batch_size, lr=args.lr,
                             max_steps=args.steps, time_budget_s=args.time_budget, regen=regen,
                             objective=args.objective, vp_beta=args.vp_beta)
    check_device(args.device)
    device = torch.device(args.device)
    ensure_data(args.target, args.tokens, args.data, regen, device)
    stats = train(args.target, args.data, args.out, cfg, device, resume=args.resume)
    print(json.dumps(stats))
    return 0


# -- train-dllm --

_FLAGS = {  # flag -> DLLMTrainConfig field
    "hidden": "hidden_size", "layers": "num_layers", "heads": "num_heads", "kv_heads": "num_kv_heads",
    "head_dim": "head_dim", "intermediate": "intermediate_size", "max_positions": "max_position_embeddings",
    "seq_len": "seq_len", "block_length": "block_length", "min_prompt": "min_prompt", "eps": "eps",
    "batch_size": "batch_size", "lr": "lr", "min_lr_frac": "min_lr_frac", "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay", "grad_clip": "grad_clip", "steps": "max_steps", "time_budget": "time_budget_s",
    "eval_every": "eval_every", "eval_windows": "eval_windows", "heldout_frac": "heldout_frac",
    "log_every": "log_every", "save_dtype": "save_dtype", "seed": "seed", "device": "device", "dtype": "dtype",
}  # fmt: skip


def add_train_dllm_args(parser: argparse.ArgumentParser) -> None:
    from specdiff.train.dllm_train import DEFAULT_TOKENIZER, DLLMTrainConfig

    d = DLLMTrainConfig()
    p = parser.add_argument
    p("--tokens", type=Path, metavar="PATH", help="flat uint16 token file, or a pretrain token folder")
    p("--corpus", type=Path, metavar="DIR", help="corpus folder (train.txt, heldout.txt), encoded with --tokenizer")
    p("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, metavar="DIR", help="default: data/tokenizer")
    p("--out", type=Path, required=True, metavar="DIR", help="model output folder")
    for flag, name in _FLAGS.items():
        default = getattr(d, name)
        kind = type(default) if default is not None else float
        p(f"--{flag.replace('_', '-')}", type=kind, default=None, help=f"{name} (default {default})")
    p("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")


def train_dllm_config(args: argparse.Namespace):
    from specdiff.train.dllm_train import DLLMTrainConfig

    cfg = DLLMTrainConfig(compile=args.compile)
    for flag, name in _FLAGS.items():
        if getattr(args, flag) is not None:
            setattr(cfg, name, getattr(args, flag))
    if args.max_positions is None:
        cfg.max_position_embeddings = cfg.seq_len
    return cfg


def cmd_train_dllm(args: argparse.Namespace) -> int:
    from specdiff.train.dllm_train import load_tokens, train
    from specdiff.train.tokenizer import load_tokenizer

    check_device(args.device)
    cfg = train_dllm_config(args)
    tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer.mask_token_id is None or tokenizer.eos_token_id is None:
        raise SpecdiffError(f"the tokenizer at {args.tokenizer} needs a mask and an eos token")
    cfg.vocab_size, cfg.eos_token_id, cfg.mask_token_id = len(tokenizer), tokenizer.eos_token_id, tokenizer.mask_token_id
    data = load_tokens(args.tokens, args.corpus, args.tokenizer, cfg.heldout_frac)
    if data.vocab_size and data.vocab_size != cfg.vocab_size:
        raise SpecdiffError(f"token files are for a vocabulary of {data.vocab_size}, the tokenizer has {cfg.vocab_size}")
    stats = train(cfg, data, args.tokenizer, args.out, args.command_line)
    ev = stats["heldout"]
    print(f"train-dllm: {stats['steps']} steps ({stats['stop_reason']}) in {stats['train_time_s']:.0f}s on "
          f"{stats['device']}; train loss {stats['final_train_loss']:.4f}; held-out loss {ev['loss']:.4f}, "
          f"masked acc {ev['acc']:.4f}; {stats['params_total'] / 1e6:.2f}M params, {stats['weights_mb']} MB in {args.out}")
    return 0
