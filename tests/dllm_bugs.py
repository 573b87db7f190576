"""Planted Spiffy bugs, installed with pytest's monkeypatch: the tests that check losslessness
(exact law at T > 0, coupled trajectories) must reject each of them."""

from __future__ import annotations

import dataclasses

import torch

from specdiff.dllm import spiffy
from specdiff.dllm.decoding import DLLMState


def draws_at_t1(monkeypatch):
    real = spiffy.transition
    monkeypatch.setattr(spiffy, "transition", lambda s, lg, c: real(s, lg, dataclasses.replace(c, temperature=1.0)))


def accepts_on_positions(monkeypatch):
    # the walk's first step takes a draft whose unmasked positions match the drawn state, tokens unchecked
    real_instantiate, real_transition, last = spiffy.instantiate, spiffy.transition, {}

    def instantiate(graph, anchor, state, cfg, max_drafts=None):
        last["state"], last["drafts"] = state, real_instantiate(graph, anchor, state, cfg, max_drafts)
        return last["drafts"]

    def transition(state, logits, cfg):
        nxt = real_transition(state, logits, cfg)
        if state is last.get("state") and nxt.block == state.block:
            sl = nxt.block_slice(cfg)
            for d in last["drafts"]:
                if torch.equal(d == cfg.mask_id, nxt.ids[sl] == cfg.mask_id):
                    ids = nxt.ids.clone()
                    ids[sl] = d
                    return DLLMState(ids, nxt.prompt_len, nxt.block, nxt.step)
        return nxt

    monkeypatch.setattr(spiffy, "instantiate", instantiate)
    monkeypatch.setattr(spiffy, "transition", transition)


def stale_draft_context(monkeypatch):
    # dual cache: drafts are verified against the previous block's frozen context (its stale
    # suffix), real rows against the fresh one
    real_context, real_verify, contexts = spiffy.block_context, spiffy.verify_forward, []

    def block_context(model, state, visible, cfg):
        logits, cache = real_context(model, state, visible, cfg)
        contexts.append(cache)
        return logits, cache

    def verify_forward(model, state, drafts, visible, cfg, cache=None, plans=None):
        p, p_dd = real_verify(model, state, drafts, visible, cfg, cache, plans)
        if cache is not None and len(contexts) > 1:  # no plan cache: the stale context's mask is its own
            p_dd = real_verify(model, state, drafts, visible, cfg, contexts[-2])[1]
        return p, p_dd

    monkeypatch.setattr(spiffy, "block_context", block_context)
    monkeypatch.setattr(spiffy, "verify_forward", verify_forward)
