"""Folders into models: the target (any local `AutoModelForCausalLM` folder), the DFlash and VP
drafters, the bundled defaults when no folder is given, and what a decode reads off them
(end-of-text ids, prompt encoding). The one place every command loads models through."""

from __future__ import annotations

from pathlib import Path

from specdiff.errors import SpecdiffError


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SpecdiffError("--device cuda was asked for, but no CUDA device is available")


def load_target_folder(target: str | Path | None, device: str = "cpu", dtype: str = "float32"):
    """-> (HF model, tokenizer) of `target`, or of the bundled target when it is None."""
    from specdiff.models.bundled import default_path
    from specdiff.target.hf_causal import load_target

    check_device(device)
    folder = Path(target) if target else default_path("target")
    if not target and not (folder / "config.json").is_file():
        raise SpecdiffError(f"no bundled target model at {folder}; pass --target DIR (or try `specdiff demo`)")
    return load_target(folder, device, dtype)


def load_drafter_folder(drafter: str | Path | None, device: str = "cpu", dtype: str = "float32", kind: str = "dflash"):
    """A DFlash drafter (`kind` "dflash") or D²SD's VP drafter ("vp") from its folder, or the
    bundled one when it is None."""
    from specdiff.drafters.dflash import load_drafter
    from specdiff.models.bundled import default_path
    from specdiff.target.hf_causal import DTYPES

    check_device(device)
    folder = Path(drafter) if drafter else default_path(kind)
    if not drafter and not (folder / "config.json").is_file():
        name, flag = {"dflash": ("DFlash drafter", "--drafter"), "vp": ("VP drafter", "--vp-drafter")}[kind]
        raise SpecdiffError(f"no bundled {name} at {folder}; pass {flag} DIR")
    return load_drafter(folder, device, DTYPES[dtype])


def load_models(target: str | Path | None, drafter: str | Path | None, device: str = "cpu", dtype: str = "float32",
                need_drafter: bool = True):
    """-> (HF model, tokenizer, drafter or None), resolving bundled defaults."""
    model, tokenizer = load_target_folder(target, device, dtype)
    return model, tokenizer, load_drafter_folder(drafter, device, dtype) if need_drafter else None


def eos_ids(model, tokenizer) -> list[int]:
    """Every end-of-text id the model's generation config, config or tokenizer names."""
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
