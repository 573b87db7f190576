"""The masked-diffusion model interface: logits at every row under an explicit visibility mask.

A model is any callable `model(ids [B, N], visible [B, N, N] bool, position_ids [B, N]) ->
logits [B, N, V]` that predicts the token at each row's own position (no shift, as in LLaDA).
`visible[b, q, k]` says whether row q may attend to row k; Spiffy's verification forward needs
this to append draft copies of a block that reuse the block's positions.

`base_visibility` gives the mask of a plain forward over prompt + answer: full bidirectional
(LLaDA without cache), or block-causal (SDAR-like: a row in block b sees the prompt and blocks
<= b). Spiffy is exact in the block-causal mode and with a dual cache, not in the full
bidirectional mode without one (research notes, section 2.5).

Dual cache (Fast-dLLM): at a block's first step one full forward also returns the keys and
values of every row outside the block (`MaskedDiffusionModel.context`); the block's later steps
query only the block's rows against that frozen context (`context=` in `__call__`, with
`visible` then [B, Q, C + Q]: C context columns first).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen3Config

from specdiff.target.hf_causal import cache_argument

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [B, H_kv, C, d]


def base_visibility(prompt_len: int, gen_length: int, block_length: int, block_causal: bool) -> torch.Tensor:
    """[L, L] bool, L = prompt_len + gen_length. The prompt is block -1: seen by every row."""
    L = prompt_len + gen_length
    if not block_causal:
        return torch.ones(L, L, dtype=torch.bool)
    block = torch.full((L,), -1, dtype=torch.long)
    block[prompt_len:] = torch.arange(gen_length) // block_length
    return block[None, :] <= block[:, None].clamp(min=-1)  # row q sees column k iff block(k) <= block(q)


class MaskedDiffusionModel:
    """A Hugging Face transformer used bidirectionally: the 4-D mask replaces its causal mask."""

    def __init__(self, hf_model: torch.nn.Module):
        self.hf_model = hf_model
        first = next(hf_model.parameters())
        self.dtype, self.device = first.dtype, first.device
        self.cache_arg = cache_argument(hf_model)

    def _forward(self, ids, visible, position_ids, context: KV | None, use_cache: bool):
        ids, visible, position_ids = ids.to(self.device), visible.to(self.device), position_ids.to(self.device)
        # additive mask [B, 1, Q, K]: 0 = visible, dtype-min = hidden (exp underflows to exactly 0)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible, torch.finfo(self.dtype).min)
        cache = DynamicCache(ddp_cache_data=context) if context is not None else None  # fresh: forwards append
        return self.hf_model(input_ids=ids, attention_mask=mask[:, None], position_ids=position_ids,
                             use_cache=use_cache, **{self.cache_arg: cache})

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, visible: torch.Tensor, position_ids: torch.Tensor,
                 context: KV | None = None) -> torch.Tensor:
        return self._forward(ids, visible, position_ids, context, use_cache=context is not None).logits

    @torch.no_grad()
    def context(self, ids: torch.Tensor, visible: torch.Tensor, position_ids: torch.Tensor,
                keep: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """A plain forward that also returns the keys and values of the rows `keep` [C]."""
        out = self._forward(ids, visible, position_ids, None, use_cache=True)
        keep = keep.to(self.device)
        kv = [(layer.keys[:, :, keep], layer.values[:, :, keep]) for layer in out.past_key_values.layers]
        return out.logits, kv


def tiny_mdm(arch: str = "qwen3", vocab_size: int = 64, hidden: int = 32, layers: int = 2, seed: int = 0,
             init_std: float = 0.3, dtype: torch.dtype = torch.float64) -> MaskedDiffusionModel:
    """A random tiny model for tests. fp64 by default, so that the wider verification forward
    cannot flip a near-tie through a different accumulation order."""
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
        initializer_range=init_std, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )
    cfg = Qwen3Config(**common) if arch == "qwen3" else LlamaConfig(**common)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(dtype).eval()
    return MaskedDiffusionModel(hf)
