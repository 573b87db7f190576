"""Folders into models: the target (any local `AutoModelForCausalLM` folder), the DFlash and VP
drafters, the bundled defaults when no folder is given, what a decode reads off them (end-of-text
ids, prompt encoding), and prompt files. The one place every command loads models and prompts
through."""

from __future__ import annotations

import json
from pathlib import Path

from specdiff.errors import SpecdiffError


def check_device(name: str | None, flag: str = "--device") -> None:
    """A torch device name (cpu, cuda, cuda:1, ...) that exists here; None: the caller's default."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise SpecdiffError(f"{flag} {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecdiffError(f"{flag} {name} was asked for, but no CUDA device is available")


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
    """A prompt's ids with the special tokens the tokenizer adds (a BOS where the model has one)."""
    return list(tokenizer(text)["input_ids"])


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Chat messages ({"role", "content"}) through the tokenizer's chat template, ending with the
    assistant's turn opened; one line if the tokenizer has no template."""
    if not getattr(tokenizer, "chat_template", None):
        raise SpecdiffError("this tokenizer has no chat template; give the prompt as plain text")
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as e:  # a template that rejects these messages (roles, order)
        raise SpecdiffError(f"the chat template cannot render these messages: {type(e).__name__}: {e}") from None
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(i) for i in ids]


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file, or one line saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise SpecdiffError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecdiffError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SpecdiffError(f"cannot read {what} {path}: {e.strerror}") from None


def read_prompt_rows(path: str | Path) -> list[tuple[str, str]]:
    """(id, prompt) of every row of a JSONL prompt file: one JSON object per line with a string
    `prompt` and an optional `id` (default: the file's stem and the row's index)."""
    path = Path(path)
    rows = []
    for i, line in enumerate(read_text(path, "prompt file").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecdiffError(f"{path}:{i + 1}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise SpecdiffError(f"{path}:{i + 1}: not a JSON object with a string \"prompt\" field")
        rows.append((str(row.get("id", f"{path.stem}-{len(rows)}")), row["prompt"]))
    if not rows:
        raise SpecdiffError(f"{path}: no prompts (expected JSONL rows with a \"prompt\" field)")
    return rows
