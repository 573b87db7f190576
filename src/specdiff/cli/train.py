"""`specdiff corpus`, `tokenizer`, `pretrain`, `train-drafter` and `train-dllm`: the training
pipeline's commands (the work is in `specdiff.train`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specdiff.cli.common import ProgressBar
from specdiff.loading import check_device
from specdiff.errors import SpecdiffError

# this module's commands in help order: each has add_<name>_args (its docstring: the help line and an
# example) and cmd_<name>
COMMANDS = ("corpus", "tokenizer", "pretrain", "train-drafter", "train-dllm")


class TrainProgress:
    """Where a training run reports (the library's `Reporter` interface). On a terminal: a progress
    bar on stderr, moved every step, showing the loss and tokens/s of the last logged interval,
    with the log lines written above it. Elsewhere (logs, CI): the log lines alone on stdout, one
    per logged interval, as the library prints them."""

    def __init__(self) -> None:
        self.bar = ProgressBar("step") if sys.stderr.isatty() else None

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def line(self, text: str) -> None:
        if self.bar is None:
            print(text, flush=True)
        else:
            from tqdm import tqdm

            tqdm.write(text)  # clears the bar, prints, draws the bar again below

    def tick(self, tick) -> None:
        if self.bar is None:
            return
        what = "training" if tick.loss is None else f"loss {tick.loss:.4f}"
        if tick.tokens_per_s is not None:
            what += f" | {tick.tokens_per_s / 1e3:.1f}k tok/s"
        self.bar(what, tick.step, tick.max_steps)


# -- tokenizer --

def add_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    """train the byte-level BPE tokenizer

    specdiff tokenizer --corpus data/corpus --out data/tokenizer
    """
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
    """build the training corpus and held-out prompt sets

    specdiff corpus --out data/corpus
    """
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

# flag -> (PretrainConfig field, metavar, help); each flag defaults to None so that on --resume
# only the flags actually given override the checkpoint's saved settings. `{}` in a help is the
# field's default; the type is the default's (float where the default is None).
_PRETRAIN_FLAGS = {
    "steps": ("max_steps", "N", "stop at this total step count (default {})"),
    "time_budget": ("time_budget_s", "S", "stop the training loop after S seconds (then save)"),
    "batch_size": ("batch_size", "B", "sequences per step (default {})"),
    "seq_len": ("seq_len", "L", "tokens per sequence (default {})"),
    "lr": ("lr", None, "peak learning rate (default {})"),
    "min_lr_frac": ("min_lr_frac", None, "final lr as a fraction of the peak (default {})"),
    "warmup_steps": ("warmup_steps", None, "default {}"),
    "weight_decay": ("weight_decay", None, "default {}"),
    "grad_clip": ("grad_clip", None, "default {}"),
    "hidden": ("hidden_size", None, "hidden size (default {})"),
    "layers": ("num_layers", None, "default {}"),
    "heads": ("num_heads", None, "attention heads (default {})"),
    "kv_heads": ("num_kv_heads", None, "key/value heads (default {})"),
    "head_dim": ("head_dim", None, "default {}"),
    "intermediate": ("intermediate_size", None, "MLP size (default {})"),
    "max_positions": ("max_position_embeddings", None, "default {}"),
    "rope_theta": ("rope_theta", None, "default {}"),
    "eval_every": ("eval_every", "N", "held-out loss every N steps (default {})"),
    "eval_tokens": ("eval_tokens", None, "held-out tokens scored per evaluation (default {})"),
    "log_every": ("log_every", "N", "default {}"),
    "save_every": ("save_every", "N", "also save every N steps (default: only at the end)"),
    "seed": ("seed", None, "default {}"),
}
# Flags named as their field, set on --resume only when given, like the table's.
_PRETRAIN_SAME_NAME = ("device", "dtype", "save_dtype", "compile", "save_optimizer")


def add_pretrain_args(parser: argparse.ArgumentParser) -> None:
    """pretrain a Qwen3 target on the corpus

    specdiff pretrain --corpus data/corpus --tokenizer data/tokenizer --out models/target
    """
    from specdiff.train.config import DTYPES
    from specdiff.train.pretrain import PretrainConfig

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
    for flag, (name, metavar, text) in _PRETRAIN_FLAGS.items():
        default = getattr(d, name)
        kind = float if default is None else type(default)
        p(f"--{flag.replace('_', '-')}", type=kind, metavar=metavar, help=text.format(default))
    p("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p("--dtype", choices=["auto", *DTYPES], help="autocast dtype (default bfloat16 on CUDA, float32 on CPU)")
    p("--save-dtype", choices=list(DTYPES), help=f"dtype of the saved weights (default {d.save_dtype})")
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
    names = {flag: name for flag, (name, _, _) in _PRETRAIN_FLAGS.items()}
    for flag, name in {**names, **{n: n for n in _PRETRAIN_SAME_NAME}}.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, name, value)
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from specdiff.train.pretrain import pretrain

    check_device(args.device)
    cfg = pretrain_config(args)
    with TrainProgress() as reporter:
        stats = pretrain(
            cfg, args.corpus, args.tokenizer, args.out,
            resume=args.resume, tokens_dir=args.tokens, num_workers=args.workers, reporter=reporter,
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

# flag -> (DrafterTrainConfig field, "regen." for RegenConfig's, type, help).
_DRAFTER_FLAGS = {
    "layers": ("layers", int, "drafter layers"),
    "intermediate_size": ("intermediate_size", int, "drafter MLP width (default: the target's)"),
    "num_features": ("num_features", int, "target layers tapped for the drafter's context"),
    "block_size": ("block_size", int, "tokens per drafted block, root included"),
    "anchors": ("anchors_per_seq", int, "blocks trained per sequence"),
    "batch_size": ("batch_size", int, "sequences per step"),
    "lr": ("lr", float, "peak learning rate"),
    "steps": ("max_steps", int, "training steps at most"),
    "time_budget": ("time_budget_s", float, "stop training after this many seconds"),
    "num_sequences": ("regen.num_sequences", int, "sequences the target regenerates"),
    "prompt_len": ("regen.prompt_len", int, "corpus tokens each regenerated sequence starts from"),
    "response_len": ("regen.response_len", int, "tokens the target writes after each prompt"),
    "regen_batch": ("regen.batch_size", int, "sequences regenerated per batch"),
}


def _drafter_field(cfg, name: str) -> tuple[object, str]:
    """(object, attribute) a `_DRAFTER_FLAGS` field names: the config's own or its regen's."""
    return (cfg.regen, name.removeprefix("regen.")) if name.startswith("regen.") else (cfg, name)


def add_train_drafter_args(p: argparse.ArgumentParser) -> None:
    """regenerate data with the target and train a DFlash drafter

    specdiff train-drafter --target models/target --tokens t.bin --data regen.pt --out models/dflash
    """
    import torch

    from specdiff.train.dflash_train import DrafterTrainConfig

    d = DrafterTrainConfig()
    p.add_argument("--target", type=Path, required=True, help="the target model folder the drafter serves")
    p.add_argument("--tokens", type=Path, help="uint16 .bin of corpus tokens (prompts for regeneration)")
    p.add_argument("--data", type=Path, required=True, help="regenerated data (.pt): created if missing")
    p.add_argument("--out", type=Path, required=True, help="drafter output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    for flag, (name, kind, text) in _DRAFTER_FLAGS.items():
        default = getattr(*_drafter_field(d, name))
        p.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=default, help=text)
    p.add_argument("--objective", choices=["dflash", "vp"], default=d.objective,
                   help="dflash: anchor + masks; vp: D²SD's variable-prefix drafter")
    p.add_argument("--vp-beta", type=float, default=d.vp_beta, help="vp objective: prefix lengths l are drawn with P(l) ~ vp_beta^l")
    p.add_argument("--sampled-frac", type=float, default=d.regen.sampled_frac,
                   help="share of regenerated responses sampled at T=0.8 (the rest greedy)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def cmd_train_drafter(args: argparse.Namespace) -> int:
    import torch

    from specdiff.train.dflash_train import DrafterTrainConfig, RegenConfig, ensure_data, train

    regen = RegenConfig(sampled_frac=args.sampled_frac)
    cfg = DrafterTrainConfig(regen=regen, objective=args.objective, vp_beta=args.vp_beta)
    for flag, (name, _, _) in _DRAFTER_FLAGS.items():
        setattr(*_drafter_field(cfg, name), getattr(args, flag))
    check_device(args.device)
    device = torch.device(args.device)
    ensure_data(args.target, args.tokens, args.data, regen, device)
    with TrainProgress() as reporter:
        stats = train(args.target, args.data, args.out, cfg, device, resume=args.resume, reporter=reporter)
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
    """train specdiff's own masked-diffusion LM (for Spiffy)

    specdiff train-dllm --corpus data/corpus --out models/dllm
    """
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
    from specdiff.train.dllm_train import train
    from specdiff.train.tokenizer import load_tokenizer
    from specdiff.train.tokens import load_token_splits

    check_device(args.device)
    cfg = train_dllm_config(args)
    tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer.mask_token_id is None or tokenizer.eos_token_id is None:
        raise SpecdiffError(f"the tokenizer at {args.tokenizer} needs a mask and an eos token")
    cfg.vocab_size, cfg.eos_token_id, cfg.mask_token_id = len(tokenizer), tokenizer.eos_token_id, tokenizer.mask_token_id
    data = load_token_splits(args.tokens, args.corpus, args.tokenizer, cfg.heldout_frac)
    if data.vocab_size and data.vocab_size != cfg.vocab_size:
        raise SpecdiffError(f"token files are for a vocabulary of {data.vocab_size}, the tokenizer has {cfg.vocab_size}")
    with TrainProgress() as reporter:
        stats = train(cfg, data, args.tokenizer, args.out, args.command_line, reporter=reporter)
    ev = stats["heldout"]
    print(f"train-dllm: {stats['steps']} steps ({stats['stop_reason']}) in {stats['train_time_s']:.0f}s on "
          f"{stats['device']}; train loss {stats['final_train_loss']:.4f}; held-out loss {ev['loss']:.4f}, "
          f"masked acc {ev['acc']:.4f}; {stats['params_total'] / 1e6:.2f}M params, {stats['weights_mb']} MB in {args.out}")
    return 0
