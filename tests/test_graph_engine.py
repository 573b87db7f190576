"""The graph engine's bucketed, padded forwards (run eagerly here, replayed as CUDA graphs on a
GPU) against the plain static target and the plain drafter."""

import pytest
import torch

from specdiff.drafters.graphed import GraphedDrafter
from specdiff.models.tiny import tiny_drafter
from specdiff.target import StaticTarget
from specdiff.target.graphed import GraphedTarget, bucket_for
from specdiff.types import DraftTree

from test_target import path_to, random_tree


@pytest.mark.parametrize("seed", range(2))
def test_graph_target_equals_static(target_model, seed):
    """Padded buckets (14 -> 16, 3 -> 4, 37 -> 48 nodes) give the plain forward's logits and taps,
    and the cache after a commit is the same (the next forward agrees)."""
    g = torch.Generator().manual_seed(300 + seed)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (11,), generator=g).tolist()
    trees = [random_tree(14, vocab, g), DraftTree.chain(5, [6, 7]), random_tree(37, vocab, g)]
    leaves = [int(torch.randint(1, t.num_nodes, (1,), generator=g)) for t in trees]
    outs = []
    for t in (StaticTarget(target_model, tap_layers=[0, 2]), GraphedTarget(target_model, [0, 2], use_graphs=False)):
        t.reset(120)
        res = [t.prefill(prompt)]
        for tree, leaf in zip(trees, leaves):
            res.append(t.forward(tree))
            res[-1] = type(res[-1])(res[-1].logits.clone(), res[-1].features.clone())
            t.commit(path_to(tree, leaf))
        outs.append(res)
    assert bucket_for(14) == 16 and bucket_for(37) == 48
    for a, b in zip(*outs):
        assert a.logits.shape == b.logits.shape
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=1e-4)


def test_graph_drafter_equals_eager(qwen3_model):
    """Context extension fused into the draft (features padded to a block) gives the eager
    drafter's logits round after round."""
    g = torch.Generator().manual_seed(7)
    emb, head = qwen3_model.get_input_embeddings(), qwen3_model.get_output_embeddings()
    plain = tiny_drafter(qwen3_model, block_size=8)
    plain.bind(emb, head)
    graphed = GraphedDrafter(tiny_drafter(qwen3_model, block_size=8), use_graphs=False)
    graphed.inner.load_state_dict(plain.state_dict())
    graphed.bind(emb, head)
    feat_dim = plain.fc.in_features
    prompt_feats = torch.randn(20, feat_dim, generator=g)
    plain.reset(64)
    graphed.reset(64)
    plain.extend_context(prompt_feats)
    graphed.extend_context(prompt_feats)
    for n, root, slots in [(0, 3, 7), (3, 9, 7), (8, 4, 5), (1, 11, 7)]:
        feats = torch.randn(n, feat_dim, generator=g)
        plain.extend_context(feats)
        graphed.extend_context(feats)
        a, b = plain.draft(root, slots), graphed.draft(root, slots)
        assert a.shape == b.shape == (slots, qwen3_model.config.vocab_size)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert graphed.inner.ctx_len == plain.ctx_len
