"""Offline calibration of Spiffy's draft graph (Algorithm 2, reconstructed from the notes 2.6).

1. Decode with the baseline on a few prompts, recording every step's (state, block logits).
2. Rewind: at each state X_t of a block, with anchor q = the logits that produced X_t, express
   each later state X_{t+l} of the same block (l = 1, 2, ...; the block's last state excluded,
   as `instantiate` excludes it) as the draft formula that instantiates to it: the (position
   rank i, vocabulary rank j) pairs of its new tokens under q. count(formula) = how often a draft
   with that formula would have been accepted.
3. Choose D connected nodes by degree-1 accumulation: greedily add the node with the largest
   gain count(q) + sum of count(p) over its chosen parents p (+ count(q) per chosen child), among
   nodes whose parent is the root or already chosen.

Or (`search`, ours, not the paper's): since the baseline's trajectory does not depend on the graph
(keyed noise), Spiffy's NFE with any graph can be replayed exactly from the traces (`replay_nfe`);
add, one at a time, the node that lowers the replayed NFE most. On the bundled dLLM this also takes
first-step alternatives ({(1,0)}, {(0,1)}) that degree-1 accumulation never reaches
(docs/methods/spiffy.md).
"""

from __future__ import annotations

from collections import Counter

import torch

from specdiff.dllm.config import DLLMConfig
from specdiff.dllm.decoding import DLLMState
from specdiff.dllm.spiffy import DraftGraph, Formula, rank


def formula_of(anchor: torch.Tensor, state: DLLMState, future: torch.Tensor, cfg: DLLMConfig,
               ranking: tuple[torch.Tensor, ...] | None = None) -> Formula:
    """The draft formula that instantiates, from (anchor [m, V], state), to the block `future` [m].
    ranking: `rank(anchor, state, cfg)`, when the caller already has it."""
    positions, tokens, _ = ranking if ranking is not None else rank(anchor, state, cfg)  # [M], [M, V]
    x = state.ids[state.block_slice(cfg)]
    new = (future != x).cpu()[positions.cpu()]  # [M] by position rank
    idx = new.nonzero()[:, 0]  # position ranks i whose token was committed
    j = (tokens[idx] == future[positions[idx]][:, None]).int().argmax(dim=-1)  # vocabulary rank of that token
    return frozenset(zip(idx.tolist(), j.tolist()))


Walks = list[list[list[Formula] | None]]  # per block, per state: formulas of its next states


def futures(trace: list[tuple[DLLMState, torch.Tensor]], cfg: DLLMConfig, depth: int) -> Walks:
    """Baseline trace [(state, logits)] -> per block, per state: the formulas, under the state's
    anchor, of the block's next `depth` states (None for a block's first state: no anchor)."""
    blocks: Walks = []
    for t, (state, _) in enumerate(trace):
        if t == 0 or state.block != trace[t - 1][0].block:
            blocks.append([None])  # a block's first state has no anchor: Spiffy drafts nothing there
            continue
        anchor = trace[t - 1][1]
        ranking, formulas = rank(anchor, state, cfg), []
        for level in range(1, depth + 1):
            if t + level >= len(trace) or trace[t + level][0].block != state.block:
                break  # the block's last state is never drafted
            future = trace[t + level][0].ids[state.block_slice(cfg)]
            formulas.append(formula_of(anchor, state, future, cfg, ranking))
        blocks[-1].append(formulas)
    return blocks


def rewind(trace: list[tuple[DLLMState, torch.Tensor]], cfg: DLLMConfig, depth: int) -> Counter:
    """Baseline trace [(state, logits)] -> Counter {(formula, level): times it would be accepted}."""
    return counts_of(futures(trace, cfg, depth))


def counts_of(walks: Walks) -> Counter:
    counts: Counter = Counter()
    for states in walks:
        for formulas in states[1:]:
            for level, q in enumerate(formulas, 1):
                counts[q, level] += 1
    return counts


def replay_nfe(walks: Walks, nodes: set) -> int:
    """Spiffy's forwards over the traced blocks with graph `nodes`: a forward at state s accepts
    states s+1, s+2, ... while each one's formula is a node (exact: the trajectory is fixed)."""
    nfe = 0
    for states in walks:
        s = 0
        while s < len(states):
            nfe += 1
            accepted = 0
            for q in states[s] or ():
                if q not in nodes:
                    break
                accepted += 1
            s += 1 + accepted
    return nfe


def search(walks: Walks, budget: int, pool: int = 300) -> DraftGraph:
    """Up to `budget` nodes, each the one among the `pool` commonest formulas that lowers
    `replay_nfe` most (ties: the commoner); stops when no node helps."""
    count: Counter = Counter()
    for (q, _), c in counts_of(walks).items():
        count[q] += c
    candidates = [q for q, _ in count.most_common(pool)]
    chosen: list[Formula] = []
    nfe = replay_nfe(walks, set())
    while len(chosen) < budget:
        trials = [(replay_nfe(walks, {*chosen, q}), n, q) for n, q in enumerate(candidates) if q not in chosen]
        if not trials or min(trials)[0] >= nfe:
            break
        nfe, _, best = min(trials)
        chosen.append(best)
    return DraftGraph(chosen)


def calibrate(counts: Counter, budget: int, pool: int = 2000) -> DraftGraph:
    """Degree-1 accumulation with a connectivity constraint -> a graph of at most `budget` nodes.

    Only the `pool` most frequent formulas compete (long traces give thousands of one-off deep
    formulas); parent lists are built once, within adjacent levels."""
    count: Counter = Counter()
    for (q, _), c in counts.items():
        count[q] += c
    level = {q: lv for (q, lv), _ in sorted(counts.items(), key=lambda kv: kv[1])}  # the commonest level wins
    candidates = [q for q, _ in count.most_common(pool)]
    by_level: dict[int, list[Formula]] = {}
    for q in candidates:
        by_level.setdefault(level[q], []).append(q)
    parents = {q: [p for p in by_level.get(level[q] - 1, []) if p < q] for q in candidates}

    chosen: list[Formula] = []
    while len(chosen) < budget:
        best, best_gain = None, 0
        for q in candidates:
            if q in chosen or not (level[q] == 1 or any(p in chosen for p in parents[q])):
                continue
            gain = count[q] + sum(count[p] for p in parents[q] if p in chosen)
            gain += count[q] * sum(1 for c in chosen if q in parents[c])
            if gain > best_gain:
                best, best_gain = q, gain
        if best is None:
            break
        chosen.append(best)
    return DraftGraph(chosen)
