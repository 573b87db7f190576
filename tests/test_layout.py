"""The package's seams: the CLI sits on top of the library and nothing below imports it; only
`specdiff.cli` parses arguments; `specdiff --help` and `--version` load neither torch nor
transformers."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "specdiff"


def loaded_modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


LIBRARY = ["specdiff.decode", "specdiff.engine", "specdiff.methods", "specdiff.methods.ar", "specdiff.methods.pld",
           "specdiff.methods.dflash", "specdiff.methods.ddtree", "specdiff.methods.ddtree_pld", "specdiff.methods.d2sd",
           "specdiff.methods.caddtree", "specdiff.bench.harness", "specdiff.methods.caddtree.profiler",
           "specdiff.dllm.pipeline", "specdiff.train.pretrain"]


def test_the_library_never_loads_the_cli():
    mods = loaded_modules("\n".join(f"import {m}" for m in LIBRARY))
    assert set(LIBRARY) <= mods
    assert not any(m == "specdiff.cli" or m.startswith("specdiff.cli.") for m in mods)


def test_only_the_cli_uses_argparse_and_nothing_imports_the_cli():
    """Also function-local imports: no module outside specdiff.cli (but `python -m specdiff`)
    imports argparse or the CLI."""
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "cli" or rel == Path("__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(n == "argparse" or n == "specdiff.cli" or n.startswith("specdiff.cli.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_load_no_torch(argv):
    mods = loaded_modules(f"from specdiff.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert "torch" not in mods and "transformers" not in mods


def test_version_is_the_package_version(capsys):
    from specdiff import __version__
    from specdiff.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"specdiff {__version__}"


def test_every_command_has_a_description_and_an_example(capsys):
    from specdiff.cli import commands, main

    for command in commands():
        with pytest.raises(SystemExit):
            main([command.name, "--help"])
        out = capsys.readouterr().out
        assert f"usage: specdiff {command.name}" in out and "example:\n  specdiff " in out


def test_the_readme_library_snippet_runs_as_written(capsys):
    readme = (SRC.parents[1] / "README.md").read_text()
    snippet = readme.split("Library:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    exec(compile(snippet, "README.md", "exec"), {})
    assert "tau " in capsys.readouterr().out


def test_every_flag_has_help():
    """Every flag of every command says what it is for (its help also shows its default)."""
    import argparse

    from specdiff.cli import build_parser

    def bare(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from bare(sub, f"{name} {sub_name}".strip())
            elif not action.help and action.dest != "help":
                yield f"{name} {'/'.join(action.option_strings) or action.dest}"

    assert list(bare(build_parser(None), "")) == []


def test_one_registry_lists_the_methods():
    """The config's type, the CLI's choices and the engine read one registry, and each entry's
    module builds a proposer of that name."""
    import typing

    from specdiff import config, methods
    from specdiff.cli.common import config_flags

    assert typing.get_args(config.Method) == config.METHODS == tuple(methods.REGISTRY)
    method_field = next(f for path, _, f in config_flags() if path == ("method",))
    assert tuple(method_field.metadata["choices"]) == config.METHODS
    for name, info in methods.REGISTRY.items():
        import importlib

        module = importlib.import_module(info.module)
        assert callable(module.make_proposer), name


def test_every_decode_setting_has_one_flag_and_its_default_from_the_config():
    from specdiff.cli import build_parser
    from specdiff.cli.common import config_flags
    from specdiff.config import DecodeConfig

    flags = [flag for _, flag, _ in config_flags()]
    assert len(flags) == len(set(flags))
    parser = build_parser(["generate"])
    args = parser.parse_args(["generate", "--prompt", "x"])
    from specdiff.cli.common import decode_config

    assert decode_config(args) == DecodeConfig()
    for path, flag, f in config_flags():
        assert f.metadata["help"], flag
