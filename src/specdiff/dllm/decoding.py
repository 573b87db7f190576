"""Reference masked-diffusion decoding: one pure transition function and the baseline loop.

The state is the whole sequence (prompt + answer, [MASK] where undecided) plus the current
(block, step). `transition(state, logits, cfg)` is one denoising step given the current block's
logits: draw a token at every position, then commit some of the still-masked ones:
- low_confidence (LLaDA): the k draws with the highest untempered probability;
- random (LLaDA): k positions by keyed uniform scores;
- threshold (Fast-dLLM): every draw with probability > threshold, at least the most probable one.
k follows LLaDA's fixed schedule (`DLLMConfig.num_transfer`). A block ends when it has no mask.

Draws are Gumbel-max at logits / temperature (argmax at 0), with noise that is a pure function of
(seed, block, step, position in block, token id), like `specdiff.sampling` keys AR noise by
position, from the same grid of uniforms strictly inside (0, 1): [MASK] is never drawn. The
baseline and Spiffy call this same function, so they make the same choice from the same (state,
logits) whatever order or batch the model calls came in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specdiff.dllm.config import DLLMConfig
from specdiff.dllm.model import KV, base_visibility
from specdiff.sampling import derive_seed, gumbel, keyed_uniform

_DRAW, _REMASK = 0, 1  # noise streams of one step: token draws, random remasking scores


@dataclass(eq=False)
class DLLMState:
    ids: torch.Tensor  # [L] long: prompt + answer, cfg.mask_id where undecided
    prompt_len: int
    block: int = 0  # current semi-AR block; == cfg.num_blocks when done
    step: int = 0  # step within the block: keys the noise and the schedule

    def block_slice(self, cfg: DLLMConfig) -> slice:
        start = self.prompt_len + self.block * cfg.block_length
        return slice(start, start + cfg.block_length)

    def key(self) -> tuple[bytes, int, int]:
        """Hashable identity, for trajectory comparisons."""
        return self.ids.cpu().numpy().tobytes(), self.block, self.step


@dataclass
class DLLMResult:
    token_ids: torch.Tensor  # [gen_length] the answer
    nfe: int  # model forwards
    steps: int  # transitions taken (= baseline forwards)
    accepted: int = 0  # Spiffy: steps whose logits came from a draft row (steps = nfe + accepted)
    trajectory: list[tuple[bytes, int, int]] = field(default_factory=list)  # state keys, start included
    drafted: int = 0  # Spiffy: draft blocks verified in all (the extra width paid)
    walks: list[int] = field(default_factory=list)  # Spiffy: drafts accepted after each forward


def step_key(seed: int, block: int, step: int, stream: int) -> int:
    """A 64-bit noise key of its own for (seed, block, step, stream)."""
    return derive_seed(seed, str(block), str(step), str(stream))


def token_logits(logits: torch.Tensor, cfg: DLLMConfig) -> torch.Tensor:
    """[m, V] -> float64 [m, V] with [MASK] never drawn: committing it would commit nothing."""
    logits = logits.double()
    if cfg.mask_id < logits.shape[-1]:
        logits = logits.clone()
        logits[:, cfg.mask_id] = float("-inf")
    return logits


def transition(state: DLLMState, logits: torch.Tensor, cfg: DLLMConfig) -> DLLMState:
    """One denoising step: logits [block_length, V] of the current block at `state` -> next state."""
    sl = state.block_slice(cfg)
    x = state.ids[sl]  # [m]
    masked = x == cfg.mask_id  # [m]
    logits = token_logits(logits, cfg)
    offsets = torch.arange(x.shape[0], device=x.device)
    if cfg.temperature == 0.0:
        x0 = logits.argmax(dim=-1)  # [m]
    else:
        u = keyed_uniform(step_key(cfg.seed, state.block, state.step, _DRAW), offsets, logits.shape[-1])  # [m, V]
        # shifted by the max before tempering, as the AR sampler: a tiny T never overflows, and
        # tokens tied at the max still split by the noise
        scaled = (logits - logits.amax(dim=-1, keepdim=True)) / cfg.temperature
        x0 = (scaled + gumbel(u)).argmax(dim=-1)
    if cfg.remasking == "random":
        conf = keyed_uniform(step_key(cfg.seed, state.block, state.step, _REMASK), offsets, 1)[:, 0]
    else:  # the untempered probability of the drawn token, as LLaDA and Fast-dLLM
        conf = logits.softmax(dim=-1).gather(-1, x0[:, None])[:, 0]
    conf = conf.masked_fill(~masked, float("-inf"))  # committed tokens never change
    commit = torch.zeros_like(masked)
    if cfg.remasking == "threshold":
        commit = masked & (conf > cfg.threshold)
        commit[conf.argmax()] = True  # at least one per step
    else:
        k = min(cfg.num_transfer(state.step), int(masked.sum()))
        commit[torch.topk(conf, k).indices] = True
    ids = state.ids.clone()
    ids[sl] = torch.where(commit, x0, x)
    if (ids[sl] == cfg.mask_id).any():
        return DLLMState(ids, state.prompt_len, state.block, state.step + 1)
    return DLLMState(ids, state.prompt_len, state.block + 1, 0)


def initial_state(prompt_ids: torch.Tensor, cfg: DLLMConfig, device: torch.device | str = "cpu") -> DLLMState:
    """The prompt and gen_length masks, on `device` (the model's: decoding then stays there)."""
    cfg.validate()
    answer = torch.full((cfg.gen_length,), cfg.mask_id, dtype=torch.long, device=device)
    return DLLMState(torch.cat([prompt_ids.long().to(device), answer]), prompt_ids.shape[0])


def model_device(model) -> torch.device:
    """Where a model computes (a MaskedDiffusionModel's device; CPU for plain callables)."""
    return torch.device(getattr(model, "device", "cpu"))


def block_logits(model, state: DLLMState, visible: torch.Tensor, cfg: DLLMConfig) -> torch.Tensor:
    """A plain forward over the whole sequence -> [block_length, V] logits of the current block."""
    L = state.ids.shape[0]
    logits = model(state.ids[None], visible[None], torch.arange(L, device=state.ids.device)[None])[0]  # [L, V]
    return logits[state.block_slice(cfg)]


@dataclass
class DualCache:
    kv: KV  # per layer [1, H_kv, C, d]: every row outside the block, frozen at the block's first step
    visible: torch.Tensor  # [m, C + m] bool: what the block's rows see, context columns first


def block_context(model, state: DLLMState, visible: torch.Tensor, cfg: DLLMConfig) -> tuple[torch.Tensor, DualCache]:
    """Dual cache, a block's first step: a plain forward -> (block logits [m, V], the frozen context)."""
    L, sl = state.ids.shape[0], state.block_slice(cfg)
    dev = state.ids.device
    keep = torch.cat([torch.arange(sl.start, device=dev), torch.arange(sl.stop, L, device=dev)])  # [C] outside the block
    logits, kv = model.context(state.ids[None], visible[None], torch.arange(L, device=dev)[None], keep)
    return logits[0, sl], DualCache(kv, torch.cat([visible[sl][:, keep], visible[sl, sl]], dim=1))


def cached_block_logits(model, state: DLLMState, cache: DualCache, cfg: DLLMConfig) -> torch.Tensor:
    """Dual cache, a later step: only the block's rows, against the frozen context -> [m, V]."""
    sl = state.block_slice(cfg)
    pos = torch.arange(sl.start, sl.stop, device=state.ids.device)
    return model(state.ids[sl][None], cache.visible[None], pos[None], context=cache.kv)[0]


def generate_baseline(model, prompt_ids: torch.Tensor, cfg: DLLMConfig, block_causal: bool = True,
                      dual_cache: bool = False, trace: list | None = None) -> DLLMResult:
    """Plain decoding: one forward per transition. prompt_ids [P] -> DLLMResult.

    dual_cache: Fast-dLLM's frozen prefix and suffix (model.py). trace, if given, receives
    (state, block logits [m, V]) for every step: calibration's input."""
    state = initial_state(prompt_ids, cfg, model_device(model))
    visible = base_visibility(state.prompt_len, cfg.gen_length, cfg.block_length, block_causal)  # [L, L]
    visible = visible.to(state.ids.device)
    trajectory, nfe = [state.key()], 0
    while state.block < cfg.num_blocks:
        if not dual_cache:
            logits = block_logits(model, state, visible, cfg)
        elif state.step == 0:
            logits, cache = block_context(model, state, visible, cfg)
        else:
            logits = cached_block_logits(model, state, cache, cfg)
        if trace is not None:
            trace.append((state, logits))
        state = transition(state, logits, cfg)
        nfe += 1
        trajectory.append(state.key())
    return DLLMResult(state.ids[state.prompt_len:], nfe, nfe, 0, trajectory)
