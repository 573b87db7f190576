"""Markdown tables and the environment line every bench report opens with."""

from __future__ import annotations

from typing import Iterable


def markdown_table(columns: list[str], rows: Iterable[Iterable[object]]) -> list[str]:
    """A header, its rule and one line per row, each cell already formatted (or str()-ed)."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def environment_line(env: dict) -> str:
    """Where a bench ran: the GPU (or device) and the library versions."""
    line = f"device {env.get('gpu', env['device'])}, torch {env['torch']}, transformers {env['transformers']}"
    return line + switches_note(env.get("kernel_switches"))


def switches_note(switches: dict | None) -> str:
    """The kernel launch choices a run set away from their defaults (`kernels.switches`), as a
    clause to append to a report's first line; "" where none."""
    return "; kernel switches: " + ", ".join(f"{k}={v}" for k, v in switches.items()) if switches else ""
