"""What every subcommand shares: the parser that turns argparse's errors into one line, the model
and decode flags, and the one place a `SpecdiffError` becomes `specdiff: error: ...` and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable

from specdiff.config import DecodeConfig
from specdiff.errors import SpecdiffError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would add the usage block)
        raise SpecdiffError(f"{self.prog}: {message}")


def quiet_libraries() -> None:
    """A command's stdout and stderr carry its own output only: transformers' progress bars and
    warnings are off (the library leaves logging to whoever uses it)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_guarded(func: Callable[[], int | None]) -> int:
    """Run a command: bad input (`SpecdiffError`) is one line on stderr and exit status 2."""
    try:
        return int(func() or 0)
    except SpecdiffError as e:
        print(f"specdiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def split_list(text: str, kind, flag: str) -> list:
    """A comma-separated flag value -> [kind(item)], or one line naming the flag."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError as e:
        raise SpecdiffError(f"bad {flag} list {text!r}: {e}") from None


class ProgressBar:
    """Progress of long work on stderr: a tqdm bar with an ETA on a terminal; elsewhere (logs, CI)
    a plain line at every tenth of the work; nothing when `quiet` (e.g. --json)."""

    def __init__(self, unit: str, quiet: bool = False):
        self.unit, self.quiet, self.bar, self.next_line = unit, quiet, None, 0

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if sys.stderr.isatty():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
            self.bar.set_description(what, refresh=False)
            self.bar.update(done - self.bar.n)
        elif done >= self.next_line or done == total:
            print(f"[{done}/{total} {self.unit}s] {what}", file=sys.stderr, flush=True)
            self.next_line = done + max(1, total // 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_positive(value: int, flag: str) -> None:
    if value < 1:
        raise SpecdiffError(f"{flag} must be >= 1, got {value}")


def check_out_dir(path: Path, flag: str = "--out") -> Path:
    """The folder a command writes into, made before the work starts (a run that cannot save its
    results fails at once, not after it ran)."""
    if path.exists() and not path.is_dir():
        raise SpecdiffError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecdiffError(f"cannot create the {flag} folder {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise SpecdiffError(f"the {flag} folder {path} is not writable")
    return path


def check_out_file(path: Path, flag: str = "--out") -> Path:
    """A file a command will write: not a folder, and its folder exists and is writable."""
    if path.is_dir():
        raise SpecdiffError(f"{flag} {path} is a folder, not a file")
    check_out_dir(path.parent, f"{flag}'s")
    return path


def config_flags(cls: type = DecodeConfig) -> list[tuple[tuple[str, ...], str, dataclasses.Field]]:
    """(path, flag, field) for every setting of `cls` that has a flag, nested options included:
    a setting's default and help live on its field (`config.option`), and the flags are made here
    from them. A nested option's flag is `--<group>-<name>` unless the field names its own."""
    out = []

    def walk(c: type, path: tuple[str, ...], prefix: str) -> None:
        for f in dataclasses.fields(c):
            if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory, path + (f.name,), f.metadata.get("flag_prefix", f.name))
            elif f.metadata.get("cli", True) and f.metadata.get("help"):
                flag = f.metadata["flag"] or "--" + "-".join(filter(None, (prefix, f.name))).replace("_", "-")
                out.append((path + (f.name,), flag, f))

    walk(cls, (), "")
    return out


MODEL_SETTINGS = ("engine", "kernels", "numerics", "tree_search")  # decode settings that every model-loading command takes


def add_setting(p: argparse.ArgumentParser, flag: str, f: dataclasses.Field) -> None:
    if isinstance(f.default, bool):  # --name / --no-name
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        return
    kind = str if f.default is None else type(f.default)
    p.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"), help=f.metadata["help"])


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="target model folder (default: the bundled target)")
    p.add_argument("--drafter", help="DFlash drafter folder (default: the bundled drafter)")
    p.add_argument("--vp-drafter", help="variable-prefix drafter folder (D2SD; default: bundled)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the models run")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the models' weights and compute; float32 keeps outputs token-identical to ar")
    for path, flag, f in config_flags():
        if path[0] in MODEL_SETTINGS:
            add_setting(p, flag, f)


def add_decode_args(p: argparse.ArgumentParser) -> None:
    for path, flag, f in config_flags():
        if path[0] not in MODEL_SETTINGS:
            add_setting(p, flag, f)
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """The decode flags -> a validated `DecodeConfig` (nested options filled from their flags)."""
    values: dict = {}
    for path, flag, _ in config_flags():
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = getattr(args, flag.removeprefix("--").replace("-", "_"))
    nested = {f.name: f.default_factory for f in dataclasses.fields(DecodeConfig)
              if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)}
    cfg = DecodeConfig(**{k: nested[k](**v) if k in nested else v for k, v in values.items()},
                       stop_at_eos=not args.ignore_eos)
    cfg.validate()
    return cfg


def emit(as_json: bool, record: dict, text: str, summary: str) -> None:
    """A completion: one JSON object (`--json`), or the text on stdout and a summary on stderr."""
    if as_json:
        print(json.dumps(record))
    else:
        print(text)
        print(summary, file=sys.stderr)


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise SpecdiffError("give either --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        from specdiff.loading import read_text

        return read_text(args.prompt_file, "prompt file")
    if args.prompt is None:
        raise SpecdiffError("no prompt: pass --prompt TEXT or --prompt-file FILE")
    return args.prompt


def load_models(args: argparse.Namespace, need_drafter: bool):
    """The model flags -> (HF model, tokenizer, drafter or None)."""
    from specdiff.loading import load_models as load

    return load(args.target, args.drafter, args.device, args.dtype, need_drafter)


def load_vp_drafter(args: argparse.Namespace):
    from specdiff.loading import load_drafter_folder

    return load_drafter_folder(args.vp_drafter, args.device, args.dtype, kind="vp")
