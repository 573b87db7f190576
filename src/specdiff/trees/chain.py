"""DFlash's tree: one chain holding the argmax of every draft slot."""

from __future__ import annotations

from specdiff.types import DraftProposal, DraftTree


def build_chain(root: int, proposal: DraftProposal, max_depth: int) -> DraftTree:
    """Argmax at each slot, up to `max_depth` draft tokens (the proposal's temperature is 1)."""
    depth = min(max_depth, proposal.logits.shape[0])
    draft = proposal.logits[:depth].argmax(dim=-1).tolist() if depth > 0 else []
    return DraftTree.chain(root, draft)
