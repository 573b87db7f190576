"""Tiny demo models saved in the real formats (HF target + tokenizer, DFlash drafter folder).

Used by `specdiff demo` and the CLI tests until trained bundled models exist: random weights, so
the drafter rarely agrees, but every file goes through the same loaders as real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from specdiff.drafters.dflash import save_drafter
from specdiff.models.tiny import tiny_drafter, tiny_target
from specdiff.train.tokenizer import load_tokenizer, tiny_tokenizer


def build_demo_models(folder: Path | str, arch: str = "qwen3") -> tuple[str, str]:
    folder = Path(folder)
    target_dir, drafter_dir = folder / "target", folder / "dflash"
    if (target_dir / "config.json").is_file() and (drafter_dir / "config.json").is_file():
        return str(target_dir), str(drafter_dir)
    tiny_tokenizer(target_dir, vocab_size=512)
    tok = load_tokenizer(target_dir)
    model = tiny_target(arch, vocab_size=len(tok), hidden=64, layers=4)
    model.config.eos_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(target_dir)
    drafter = tiny_drafter(model, block_size=16, mask_token_id=tok.mask_token_id)
    save_drafter(drafter, drafter_dir, extra={"note": "random weights, demo only"})
    return str(target_dir), str(drafter_dir)
