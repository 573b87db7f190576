"""The `specdiff` command: thin argument parsing over the library, and the only code that uses
argparse (no library module imports this package).

Each module of MODULES lists its subcommands (COMMANDS); a subcommand is `add_<name>_args`, whose
docstring is its one-line description and an example, and `cmd_<name>`, its entry point. Only the
invoked subcommand's flags are built, and the library is
imported inside the entry points, so `specdiff --help` and `--version` load neither torch nor
transformers. A `SpecdiffError` (bad input) becomes one line on stderr and exit status 2
(`common.run_guarded`); argparse's own errors are shortened to one line too.
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from importlib import import_module
from types import ModuleType
from typing import Callable, NamedTuple

from specdiff.cli.common import Parser, quiet_libraries, run_guarded


MODULES = ("generate", "serve", "bench", "train", "dllm", "models")  # specdiff.cli.<module>, each listing its COMMANDS


class Command(NamedTuple):
    name: str
    module: ModuleType
    help: str  # the first line of its add_<name>_args docstring
    example: str  # the last line

    @property
    def add_args(self) -> Callable[[argparse.ArgumentParser], None]:
        return getattr(self.module, f"add_{self.name.replace('-', '_')}_args")

    @property
    def run(self) -> Callable[[argparse.Namespace], int] | None:
        return getattr(self.module, f"cmd_{self.name.replace('-', '_')}", None)  # None: it has subcommands


def commands() -> list[Command]:
    """Every command, in help order, read off its module (no torch: the modules import it lazily)."""
    out = []
    for name in MODULES:
        module = import_module(f"specdiff.cli.{name}")
        for command in module.COMMANDS:
            doc = inspect.getdoc(getattr(module, f"add_{command.replace('-', '_')}_args")).splitlines()
            out.append(Command(command, module, doc[0], doc[-1]))
    return out


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
    for c in commands():
        p = sub.add_parser(c.name, help=c.help, description=f"{c.help.replace('%%', '%')}\n\nexample:\n  {c.example}",
                           formatter_class=_Formatter)
        if argv is None or c.name == wanted:
            c.add_args(p)
            if c.run is not None:
                p.set_defaults(func=c.run)
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
