"""Spiffy: lossless speculative decoding of masked-diffusion LLMs by auto-speculation.

Terms follow the paper (arXiv 2509.18085, research notes section 2):
- anchor distribution: the block logits that produced the current state. Its still-masked
  positions are ranked by top-1 probability (position rank i) and each position's vocabulary by
  probability (vocabulary rank j); c_ij = the j-th most likely token at the i-th ranked position.
- draft formula (graph node): a set of (i, j) pairs on distinct positions; instantiated, it is
  the current block with those tokens filled in, a guess at the state some steps ahead.
- verification: one forward over [real sequence | D draft copies of the block]. Each copy reuses
  the block's positions and sees what the real block sees, with the real block replaced by
  itself; real rows never see drafts. A copy's rows therefore give p_DD = the logits a plain
  forward at the draft state would give: exactly in block-causal mode or with a dual cache (the
  context is then the same frozen keys and values for real and draft rows), not in full
  bidirectional mode without one (the suffix would attend to the draft).
- acceptance walk (Algorithm 1): draw the next state from p_TD with the baseline's own
  `transition`; if it equals a draft state, that draft's logits are the next p_TD, so step again
  without a forward; stop at the first state no draft matches.

Drafts are never sampled from, only reused when the true transition lands on them, so the state
chain is the baseline's at any temperature. A draft is looked up by its block contents (the
multi-parent lookup in its most general form): the model sees no step index, so any draft with
the same contents has the logits of that state, whichever node it came from.

The graph is a small fixed one (`default_graph`) or calibrated from baseline traces
(`calibration.py`, Algorithm 2); `prune` keeps the D* best nodes per forward (v4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from specdiff.dllm.config import DLLMConfig
from specdiff.dllm.decoding import (DLLMResult, DLLMState, DualCache, block_context, initial_state, model_device,
                                    token_logits, transition)
from specdiff.dllm.model import base_visibility

Formula = frozenset  # frozenset[tuple[int, int]]: (position rank i, vocabulary rank j) pairs


@dataclass
class DraftGraph:
    nodes: list[Formula]  # root (the current state, the empty formula) not included

    def __post_init__(self):
        for q in self.nodes:
            ranks = [i for i, _ in q]
            if not q or len(set(ranks)) != len(ranks) or min(min(p) for p in q) < 0:
                raise ValueError(f"bad draft formula {sorted(q)}: non-empty, distinct position ranks, ranks >= 0")

    def to_json(self, **key) -> str:
        """Nodes as sorted [i, j] lists, with `key` (model, block length, remasking, ...) beside them:
        calibrated graphs are keyed by the decode settings they were measured under."""
        return json.dumps({"key": key, "nodes": [sorted(q) for q in self.nodes]})

    @staticmethod
    def from_json(text: str) -> tuple[DraftGraph, dict]:
        data = json.loads(text)
        return DraftGraph([frozenset(map(tuple, q)) for q in data["nodes"]]), data["key"]

    def parents(self, q: Formula, k: int) -> list[Formula]:
        """Nodes one step of k tokens before q (parent rule, section 2.2): its subsets with k fewer
        pairs, or the root (empty formula) for a first step. A graph node may have several:
        with k = 1, {(0,0),(1,0)} has parents {(0,0)} and {(1,0)}."""
        if len(q) == k:
            return [frozenset()]
        return [p for p in self.nodes if len(p) == len(q) - k and p < q]


def default_graph(tokens_per_step: int, depth: int, alternatives: bool = True) -> DraftGraph:
    """The top-1 chain for `depth` steps of k tokens, plus (if asked) two first-step alternatives:
    the (k+1)-th ranked position instead of the k-th, and the k-th position's second token.

    k = 2: {(0,0),(1,0)} -> {(0,0)..(3,0)} -> ...; alternatives {(0,0),(2,0)}, {(0,0),(1,1)}.
    """
    k = tokens_per_step
    nodes = [frozenset((i, 0) for i in range(level * k)) for level in range(1, depth + 1)]
    if alternatives:
        head = {(i, 0) for i in range(k - 1)}
        nodes += [frozenset(head | {(k, 0)}), frozenset(head | {(k - 1, 1)})]
    return DraftGraph(nodes)


def rank(anchor: torch.Tensor, state: DLLMState, cfg: DLLMConfig,
         depth: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The anchor [m, V]'s ranking of the state's still-masked positions -> (positions [M]: block
    offset of position rank i, tokens [M, J]: token of vocabulary rank j there, probs [M, J]: its
    anchor probability p_ij), J = depth or V. Stable sorts (a formula names one block whatever the
    ties); with a depth, top-k (ties in float64 probabilities only move which draft is tried)."""
    x = state.ids[state.block_slice(cfg)]  # [m]
    masked_pos = (x == cfg.mask_id).nonzero()[:, 0]  # [M]
    probs = token_logits(anchor, cfg).softmax(dim=-1)[masked_pos]  # [M, V]
    order = torch.sort(probs.amax(dim=-1), descending=True, stable=True).indices  # [M] position rank -> row
    if depth is None:
        p, vocab = torch.sort(probs[order], dim=-1, descending=True, stable=True)  # [M, V]
    else:
        p, vocab = torch.topk(probs[order], min(depth, probs.shape[-1]), dim=-1)  # [M, J]
    return masked_pos[order], vocab, p


def instantiate(graph: DraftGraph, anchor: torch.Tensor, state: DLLMState, cfg: DLLMConfig,
                max_drafts: int | None = None) -> torch.Tensor:
    """Draft formulas -> [D, block_length] distinct draft blocks, ranked by the anchor [m, V].

    Kept: formulas whose ranks exist, that leave a mask (a finished block has no next step in
    this block to reuse logits for) and, for fixed schedules, whose size is a whole number of
    steps from state.step (any other size is unreachable). With max_drafts = D*, only the D* best
    by `prune` remain."""
    J = 1 + max((j for q in graph.nodes for _, j in q), default=0)
    positions, tokens, probs = (t.cpu() for t in rank(anchor, state, cfg, J))  # [M], [M, J], [M, J]
    pos, tok = positions.numpy(), tokens.numpy()  # host work in numpy: microseconds per draft
    x = state.ids[state.block_slice(cfg)].cpu().numpy()  # [m]
    if cfg.remasking == "threshold":
        reachable = None
    else:
        reachable, n = set(), 0
        for s in range(state.step, cfg.steps_per_block):
            n += cfg.num_transfer(s)
            reachable.add(n)
    nodes, drafts, seen = [], [], set()
    for q in graph.nodes:
        if max(i for i, _ in q) >= len(pos) or len(q) >= len(pos):
            continue
        if reachable is not None and len(q) not in reachable:
            continue
        i, j = np.array(sorted(q)).T  # [|q|] position ranks, vocabulary ranks
        d = x.copy()
        d[pos[i]] = tok[i, j]
        if d.tobytes() not in seen:
            seen.add(d.tobytes())
            nodes.append(q)
            drafts.append(d)
    if max_drafts is not None and len(nodes) > max_drafts:
        keep = prune(nodes, probs, max_drafts)
        drafts = [drafts[n] for n in keep]
    out = np.stack(drafts) if drafts else np.zeros((0, x.shape[0]), dtype=x.dtype)
    return torch.from_numpy(out).to(state.ids.device)


def prune(nodes: list[Formula], probs: torch.Tensor, keep: int) -> list[int]:
    """Dynamic pruning (v4, [recon]): indices of the `keep` best nodes, connected.

    probs [M, J]: anchor probability of vocabulary rank j at position rank i. A node's local score
    is the geometric mean of its p_ij; its score, the geometric mean of its local score and its
    children's scores (children: the smallest supersets among `nodes`). Best first, a node is
    taken once it is a first step (no subset among nodes) or one of its subsets was taken."""
    def gmean(xs):
        return math.exp(sum(math.log(max(x, 1e-300)) for x in xs) / len(xs))

    local = [gmean([float(probs[i, j]) for i, j in q]) for q in nodes]
    subsets = [[a for a, b in enumerate(nodes) if b < q] for q in nodes]
    children = [[c for c, sub in enumerate(subsets) if a in sub and not any(a in subsets[b] for b in sub)]
                for a in range(len(nodes))]
    score = [0.0] * len(nodes)
    for a in sorted(range(len(nodes)), key=lambda a: -len(nodes[a])):  # children first
        score[a] = gmean([local[a]] + [score[c] for c in children[a]])
    order = sorted(range(len(nodes)), key=lambda a: -score[a])
    kept: list[int] = []
    while len(kept) < keep:
        new = next((a for a in order if a not in kept and (not subsets[a] or any(b in kept for b in subsets[a]))), None)
        if new is None:
            break
        kept.append(new)
    return sorted(kept)


def verify_visibility(visible: torch.Tensor, sl: slice, num_drafts: int) -> torch.Tensor:
    """[L, L] plain-forward mask -> [L + D*m, L + D*m] mask of the verification forward.

    Draft copy d of the block sees the real columns the block sees, minus the real block, plus its
    own copy (with the block's internal pattern). Real rows see real columns only."""
    L = visible.shape[0]
    m = sl.stop - sl.start
    N = L + num_drafts * m
    out = torch.zeros(N, N, dtype=torch.bool, device=visible.device)
    out[:L, :L] = visible
    ctx = visible[sl].clone()  # [m, L]
    ctx[:, sl] = False
    for d in range(num_drafts):
        rows = slice(L + d * m, L + (d + 1) * m)
        out[rows, :L] = ctx
        out[rows, rows] = visible[sl, sl]
    return out


def draft_positions(sl: slice, num_drafts: int) -> torch.Tensor:
    """[D*m] position ids of the draft rows: each copy reuses the RoPE positions of the block."""
    return torch.arange(sl.start, sl.stop).repeat(num_drafts)


def verify_forward(model, state: DLLMState, drafts: torch.Tensor, visible: torch.Tensor,
                   cfg: DLLMConfig, cache: DualCache | None = None,
                   plans: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over [real sequence | drafts [D, m]] -> (p_TD logits [m, V], p_DD [D, m, V]).

    With a dual cache the query is [real block | drafts] against the frozen context instead.
    plans: a per-decode dict that keeps each (block, D)'s mask and positions, built once."""
    sl = state.block_slice(cfg)
    L, (D, m) = state.ids.shape[0], drafts.shape
    dev = state.ids.device
    key = (sl.start, D, cache is not None)  # one dual cache per block: its mask depends on the block only
    if plans is None or key not in plans:
        if cache is not None:
            C = cache.visible.shape[1] - m
            square = torch.ones(C + m, C + m, dtype=torch.bool, device=dev)  # context rows: not queried
            square[C:] = cache.visible
            vis = verify_visibility(square, slice(C, C + m), D)[C:]  # [m + D*m, C + m + D*m]
            first = torch.arange(sl.start, sl.stop)
        else:
            vis = verify_visibility(visible, sl, D)  # [L + D*m, L + D*m]
            first = torch.arange(L)
        plan = vis, torch.cat([first, draft_positions(sl, D)]).to(dev)  # positions [rows]
        if plans is not None:
            plans[key] = plan
    vis, pos = plans[key] if plans is not None else plan
    if cache is not None:
        ids = torch.cat([state.ids[sl], drafts.reshape(-1)])  # [m + D*m]
        logits = model(ids[None], vis[None], pos[None], context=cache.kv)[0]
        return logits[:m], logits[m:].reshape(D, m, logits.shape[-1])
    ids = torch.cat([state.ids, drafts.reshape(-1)])  # [L + D*m]
    logits = model(ids[None], vis[None], pos[None])[0]  # [L + D*m, V]
    return logits[sl], logits[L:].reshape(D, m, logits.shape[-1])


def generate_spiffy(model, prompt_ids: torch.Tensor, cfg: DLLMConfig, graph: DraftGraph,
                    block_causal: bool = True, dual_cache: bool = False, max_drafts: int | None = None) -> DLLMResult:
    """Spiffy decoding: the baseline's state chain in fewer forwards. prompt_ids [P] -> DLLMResult.

    max_drafts = D* < D prunes the graph per forward (`prune`): a narrower verification forward."""
    state = initial_state(prompt_ids, cfg, model_device(model))
    visible = base_visibility(state.prompt_len, cfg.gen_length, cfg.block_length, block_causal)  # [L, L]
    visible = visible.to(state.ids.device)
    trajectory, nfe, accepted, drafted, walks, plans = [state.key()], 0, 0, 0, [], {}
    anchor = None  # [m, V] the logits that produced `state`; None at a block's start
    while state.block < cfg.num_blocks:
        # 1. instantiate the draft graph from the anchor (no anchor yet at a block's start)
        if anchor is None:
            drafts = state.ids.new_zeros(0, cfg.block_length)
        else:
            drafts = instantiate(graph, anchor, state, cfg, max_drafts)  # [D, m]
        drafted += drafts.shape[0]
        # 2. verify: p_TD at the real state and p_DD at every draft, in one forward
        if dual_cache and anchor is None:  # a block's first step refreshes the frozen context
            (p, cache), p_dd = block_context(model, state, visible, cfg), None
        else:
            p, p_dd = verify_forward(model, state, drafts, visible, cfg, cache if dual_cache else None, plans)
        nfe += 1
        table = {d.numpy().tobytes(): n for n, d in enumerate(drafts.cpu())}
        walks.append(0)
        # 3. acceptance walk: step with the baseline's kernel while the new state is a draft
        while True:
            block = state.block
            state, anchor = transition(state, p, cfg), p
            trajectory.append(state.key())
            if state.block != block:
                anchor = None
                break
            n = table.get(state.ids[state.block_slice(cfg)].cpu().numpy().tobytes())
            if n is None:
                break
            p = p_dd[n]
            accepted += 1
            walks[-1] += 1
    return DLLMResult(state.ids[state.prompt_len:], nfe, nfe + accepted, accepted, trajectory, drafted, walks)
