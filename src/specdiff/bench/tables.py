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
    switches = env.get("kernel_switches")
    if switches:
        line += "; kernel switches: " + ", ".join(f"{k}={v}" for k, v in switches.items())
    return line
