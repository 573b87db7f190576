"""The `specdiff` command: thin argument parsing over the library, and the only code that uses
argparse (no library module imports this package).

Each subcommand is one row of COMMANDS: where its flags and its entry point live, a one-line
description and an example. Only the invoked subcommand's flags are built, and the library is
imported inside the entry points, so `specdiff --help` and `--version` load neither torch nor
transformers. A `SpecdiffError` (bad input) becomes one line on stderr and exit status 2
(`common.run_guarded`); argparse's own errors are shortened to one line too.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from importlib import import_module
from typing import NamedTuple

from specdiff.cli.common import Parser, quiet_libraries, run_guarded


class Command(NamedTuple):
    name: str
    module: str  # specdiff.cli.<module>
    add_args: str  # its function that adds the flags
    run: str  # its entry point: (args) -> exit status
    help: str
    example: str


COMMANDS = [
    Command("generate", "generate", "add_generate_args", "cmd_generate", "complete one prompt with any method",
            "specdiff generate --method ddtree --budget 64 --prompt 'def quicksort(xs):' --json"),
    Command("demo", "generate", "add_demo_args", "cmd_demo", "ar and ddtree side by side on the bundled models",
            "specdiff demo"),
    Command("bench", "bench", "add_bench_args", "cmd_bench",
            "methods x budgets x temperatures over prompt sets, ar as the baseline, outputs checked against ar",
            "specdiff bench --prompts data/prompts/function_completion.jsonl --methods ar,ddtree --limit 8 --out out/b"),
    Command("profile", "bench", "add_profile_args", "cmd_profile",
            "measure this device's draft and verify costs (caddtree's cost profile)",
            "specdiff profile --device cuda --dtype bfloat16 --engine graph"),
    Command("versus", "bench", "add_versus_args", "cmd_versus",
            "caddtree against the best fixed ddtree budget of a bench, with a 95%% interval",
            "specdiff versus out/b"),
    Command("bound", "bench", "add_bound_args", "cmd_bound",
            "a bench's per-token times against the bound its profiled parts set",
            "specdiff bound out/b profile.json"),
    Command("round-costs", "bench", "add_round_costs_args", "cmd_round_costs",
            "a bench's measured rounds against a cost profile, per tree-size bucket",
            "specdiff round-costs out/b profile.json"),
    Command("plot", "generate", "add_plot_args", "cmd_plot", "draw the PNG plots of a bench output folder",
            "specdiff plot out/b"),
    Command("corpus", "train", "add_corpus_args", "cmd_corpus", "build the training corpus and held-out prompt sets",
            "specdiff corpus --out data/corpus"),
    Command("tokenizer", "train", "add_tokenizer_args", "cmd_tokenizer", "train the byte-level BPE tokenizer",
            "specdiff tokenizer --corpus data/corpus --out data/tokenizer"),
    Command("pretrain", "train", "add_pretrain_args", "cmd_pretrain", "pretrain a Qwen3 target on the corpus",
            "specdiff pretrain --corpus data/corpus --tokenizer data/tokenizer --out models/target"),
    Command("train-drafter", "train", "add_train_drafter_args", "cmd_train_drafter",
            "regenerate data with the target and train a DFlash drafter",
            "specdiff train-drafter --target models/target --tokens t.bin --data regen.pt --out models/dflash"),
    Command("train-dllm", "train", "add_train_dllm_args", "cmd_train_dllm",
            "train specdiff's own masked-diffusion LM (for Spiffy)",
            "specdiff train-dllm --corpus data/corpus --out models/dllm"),
    Command("dllm", "dllm", "add_dllm_args", "",
            "masked-diffusion LM: generate, calibrate Spiffy graphs, bench",
            "specdiff dllm generate --method spiffy --prompt 'def f(x):'"),
]


def version() -> str:
    from specdiff import __version__

    return __version__


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks (the example), and a flag's help shows its default
    unless it names the default itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if shown and "default" not in text:
            text = f"{text} (default: %(default)s)".lstrip()
        return text


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in `argv` gets its flags (None: every subcommand)."""
    parser = Parser(prog="specdiff", formatter_class=_Formatter,
                    description="Lossless speculative decoding with diffusion drafters: the target's own tokens, "
                                "fewer target forwards.\n\n  specdiff demo    # ar and ddtree on the bundled models")
    parser.add_argument("--version", action="version", version=f"specdiff {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=f"{c.help.replace('%%', '%')}\n\nexample:\n  {c.example}",
                           formatter_class=_Formatter)
        if argv is None or c.name == wanted:
            module = import_module(f"specdiff.cli.{c.module}")
            getattr(module, c.add_args)(p)
            if c.run:
                p.set_defaults(func=getattr(module, c.run))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        args = build_parser(argv).parse_args(argv)
        args.command_line = shlex.join(["specdiff", *argv])
        quiet_libraries()
        return args.func(args)

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
