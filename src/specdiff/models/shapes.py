"""Decoder shapes: the widths and depth of a Qwen3 model, and the public Qwen3 shapes that the
stand-ins (`inflate`) and the speed table (`bench.speed`) are built in. No torch here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """The widths and depth of a Qwen3 decoder."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def of(cls, cfg) -> Shape:
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.num_attention_heads),
                   int(cfg.num_key_value_heads), int(hd), int(cfg.intermediate_size))

    def __str__(self) -> str:
        return (f"hidden {self.hidden}, {self.layers} layers, {self.heads} heads ({self.kv_heads} KV heads, "
                f"head_dim {self.head_dim}), MLP {self.intermediate}")


# config.json of Qwen/Qwen3-8B and Qwen/Qwen3-1.7B: (shape, vocabulary, tied embeddings)
PUBLIC = {
    "qwen3-8b": (Shape(4096, 36, 32, 8, 128, 12288), 151936, False),
    "qwen3-1.7b": (Shape(2048, 28, 16, 8, 128, 6144), 151936, True),
}
