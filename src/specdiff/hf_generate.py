"""A drop-in for `model.generate`: any specdiff method behind the call shape transformers users know.

    from specdiff.hf_generate import generate
    out = generate(model, input_ids, attention_mask=mask, generation_config=gen_cfg, streamer=streamer,
                   method="ddtree", drafter=drafter)           # [1, prompt + new] like model.generate

Input ids and attention mask in (batch 1; left padding is dropped), the ids out. A
`GenerationConfig`'s fields are read: `max_new_tokens`, `do_sample`, `temperature`, `top_p`,
`top_k`, `eos_token_id`; others that would change the output (beams, penalties, constraints) are
refused in one line. `streamer` gets `put(prompt)`, then `put(tokens)` after every round, then
`end()`, as transformers' own streamers expect. Sampling draws from the same distribution as
transformers (lossless), but with specdiff's keyed noise (`seed`), not torch's generator.
"""

from __future__ import annotations

from typing import Any

import torch

from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.errors import SpecdiffError

# GenerationConfig fields that change what generate returns and that this call does not honour,
# with the value that keeps them off
UNSUPPORTED = {"num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "repetition_penalty": 1.0,
               "no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None, "min_new_tokens": None,
               "min_length": 0, "num_return_sequences": 1, "typical_p": 1.0, "epsilon_cutoff": 0.0,
               "eta_cutoff": 0.0, "min_p": None, "stop_strings": None, "constraints": None}


def sampling_from(gen_cfg, seed: int) -> SamplingConfig:
    """A GenerationConfig's sampling fields -> SamplingConfig (greedy unless do_sample)."""
    if not getattr(gen_cfg, "do_sample", False):
        return SamplingConfig(temperature=0.0, seed=seed)
    return SamplingConfig(temperature=float(gen_cfg.temperature if gen_cfg.temperature is not None else 1.0),
                          top_p=float(gen_cfg.top_p if gen_cfg.top_p is not None else 1.0),
                          top_k=int(gen_cfg.top_k or 0), seed=seed)


def check_supported(gen_cfg) -> None:
    for name, off in UNSUPPORTED.items():
        value = getattr(gen_cfg, name, off)
        if value is not None and value != off:
            raise SpecdiffError(f"generation_config.{name}={value!r} is not supported by specdiff's generate")


def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             generation_config: Any = None, streamer: Any = None, method: str = "ddtree", drafter=None,
             vp_drafter=None, seed: int = 0, **options) -> torch.Tensor:
    """`model.generate(input_ids, attention_mask=..., generation_config=..., streamer=...)` through
    specdiff: -> [1, prompt + new] long on the input's device. `options`: any other DecodeConfig
    field (budget, engine, kernels, numerics, ...)."""
    from specdiff.engine import build_decoder

    gen_cfg = generation_config if generation_config is not None else model.generation_config
    check_supported(gen_cfg)
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise SpecdiffError(f"specdiff's generate takes one sequence (input_ids of shape [1, n]), got {list(ids.shape)}")
    prompt = ids[0].tolist()
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).reshape(-1).tolist()
        if len(mask) != len(prompt):
            raise SpecdiffError(f"attention_mask has {len(mask)} entries for {len(prompt)} input ids")
        first = next((i for i, m in enumerate(mask) if m), len(mask))
        if not all(mask[first:]):
            raise SpecdiffError("attention_mask must be ones after any left padding")
        prompt = prompt[first:]
    max_new = gen_cfg.max_new_tokens
    if max_new is None:
        max_new = max(1, int(gen_cfg.max_length or 20) - len(prompt))
    eos = gen_cfg.eos_token_id
    eos_ids = [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    cfg = DecodeConfig(method=method, max_new_tokens=int(max_new), sampling=sampling_from(gen_cfg, seed),
                       stop_at_eos=bool(eos_ids), **options)
    decoder = build_decoder(model, cfg, drafter, eos_ids, vp_drafter=vp_drafter)
    if streamer is not None:
        streamer.put(torch.tensor([prompt]))
    new: list[int] = []
    for chunk in decoder.stream(prompt):
        new.extend(chunk.tokens)
        if streamer is not None:
            streamer.put(torch.tensor(chunk.tokens))
    if streamer is not None:
        streamer.end()
    return torch.tensor([prompt + new], dtype=torch.long, device=ids.device)
