"""Target adapter: tree forwards match linear decoding, and commit leaves the cache as if the
accepted path had been decoded linearly."""

import pytest
import torch

from specdiff.target import HFTarget
from specdiff.types import DraftTree


def random_tree(n: int, vocab: int, g: torch.Generator) -> DraftTree:
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    tokens = torch.randint(0, vocab, (n,), generator=g).tolist()
    return DraftTree.from_lists(tokens, parents)


def path_to(tree: DraftTree, node: int) -> list[int]:
    parents = tree.parents.tolist()
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


@pytest.mark.parametrize("seed", range(3))
def test_tree_logits_equal_linear(target_model, seed):
    g = torch.Generator().manual_seed(seed)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (9,), generator=g).tolist()
    tree = random_tree(12, vocab, g)
    t = HFTarget(target_model, tap_layers=[0, 2])
    t.reset(64)
    t.prefill(prompt)
    out = t.forward(tree)
    assert out.logits.shape == (12, vocab) and out.features.shape == (12, 2 * t.hidden_size)
    toks = tree.tokens.tolist()
    for node in range(tree.num_nodes):
        seq = prompt + [toks[i] for i in path_to(tree, node)]
        with torch.inference_mode():
            ref = target_model(torch.tensor([seq]), output_hidden_states=True)
        torch.testing.assert_close(out.logits[node], ref.logits[0, -1], atol=1e-4, rtol=1e-4)
        # taps are decoder-layer outputs: hidden_states[i + 1]
        torch.testing.assert_close(out.features[node, : t.hidden_size], ref.hidden_states[1][0, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_commit_equals_linear_decode(target_model, seed):
    g = torch.Generator().manual_seed(100 + seed)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (7,), generator=g).tolist()
    tree = random_tree(15, vocab, g)
    leaf = int(torch.randint(1, 15, (1,), generator=g))
    accepted = path_to(tree, leaf)
    toks = tree.tokens.tolist()

    spec = HFTarget(target_model)
    spec.reset(48)
    spec.prefill(prompt)
    spec.forward(tree)
    spec.commit(accepted)

    lin = HFTarget(target_model)
    lin.reset(48)
    lin.prefill(prompt + [toks[i] for i in accepted])

    assert spec.length == lin.length == len(prompt) + len(accepted)
    n = spec.length
    for a, b in zip(spec.cache.layers, lin.cache.layers):
        torch.testing.assert_close(a.keys[:, :, :n], b.keys[:, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values[:, :, :n], b.values[:, :, :n], atol=1e-5, rtol=1e-5)
    # and the next forward sees the same context
    nxt = DraftTree.chain(3, [4, 5])
    torch.testing.assert_close(spec.forward(nxt).logits, lin.forward(nxt).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", range(2))
def test_static_engine_equals_hf(target_model, seed):
    """The fast-path forward (own static cache, same weights) matches the HF forward: logits and
    taps over a random tree, then the same cache after commit."""
    from specdiff.target import StaticTarget

    g = torch.Generator().manual_seed(200 + seed)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (9,), generator=g).tolist()
    tree = random_tree(14, vocab, g)
    leaf = int(torch.randint(1, 14, (1,), generator=g))
    outs = []
    for cls in (HFTarget, StaticTarget):
        t = cls(target_model, tap_layers=[1, 3])
        t.reset(48)
        pre = t.prefill(prompt)
        out = t.forward(tree)
        t.commit(path_to(tree, leaf))
        nxt = t.forward(DraftTree.chain(5, [6, 7]))
        outs.append((pre, out, nxt))
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=1e-4)
