"""Where the bundled default models live: `<repo>/models/{target,dflash}` (or $SPECDIFF_MODELS)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_MODELS = Path(__file__).resolve().parents[3] / "models"


def models_root() -> Path:
    return Path(os.environ.get("SPECDIFF_MODELS", REPO_MODELS))


def default_path(kind: str) -> Path:
    """kind: "target" | "dflash" | "vp" | "dllm"."""
    return models_root() / kind


def has_bundled(kind: str) -> bool:
    return (default_path(kind) / "config.json").is_file()
