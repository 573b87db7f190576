"""Tiny random models built from config, for tests and for demos without trained weights."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from specdiff.drafters.dflash import DFlashDrafter, DFlashSpec


def tiny_target(arch: str = "qwen3", vocab_size: int = 96, hidden: int = 64, layers: int = 4, seed: int = 0,
                init_std: float = 0.08, max_positions: int = 1024) -> torch.nn.Module:
    """A random fp32 causal LM. A larger init std than HF's default gives peaked, tie-free logits."""
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=max_positions,
        initializer_range=init_std, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )
    cfg = Qwen3Config(**common) if arch == "qwen3" else LlamaConfig(**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def tiny_drafter(target: torch.nn.Module, layers: int = 2, block_size: int = 8, taps: list[int] | None = None,
                 mask_token_id: int | None = None, seed: int = 1, init_std: float = 0.08) -> DFlashDrafter:
    """A random DFlash drafter that fits `target` (same hidden size and vocabulary)."""
    t = target.config
    n = t.num_hidden_layers
    cfg = Qwen3Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=2 * t.hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=t.hidden_size // 4,
        max_position_embeddings=t.max_position_embeddings, rms_norm_eps=1e-6,
    )
    spec = DFlashSpec(
        block_size=block_size,
        mask_token_id=t.vocab_size - 1 if mask_token_id is None else mask_token_id,
        target_layer_ids=taps if taps is not None else sorted({0, n // 2, n - 1}),
        num_target_layers=n,
    )
    torch.manual_seed(seed)
    model = DFlashDrafter(cfg, spec)
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=init_std)
    model.bind(target.get_input_embeddings(), target.get_output_embeddings())
    return model.eval()
