"""Layout metrics of a specdiff source tree, printed as one markdown table.

Owns: the module import graph (static `import`/`from ... import` of the package, relative forms
included; dynamic `import_module(...)` calls are not seen) and its cycles, with and without
function-local imports; file and function lengths; which library modules reach into the CLI;
optionally the `duplicates` pair count. Stdlib only; it reads the tree and writes nothing.

    python scripts/layout_report.py [--src src/specdiff] [--verbose] [--duplicates]
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

LONG_FILE = 500


def module_names(src: Path) -> dict[str, Path]:
    """Dotted name -> file; a package's __init__ is the package's own node."""
    mods = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def imports(mod: str, path: Path, tree: ast.Module, mods: dict) -> list[tuple[str, bool]]:
    """(target, is module-level) for each import of the package in one file; a target that is no
    module of this tree (a file moved but its importers not yet updated) is kept, marked by `mods`."""
    root = mod.split(".")[0]
    # Relative imports resolve against the package: the module itself for an __init__.
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    # Function bodies run on call, not on import: the usual place for a cycle-breaking import.
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if n is not f}
    # `if TYPE_CHECKING:` imports never run: annotations only, no edge.
    typing_only = {id(n) for f in ast.walk(tree) if isinstance(f, ast.If) and isinstance(f.test, ast.Name)
                   and f.test.id == "TYPE_CHECKING" for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` is an edge to the submodule when sub is one, else to pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        found += [(t, id(node) not in local) for t in targets if t.split(".")[0] == root and t != mod]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, largest first. The graph is a few
    dozen nodes, so mutual reachability is simpler than Tarjan and fast enough."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for w in graph[todo.pop()] - seen:
                seen.add(w)
                todo.append(w)
        reach[start] = seen
    found = {tuple(sorted(w for w in reach[v] if v in reach[w])) for v in graph if v in reach[v]}
    return sorted(map(list, found), key=lambda c: (-len(c), c))


def functions(node: ast.AST, prefix: str = "") -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method; Class.method keeps same-named ones apart."""
    found = []
    for child in ast.iter_child_nodes(node):
        name = prefix
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}."
            if not isinstance(child, ast.ClassDef):
                found.append((child.end_lineno - child.lineno + 1, name[:-1]))
        found += functions(child, name)
    return found


def duplicate_pairs(src: Path) -> str:
    out = subprocess.run(["duplicates", "--repo", str(src), "--most", "200"],
                         capture_output=True, text=True, check=False).stdout
    head = out.splitlines()[0] if out else ""
    match = re.match(r"(\d+) pairs? of places", head)
    return match.group(1) if match else ("0" if head.startswith("no duplicates") else f"? ({head!r})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("src/specdiff"))
    parser.add_argument("--verbose", action="store_true", help="list the cycles and the CLI importers")
    parser.add_argument("--duplicates", action="store_true", help="also run `duplicates` on --src")
    args = parser.parse_args()
    src = args.src.resolve()
    mods = module_names(src)
    root = src.name
    every: dict[str, set[str]] = {m: set() for m in mods}
    top_only: dict[str, set[str]] = {m: set() for m in mods}
    file_lines, funcs, unresolved = {}, [], set()
    for mod, path in mods.items():
        text = path.read_text()
        file_lines[path.relative_to(src).as_posix()] = len(text.splitlines())
        tree = ast.parse(text, str(path))
        for target, top in imports(mod, path, tree, mods):
            if target not in mods:
                unresolved.add(f"{mod} -> {target}")
                continue
            every[mod].add(target)
            if top:
                top_only[mod].add(target)
        funcs += [(n, f"{mod}:{name}") for n, name in functions(tree)]

    # The CLI is specdiff/cli.py at 886013e and a package now; either way everything under it is excluded.
    cli = f"{root}.cli"
    under_cli = {m for m in mods if m == cli or m.startswith(cli + ".")}
    cli_users = sorted(m for m in mods if m not in under_cli and every[m] & under_cli)
    all_cycles, top_cycles = cycles(every), cycles(top_only)
    longest_file = max(file_lines.items(), key=lambda kv: kv[1])
    longest_func = max(funcs)
    rows = [
        ("modules (.py files)", len(mods)),
        ("import cycles, all imports (SCCs > 1)", len(all_cycles)),
        ("largest cycle, all imports", max(map(len, all_cycles), default=0)),
        ("import cycles, module-level imports only", len(top_cycles)),
        ("largest cycle, module-level only", max(map(len, top_cycles), default=0)),
        ("longest file (lines)", f"{longest_file[1]} `{longest_file[0]}`"),
        ("longest function (lines)", f"{longest_func[0]} `{longest_func[1]}`"),
        (f"files over {LONG_FILE} lines", sum(n > LONG_FILE for n in file_lines.values())),
        (f"library modules importing {cli}", len(cli_users)),
        ("imports of no module in this tree", len(unresolved)),
    ]
    if args.duplicates:
        rows.append(("duplicate pairs (`duplicates --most 200`)", duplicate_pairs(src)))
    print(f"| metric ({args.src}) | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.verbose:
        for label, found in (("all imports", all_cycles), ("module-level only", top_cycles)):
            print(f"\ncycles, {label}:")
            for component in found:
                print(f"- ({len(component)}) " + ", ".join(component))
        print(f"\nimporters of {cli}: " + (", ".join(cli_users) or "none"))
        print("unresolved imports: " + (", ".join(sorted(unresolved)) or "none"))
        print(f"files over {LONG_FILE} lines: " + (", ".join(
            f"{f} ({n})" for f, n in sorted(file_lines.items(), key=lambda kv: -kv[1]) if n > LONG_FILE) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
