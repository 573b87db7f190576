"""Loading specdiff's own dLLM folders (`specdiff train-dllm`): a Qwen3 checkpoint whose
config.json names its `mask_token_id`, wrapped as a `MaskedDiffusionModel`.

`load_dllm(path, device, dtype)` is the one entry point; a general adapter for other dLLM
families (LLaDA, Dream, SDAR) can take its place, since callers use only `.model`, `.mask_id`
and `.tokenizer` of what it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from specdiff.dllm.model import MaskedDiffusionModel
from specdiff.errors import SpecdiffError


@dataclass
class LoadedDLLM:
    model: MaskedDiffusionModel
    mask_id: int
    tokenizer: Tokenizer
    path: Path


def load_dllm(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedDLLM:
    """A specdiff dLLM folder -> LoadedDLLM; every bad folder is one SpecdiffError line."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per error, no loading bars

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SpecdiffError(f"no dLLM folder at {path} (config.json not found)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecdiffError(f"unreadable config.json in {path}: {e}") from None
    mask_id = config.get("mask_token_id")
    if not isinstance(mask_id, int) or not 0 <= mask_id < config.get("vocab_size", 0):
        raise SpecdiffError(f"{config_file} has no valid mask_token_id: not a masked-diffusion model")
    if not (path / "tokenizer.json").is_file():
        raise SpecdiffError(f"no tokenizer.json in {path}")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except Exception as e:  # corrupt or missing weights: safetensors, OSError, shape mismatches
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecdiffError(f"cannot load the weights in {path}: {first}") from None
    return LoadedDLLM(MaskedDiffusionModel(hf.to(device).eval()), mask_id, tokenizer, path)
