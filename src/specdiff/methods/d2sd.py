"""D²SD: the DFlash chain plus a variable-prefix (VP) drafter's re-drafts of its likely rejection
points, and the two trees built from those candidates.

D²SD (Dual Diffusion Draft Models, §3.3) drafts twice per round:

1. The DFlash drafter drafts L = γ-1 slots after the root; t_k is slot k's argmax and c_k its
   probability (max softmax at T=1), read as P(t_k accepted | t_1..t_{k-1} accepted).
2. Under that reading, exactly i DFlash tokens are accepted with probability

       r(i) = c_1 ... c_i (1 - c_{i+1}),    i = 0 .. L-1

   and the K most likely i (`branches`) are the prefix lengths worth re-drafting.
3. The VP (variable-prefix) drafter re-drafts them in one batched pass: row i is
   [root, t_1..t_i, MASK x (L-i)], and its masked slots are filled with the VP argmax.

`build_d2sd_tree`: the paper verifies the K+1 candidates as (K+1)·γ separate rows; here they are
merged into one trie (shared prefixes stored once, children unique by token). Every branch
shares the root and branch i shares t_1..t_i with the chain, so the trie is always smaller.

`build_d2sd_hybrid` (ours, beyond the paper): the VP branches join DDTree's best-first tree under
one node budget. Every candidate node v is scored by an estimate of P(v is accepted):
  - DDTree's nodes (prefixes of the DFlash marginals q_k): prod_k q_k(x_k) along v's path;
  - VP branch i's node at depth d: r(i) · prod_{k=i+1..d} p_VP,k(x_k), the probability that
    exactly i DFlash tokens survive times the VP drafter's confidence in its own fills up to v
    (its first i nodes, the DFlash prefix, score r(i));
a node proposed by several sources keeps its best score. The tree is the `budget` best nodes,
inserted best-first with any missing ancestors first (scores never rise along a path, so the
ancestors are already in), deduplicated by (parent, token). Scores are kept as logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from specdiff.methods.base import DecodeState, Drafter
from specdiff.methods.ddtree import best_first_prefixes, best_nodes_tree, top_k_marginals
from specdiff.methods.dflash import DFlashProposer
from specdiff.ops import read_together
from specdiff.types import DraftProposal, DraftTree


@dataclass(frozen=True)
class BranchSelection:
    """The top-K prefix lengths i by r(i), increasing; branch j keeps `prefix_lens[j]` DFlash tokens."""

    prefix_lens: list[int]
    r: list[float]  # r(i) of each selected i

    @property
    def num_branches(self) -> int:
        return len(self.prefix_lens)


@dataclass(frozen=True)
class D2SDCandidates:
    """One round's candidates: the DFlash chain and the VP branches, all rooted at `root`.

    Example (L = 4, branches at i = 0 and 2)::

        chain       = [a, b, c, d]
        branches    = [[e, f, g, h], [a, b, x, y]]      # branch i = chain[:i] + VP fills
        branch_logp = [[log p(e), .., log p(h)], [log p(x), log p(y)]]   # fills only
    """

    root: int
    chain: list[int]  # DFlash argmax, slots 1..L
    selection: BranchSelection
    branches: list[list[int]]  # [K][L]
    branch_logp: list[list[float]]  # [K][L - i]: VP log-probs of the filled tokens

    @property
    def rows(self) -> int:
        """Tokens the paper verifies: K+1 separate rows of γ = L+1 (root included)."""
        return (len(self.branches) + 1) * (len(self.chain) + 1)


def acceptance_profile(confidences: list[float]) -> list[float]:
    """r(i) = c_1..c_i (1 - c_{i+1}) for i = 0 .. L-1, from the L slot confidences c_1..c_L."""
    r, alive = [], 1.0
    for c in confidences:
        r.append(alive * (1.0 - c))
        alive *= c
    return r


def select_branches(confidences: list[float], branches: int) -> BranchSelection:
    """The `branches` values of i with the largest r(i) (ties: smaller i), sorted by i."""
    r = acceptance_profile(confidences)
    top = sorted(sorted(range(len(r)), key=lambda i: -r[i])[: max(0, branches)])
    return BranchSelection(prefix_lens=top, r=[r[i] for i in top])


def branch_rows(root: int, chain: list[int], selection: BranchSelection, mask_id: int,
                slots: int | None = None) -> torch.Tensor:
    """The VP drafter's input: row j = [root, t_1..t_i, MASK x (S-i)] for i = prefix_lens[j] -> [K, S+1],
    S = `slots` (None: L = len(chain); more: whole blocks where the round drafts fewer slots)."""
    slots = len(chain) if slots is None else slots
    rows = torch.full((selection.num_branches, slots + 1), mask_id, dtype=torch.long)
    rows[:, 0] = root
    for j, i in enumerate(selection.prefix_lens):
        rows[j, 1 : i + 1] = torch.tensor(chain[:i], dtype=torch.long)
    return rows


def fill_branches(root: int, chain: list[int], selection: BranchSelection, vp_logits: torch.Tensor) -> D2SDCandidates:
    """Fill each row's masked slots with the VP argmax. vp_logits: [K, L, V] (slot k at index k-1)."""
    logp = torch.log_softmax(vp_logits.float(), dim=-1)
    best, ids = logp.max(dim=-1)  # [K, L]
    host = read_together(best, ids)
    best, ids = host[0].tolist(), host[1].long().tolist()
    branches, branch_logp = [], []
    for j, i in enumerate(selection.prefix_lens):
        branches.append(chain[:i] + ids[j][i:])
        branch_logp.append(best[j][i:])
    return D2SDCandidates(root, list(chain), selection, branches, branch_logp)


def merge_paths(root: int, paths: list[list[int]], candidate_rows: int | None = None) -> DraftTree:
    """The trie of `paths` (token lists after the root): one node per distinct prefix, in insertion
    order (parents first)."""
    tokens, parents = [root], [-1]
    index: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for path in paths:
        node = 0
        for t in path:
            child = index.get((node, t))
            if child is None:
                child = len(tokens)
                index[(node, t)] = child
                tokens.append(t)
                parents.append(node)
            node = child
    tree = DraftTree.from_lists(tokens, parents)
    return DraftTree(tree.tokens, tree.parents, tree.depths, candidate_rows=candidate_rows)


def build_d2sd_tree(cands: D2SDCandidates) -> DraftTree:
    """D²SD's K+1 candidates as one trie; `candidate_rows` records the paper's (K+1)·γ."""
    return merge_paths(cands.root, [cands.chain, *cands.branches], candidate_rows=cands.rows)


def hybrid_scores(cands: D2SDCandidates, proposal: DraftProposal, budget: int) -> dict[tuple[int, ...], float]:
    """Every candidate node (its token path) -> log score (module docstring): DDTree's top
    `budget` prefixes of the DFlash marginals, and every node of every VP branch."""
    depth = len(cands.chain)
    scores: dict[tuple[int, ...], float] = {}

    def offer(path: tuple[int, ...], score: float) -> None:
        if score > scores.get(path, -math.inf):
            scores[path] = score

    top_logp, top_ids = top_k_marginals(proposal, budget, depth)
    paths: list[tuple[int, ...]] = [()]  # DDTree pops, by node index (0 = root)
    for parent, rank, score in best_first_prefixes(top_logp, budget):
        path = paths[parent] + (top_ids[len(paths[parent])][rank],)
        paths.append(path)
        offer(path, score)
    for i, r, branch, logp in zip(cands.selection.prefix_lens, cands.selection.r, cands.branches, cands.branch_logp):
        score = math.log(max(r, 1e-30))
        for d in range(1, depth + 1):
            if d > i:
                score += logp[d - i - 1]
            offer(tuple(branch[:d]), score)
    return scores


def build_d2sd_hybrid(cands: D2SDCandidates, proposal: DraftProposal, budget: int) -> DraftTree:
    """The `budget` best-scoring candidate nodes as one prefix-closed tree (module docstring)."""
    return best_nodes_tree(cands.root, hybrid_scores(cands, proposal, budget), budget)


class D2SDProposer(DFlashProposer):
    """The DFlash drafter's chain, then the VP drafter re-drafts the K most likely accepted
    prefixes in one batched pass. Both drafters tap the same target layers and keep their own
    context caches, fed the same committed features.

    hybrid=False ("d2sd"): the K+1 candidates merged into one trie (the paper's method);
    hybrid=True ("d2sd-hybrid"): the VP branches compete with DDTree's nodes for `budget` nodes."""

    drafts_on_device = False  # both drafters take the committed features; the re-draft reads the chain

    def __init__(self, drafter: Drafter, vp_drafter: Drafter, branches: int = 4, hybrid: bool = False,
                 budget: int = 64, block_size: int | None = None):
        super().__init__(drafter, block_size)
        self.name = "d2sd-hybrid" if hybrid else "d2sd"
        self.vp_drafter, self.branches, self.hybrid, self.budget = vp_drafter, branches, hybrid, budget
        # worst case for the trie: K+1 rows that share nothing but the root
        self.max_nodes = 1 + (budget if hybrid else (branches + 1) * self.num_slots)

    @property
    def drafters(self) -> tuple[Drafter, ...]:
        return (self.drafter, self.vp_drafter)

    def build(self, state: DecodeState, proposal: DraftProposal, depth: int) -> DraftTree:
        logits = proposal.logits  # [L, V]  1. the first draft (DFlash)
        # the chain and its confidences in one read
        host = read_together(logits.argmax(dim=-1), torch.softmax(logits.float(), dim=-1).amax(dim=-1))
        chain, confidences = host[0].long().tolist(), host[1].tolist()
        selection = select_branches(confidences, self.branches)  # 2. top-K prefixes by r(i)
        # whole blocks, as the DFlash drafter drafts them, also where a decode's last rounds keep
        # fewer slots: the VP drafter's graph takes whole blocks only (a shorter row ran eagerly,
        # 1.4-1.7x a round's profiled cost at the 8B stand-in), and the fills of the kept slots
        # then see the same masked block on every engine
        rows = branch_rows(state.root, chain, selection, self.vp_drafter.spec.mask_token_id, self.num_slots)
        vp_logits = self.vp_drafter.draft_rows(rows)[:, :depth]  # [K, L, V]  3. the second draft (VP)
        cands = fill_branches(state.root, chain, selection, vp_logits)
        if self.hybrid:
            return build_d2sd_hybrid(cands, proposal, self.budget)
        return build_d2sd_tree(cands)


def make_proposer(cfg, target=None, drafter=None, vp_drafter=None, profile=None, native=None) -> D2SDProposer:
    return D2SDProposer(drafter, vp_drafter, cfg.d2sd.branches, cfg.method == "d2sd-hybrid", cfg.budget,
                        cfg.block_size)
