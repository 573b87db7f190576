"""The graph engine's bucketed, padded forwards (run eagerly here, replayed as CUDA graphs on a
GPU) against the plain static target and the plain drafter."""

import dataclasses

import numpy as np
import pytest
import torch

from specdiff import native
from specdiff.bench.speed import count_syncs
from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.engine import build_decoder
from specdiff.drafters.graphed import GraphedDrafter, GraphedVPDrafter
from specdiff.methods.dflash import build_chain
from specdiff.models.tiny import tiny_drafter, tiny_target
from specdiff.target import StaticTarget
from specdiff.target.graphed import GraphedTarget, alloc_for, bucket_for, span_for, spans_up_to
from specdiff.types import DraftProposal, DraftTree
from specdiff.verify import verify_walk

from test_target import path_to, random_tree

NATIVE = native.load()  # the C masks and search where they build, as a decoder has them
# the device search's kernel on these CPU models runs only under Triton's interpreter, which a
# machine with a GPU does not start (`test_a_graph_engine_round_reads_the_device_once` runs it there)
on_the_interpreter = pytest.mark.skipif(torch.cuda.is_available(),
                                        reason="a CPU model's device search needs Triton's interpreter")


@pytest.mark.parametrize("seed,prompt_len", [(0, 11), (1, 11), (2, 240)])
def test_graph_target_equals_static(target_model, seed, prompt_len):
    """Padded buckets (14 -> 16, 3 -> 4, 37 -> 48 nodes) give the plain forward's logits and taps,
    and the cache after a commit is the same (the next forward agrees). The long prompt moves the
    attention span from the smallest bucket (256 slots) to the next."""
    g = torch.Generator().manual_seed(300 + seed)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (prompt_len,), generator=g).tolist()
    trees = [random_tree(14, vocab, g), DraftTree.chain(5, [6, 7]), random_tree(37, vocab, g)]
    leaves = [int(torch.randint(1, t.num_nodes, (1,), generator=g)) for t in trees]
    outs = []
    for t in (StaticTarget(target_model, tap_layers=[0, 2], native=NATIVE),
              GraphedTarget(target_model, [0, 2], use_graphs=False, native=NATIVE)):
        t.reset(prompt_len + 120)
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


def test_the_commit_moves_the_paths_cache_as_the_eager_commit_does(qwen3_model):
    """The graph engine's commit (the moves copied in, one launch moving every layer's K/V) leaves
    the committed slots bitwise as `StaticTarget.commit` does: paths that jump over nodes, a
    prefix (nothing moves), and a path longer than the moves hold (the eager commit)."""
    from specdiff.target.graphed import COMMIT_ROWS

    g = torch.Generator().manual_seed(5)
    vocab = qwen3_model.config.vocab_size
    prompt = torch.randint(0, vocab, (9,), generator=g).tolist()
    long_chain = DraftTree.chain(3, torch.randint(0, vocab, (COMMIT_ROWS + 3,), generator=g).tolist())
    rounds = [(random_tree(30, vocab, g), None), (random_tree(12, vocab, g), [0, 1, 2]),
              (long_chain, list(range(COMMIT_ROWS + 4))), (random_tree(40, vocab, g), None)]
    rounds = [(t, path or path_to(t, t.num_nodes - 1)) for t, path in rounds]
    assert any(p != list(range(len(p))) for _, p in rounds)  # a path that moves
    caches = []
    # two graph targets, one committing as `StaticTarget.commit` does: their forwards run the same
    # buckets, so the caches differ only by the commit (a plain target's unpadded forwards round
    # differently from the padded buckets on some CPUs' BLAS)
    eager = GraphedTarget(qwen3_model, use_graphs=False, native=NATIVE)
    eager.commit = lambda path: StaticTarget.commit(eager, path)
    for t in (eager, GraphedTarget(qwen3_model, use_graphs=False, native=NATIVE)):
        t.reset(200)
        t.prefill(prompt)
        for tree, path in rounds:
            t.forward(tree)
            t.commit(path)
        caches.append((t.length, t.k[:, :, :, : t.length].clone(), t.v[:, :, :, : t.length].clone()))
    (n_a, k_a, v_a), (n_b, k_b, v_b) = caches
    assert n_a == n_b and torch.equal(k_a, k_b) and torch.equal(v_a, v_b)


def plain_and_graphed(model, wrap, prompt_len, g):
    """An eager drafter and a graphed copy of it, both holding the same prompt context."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    plain = tiny_drafter(model, block_size=8)
    with torch.no_grad():  # norms off their ones: a step that kept the old weights would differ
        for p in plain.parameters():
            if p.dim() == 1:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    plain.bind(emb, head)
    # built on other weights, then given plain's: what the graphed step keeps must follow a load
    graphed = wrap(tiny_drafter(model, block_size=8, seed=2))
    graphed.inner.load_state_dict(plain.state_dict())
    graphed.bind(emb, head)
    prompt_feats = torch.randn(prompt_len, plain.fc.in_features, generator=g)
    for d in (plain, graphed):
        d.reset(prompt_len + 64)
        d.extend_context(prompt_feats)
    return plain, graphed


@pytest.mark.parametrize("prompt_len", [20, 250])
def test_graph_drafter_equals_eager(qwen3_model, prompt_len):
    """Context extension fused into the draft (features padded to a block) gives the eager
    drafter's logits round after round, also when the context outgrows the first span bucket."""
    g = torch.Generator().manual_seed(7)
    plain, graphed = plain_and_graphed(qwen3_model, lambda d: GraphedDrafter(d, use_graphs=False), prompt_len, g)
    for n, root, slots in [(0, 3, 7), (3, 9, 7), (8, 4, 5), (1, 11, 7)]:
        feats = torch.randn(n, plain.fc.in_features, generator=g)
        plain.extend_context(feats)
        graphed.extend_context(feats)
        a, b = plain.draft(root, slots), graphed.draft(root, slots)
        assert a.shape == b.shape == (slots, qwen3_model.config.vocab_size)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert graphed.inner.ctx_len == plain.ctx_len


@pytest.mark.parametrize("prompt_len,branches", [(20, 1), (245, 3)])
def test_graph_vp_drafter_equals_eager(qwen3_model, prompt_len, branches):
    """D²SD's VP pass with the context extension fused in, padded to `branches` rows over a
    masked span bucket, gives the eager `draft_rows` logits round after round (as many rows as
    `branches` or fewer; the long prompt crosses the 256-slot bucket); a row shorter than a block
    takes the eager path."""
    g = torch.Generator().manual_seed(8)
    plain, graphed = plain_and_graphed(qwen3_model, lambda d: GraphedVPDrafter(d, branches, use_graphs=False),
                                       prompt_len, g)
    mask, vocab = plain.spec.mask_token_id, qwen3_model.config.vocab_size
    for n, k, width in [(0, 1, 8), (3, branches, 8), (8, 1, 8), (5, branches, 8), (2, 1, 5)]:
        feats = torch.randn(n, plain.fc.in_features, generator=g)
        rows = torch.randint(0, vocab, (k, width), generator=g)
        rows[:, 1:] = torch.where(torch.rand(k, width - 1, generator=g) < 0.5, mask, rows[:, 1:])
        plain.extend_context(feats)
        graphed.extend_context(feats)
        a, b = plain.draft_rows(rows), graphed.draft_rows(rows)
        assert a.shape == b.shape == (k, width - 1, vocab)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert graphed.inner.ctx_len == plain.ctx_len


def test_span_and_alloc_buckets():
    assert [span_for(n, 4096) for n in (1, 256, 257, 600, 1500)] == [256, 256, 512, 1024, 2048]
    assert span_for(5000, 4096) == 4096
    assert [alloc_for(n, 1024) for n in (10, 1024, 1025, 3000)] == [1024, 1024, 2048, 4096]
    assert spans_up_to(600, 4096) == [256, 512, 1024] and spans_up_to(5000, 2048) == [256, 512, 1024, 2048]


def test_prepare_covers_every_bucket_a_decode_uses(target_model):
    """After `prepare`, forwards of any tree up to the cap at any context up to the prepared
    length find their (node, span) bucket ready: nothing is allocated or captured while timed."""
    t = GraphedTarget(target_model, use_graphs=False, native=NATIVE)
    t.prepare(max_len=300 + 60, max_nodes=60)
    ready, alloc = set(t._buckets), t.max_len
    g = torch.Generator().manual_seed(5)
    vocab = target_model.config.vocab_size
    for prompt_len in (3, 200, 300):
        t.reset(prompt_len + 60)
        t.length = prompt_len
        for n in (1, 7, 33, 60):
            t.forward(random_tree(n, vocab, g))
    assert set(t._buckets) == ready and t.max_len == alloc


def test_the_largest_tree_runs_in_a_bucket_of_its_own(target_model, monkeypatch):
    """A ddtree@64 tree (65 nodes) runs in a 65-node bucket, not padded to 96, with the plain
    forward's logits; smaller trees keep the buckets they had, and without FULL_TREE_BUCKET the
    tree pads as before."""
    from specdiff.target import graphed

    g = torch.Generator().manual_seed(8)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (20,), generator=g).tolist()
    tree = random_tree(65, vocab, g)
    outs = []
    for t in (StaticTarget(target_model, tap_layers=[0, 2], native=NATIVE),
              GraphedTarget(target_model, [0, 2], use_graphs=False, native=NATIVE)):
        t.prepare(len(prompt) + 80, 65) if isinstance(t, GraphedTarget) else t.reset(len(prompt) + 80)
        t.prefill(prompt)
        outs.append(t.forward(tree))
    torch.testing.assert_close(outs[0].logits, outs[1].logits, atol=1e-4, rtol=1e-4)
    assert [t._node_bucket(n) for n in (65, 64, 50, 66, 16)] == [65, 64, 64, 96, 16]
    assert {nb for nb, _ in t._buckets} >= {65, 96}  # prepared: the tree's own and the buckets up to it
    monkeypatch.setattr(graphed, "FULL_TREE_BUCKET", False)
    t = GraphedTarget(target_model, [0, 2], use_graphs=False, native=NATIVE)
    t.prepare(len(prompt) + 80, 65)
    assert t._node_bucket(65) == 96 and 65 not in {nb for nb, _ in t._buckets}


def test_graph_drafter_takes_the_top_candidates_the_host_search_needs(qwen3_model):
    """The candidates taken inside the drafter's step equal an eager top-k of its logits, and
    DDTree's tree from them is the tree from the logits."""
    from specdiff.methods.ddtree import build_ddtree, top_k_tensors
    from specdiff.types import DraftProposal

    g = torch.Generator().manual_seed(3)
    _, graphed = plain_and_graphed(qwen3_model, lambda d: GraphedDrafter(d, use_graphs=False), 20, g)
    assert graphed.enable_candidates(32) == 32
    assert graphed.enable_candidates(10 ** 9) == 0  # past the vocabulary
    graphed.enable_candidates(32)
    slots = graphed.block_size - 1
    proposal = graphed.propose(5, slots)
    logits = proposal.logits
    top_logp, top_ids = proposal.candidates
    ref_logp, ref_ids = top_k_tensors(DraftProposal(logits), 32, slots)
    assert torch.equal(top_ids, ref_ids) and torch.equal(top_logp, ref_logp)
    assert graphed.propose(5, slots - 2).candidates is None  # taken over all the slots, not fewer
    a = build_ddtree(5, DraftProposal(logits, candidates=(top_logp, top_ids)), 32, slots, native=NATIVE)
    b = build_ddtree(5, DraftProposal(logits), 32, slots, native=NATIVE)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)


def verified(target, tree: DraftTree, prompt: list[int], sampling: SamplingConfig):
    """(logits, [(accepted, tokens)] of the C and Python walks) of `tree` after `prompt`."""
    target.reset(96)
    target.prefill(prompt[:-1])
    out = target.forward(tree)
    walks = [verify_walk(tree, out.logits, len(prompt) - 1, sampling, native=n) for n in (NATIVE, None)]
    return out.logits.clone(), [(w.accepted, w.tokens) for w in walks]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_chain_drafted_on_the_device_is_read_back_with_the_draws(target_model, temperature):
    """A DFlash chain keeps the drafter's argmax tensor (`drafted`): the graph engine's forward
    copies it on the device and the walk reads it back with its draws. Logits, accepted nodes
    and tokens equal those of the same chain built on the host (C and Python walks)."""
    g = torch.Generator().manual_seed(7)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (11,), generator=g).tolist()
    logits = torch.randn(6, vocab, generator=g)
    drafted = build_chain(prompt[-1], DraftProposal(logits), 6)
    host = DraftTree.chain(prompt[-1], logits.argmax(-1).tolist())
    assert drafted.drafted and not host.drafted and torch.equal(drafted.tokens, host.tokens)
    sampling = SamplingConfig(temperature=temperature, seed=3)
    got = [verified(GraphedTarget(target_model, use_graphs=False, native=NATIVE), tree, prompt, sampling)
           for tree in (host, drafted)]
    assert torch.equal(got[0][0], got[1][0]) and got[0][1] == got[1][1]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_tree_searched_on_the_device_is_read_back_with_the_draws(target_model, temperature):
    """A DDTree tree left on the device (`resident`: tokens, parents and depths device tensors) is
    turned into the graph engine's inputs there, and the walk reads it back with its draws. Logits,
    accepted nodes and tokens equal those of the same tree on the host (C and Python walks); the
    static engine, which plans on the host, reads it first and agrees too."""
    g = torch.Generator().manual_seed(11)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (11,), generator=g).tolist()
    host = random_tree(37, vocab, g)
    resident = DraftTree(host.tokens.clone(), host.parents.clone(), host.depths.clone(), drafted=True,
                         resident=True, depth_bound=int(host.depths.max()) + 2)
    sampling = SamplingConfig(temperature=temperature, seed=3)
    graphed = lambda: GraphedTarget(target_model, use_graphs=False, native=NATIVE)  # noqa: E731
    got = [verified(target, tree, prompt, sampling)
           for tree, target in ((host, graphed()), (resident, graphed()), (resident, StaticTarget(target_model)))]
    assert torch.equal(got[0][0], got[1][0]) and got[0][1] == got[1][1]
    torch.testing.assert_close(got[2][0], got[0][0], atol=1e-4, rtol=1e-4)
    assert got[2][1] == got[0][1]


@on_the_interpreter
@pytest.mark.tree_inputs_kernel
@pytest.mark.parametrize("method,temperature", [("ddtree", 0.0), ("ddtree", 1.0), ("caddtree", 0.0),
                                                ("caddtree", 1.0)])
def test_a_decode_with_trees_left_on_the_device_gives_ars_tokens(target_model, method, temperature):
    """The whole one-read round with the device's search (its Triton kernel, under the interpreter
    on a CPU) and a drafter that agrees with the target: every ddtree and caddtree tree stays on
    the device (the target makes its inputs from it, the walk reads it with the draws), the last
    rounds' shallower ones too. The decode gives AR's tokens (T=0, and T=1 with the same seed),
    accepting deep into the trees."""
    pytest.importorskip("triton", reason="the device search is a Triton kernel")
    from oracle_drafters import oracle_decoder

    sampling = SamplingConfig(temperature=temperature, seed=5)
    dec = oracle_decoder(target_model, method, sampling, 24, budget=8, block_size=6, engine="graph",
                         device_search=True)
    resident = []
    forward = dec.target.forward
    # a root alone (the last token of a decode) is no drafted tree
    dec.target.forward = lambda tree: (resident.append(tree.resident or tree.num_nodes == 1), forward(tree))[1]
    prompt = list(range(3, 14))
    got = dec.generate(prompt)
    ar = oracle_decoder(target_model, "ar", sampling, 24, engine="graph").generate(prompt)
    assert got.token_ids == ar.token_ids and got.tau > 2
    assert len(resident) > 2 and all(resident[1:]), resident  # every round; the prefill's forward first


@on_the_interpreter
def test_a_caddtree_left_on_the_device_is_sized_from_the_last_rounds_scores(qwen3_model):
    """caddtree searched on the device reads no Phi before the target forward: the walk reads the
    search's scores with its draws, and they size the next round's tree. The scores read equal
    the host's best-first prefixes of the round's marginals; each tree after the first has the
    size `next_size` gives for the round before (the first: its own, read once)."""
    pytest.importorskip("triton", reason="the device search is a Triton kernel")
    from oracle_drafters import oracle_decoder
    from specdiff.methods.caddtree.tree import next_size
    from specdiff.methods.device_search import reference_top_prefixes

    dec = oracle_decoder(qwen3_model, "caddtree", SamplingConfig(temperature=1.0, seed=3), 24, block_size=6,
                         engine="graph", device_search=True)
    proposer, logits, sizes, scores = dec.proposer, [], [], []
    proposer.overhead = None  # the wall-clock overhead it learns would move the sizes
    propose, forward, update = proposer.drafter.propose, dec.target.forward, proposer.update
    proposer.drafter.propose = lambda root, slots: (lambda p: (logits.append(p.logits.clone()), p)[1])(
        propose(root, slots))
    dec.target.forward = lambda tree: (sizes.append((tree.num_nodes, tree.resident)), forward(tree))[1]
    proposer.update = lambda result, out: (scores.append((result.scores, len(result.accepted))),
                                           update(result, out))[1]
    prompt = list(range(3, 14))
    dec.generate(prompt)
    sizes = sizes[1:]  # the prefill's forward first
    read = [i for i, (sc, _) in enumerate(scores) if sc is not None]
    assert len(read) > 2 and read == list(range(len(read))), read  # every round but a last root alone
    start = len(prompt) - 1
    for r in read:
        sc, accepted = scores[r]
        ref = reference_top_prefixes(logits[r], sc.shape[1])
        np.testing.assert_allclose(sc[0], ref.logp, rtol=1e-5)
        np.testing.assert_allclose(sc[1], ref.phi, rtol=1e-5)
        want = next_size(scores[r - 1][0] if r else sc, proposer.profile, start, proposer.budget)
        assert sizes[r] == (1 + min(want, sc.shape[1]), True), r
        start += accepted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts the host syncs of CUDA work")
@pytest.mark.parametrize("method,tree_search,temperature", [
    ("ar", "host", 0.0), ("dflash", "host", 0.0), ("ddtree", "device", 0.0), ("caddtree", "device", 0.0),
    ("ar", "host", 1.0), ("ddtree", "device", 1.0)])
def test_a_graph_engine_round_reads_the_device_once(method, tree_search, temperature, tmp_path):
    """ar, dflash, ddtree and caddtree (searched on the device) rounds on the graph engine: at most
    one synchronizing call each (the walk's copy of its draws, with the drafted chain or tree and
    caddtree's scores in the same copy), counted by PyTorch's sync debug mode; the prefill, a
    caddtree's first round and the decode's end add a few. At T=1 too, where the draws' noise is
    gathered by depth. The tokens are AR's (fp32, at T=1 with the same seed)."""
    from oracle_drafters import rising_profile

    model = tiny_target("qwen3", seed=0).cuda()
    drafter = tiny_drafter(model, block_size=8).cuda()
    cfg = DecodeConfig(method=method, engine="graph", max_new_tokens=40, stop_at_eos=False, tree_search=tree_search,
                       sampling=SamplingConfig(temperature=temperature, seed=5))
    if method == "caddtree":
        rising_profile().save(tmp_path / "profile.json")
        cfg.caddtree.profile = str(tmp_path / "profile.json")
    dec = build_decoder(model, cfg, drafter)
    prompt = list(range(5, 17))
    dec.prepare(len(prompt))
    dec.generate(prompt)  # warm-up: every graph this decode uses is captured
    syncs, rounds = count_syncs(dec, prompt)
    assert rounds >= 5 and syncs <= rounds + 3, (syncs, rounds)
    ar = build_decoder(model, dataclasses.replace(cfg, method="ar", tree_search="host"), drafter)
    assert dec.generate(prompt).token_ids == ar.generate(prompt).token_ids


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the overlap's copies run on a CUDA stream")
@pytest.mark.parametrize("engine,temperature", [("graph", 0.0), ("graph", 1.0), ("static", 1.0)])
def test_overlapped_ar_on_a_gpu_gives_the_step_by_step_tokens(engine, temperature):
    """On a GPU the overlapped AR loop refills a bucket's pinned inputs while the step before may
    still be queued, and reads each draw through an event: the tokens of one step at a time
    (fp32), the sync debug mode counting no read that waits for the whole stream."""
    model = tiny_target("qwen3", seed=0).cuda()
    prompt = list(range(5, 40))
    tokens = []
    for overlap in (True, False):
        cfg = DecodeConfig(method="ar", engine=engine, max_new_tokens=80, stop_at_eos=False, overlap=overlap,
                           sampling=SamplingConfig(temperature=temperature, seed=5))
        dec = build_decoder(model, cfg)
        dec.prepare(len(prompt))
        dec.generate(prompt)
        tokens.append(dec.generate(prompt).token_ids)
        if overlap and engine == "graph":
            syncs, rounds = count_syncs(dec, prompt)
            assert rounds == 80 and syncs <= 5, syncs
    assert tokens[0] == tokens[1]


NEW_AHEAD = 40


@on_the_interpreter
@pytest.mark.parametrize("method,budget,temperature", [
    pytest.param("dflash", 1, 0.0, marks=pytest.mark.tree_inputs_kernel),  # a drafted chain's inputs kernel
    ("ddtree", 8, 0.0), ("ddtree", 8, 1.0)])
def test_a_draft_queued_before_the_read_gives_ars_tokens(monkeypatch, method, budget, temperature):
    """The bundled pair on the graph engine with the next round's draft queued before the round
    is read, from the path the device found (ddtree's trees searched on the device): AR's tokens
    (T=0, and T=1 with the same seed), most rounds drafted ahead, deep acceptance (the drafter took
    the right context); without overlap nothing is queued ahead, and the tokens and each round's
    accepted length are the same."""
    import json

    from specdiff.decode import SpeculativeDecoder
    from specdiff.drafters.dflash import load_drafter
    from specdiff.models.bundled import REPO_MODELS, default_path
    from specdiff.target.hf_causal import load_target

    from specdiff.methods import device_search

    pytest.importorskip("triton", reason="the device search is a Triton kernel")
    ahead = []
    verify_ahead = SpeculativeDecoder._verify_drafting_ahead
    monkeypatch.setattr(SpeculativeDecoder, "_verify_drafting_ahead",
                        lambda self, tree, *a: (ahead.append(tree.resident), verify_ahead(self, tree, *a))[1])
    model, tok = load_target(default_path("target"))
    drafter = load_drafter(default_path("dflash"))
    row = (REPO_MODELS.parent / "data" / "prompts" / "function_completion.jsonl").read_text().splitlines()[1]
    ids = tok(json.loads(row)["prompt"], add_special_tokens=False)["input_ids"]
    sampling = SamplingConfig(temperature=temperature, seed=3)
    runs = {}
    for overlap in (True, False):
        # 8-token blocks: the interpreter's search covers 7 slots, and a round drafts ahead while
        # 16 tokens are left
        cfg = DecodeConfig(method=method, budget=budget, engine="graph", max_new_tokens=NEW_AHEAD, stop_at_eos=False,
                           tree_search="device", sampling=sampling, overlap=overlap, block_size=8)
        ahead.clear()
        with device_search.on_the_interpreter():  # ddtree's trees searched as on a GPU
            runs[overlap] = build_decoder(model, cfg, drafter).generate(ids)
        queued = len(ahead)
        if overlap:
            assert queued >= runs[overlap].rounds // 2, (queued, runs[overlap].rounds)
            assert all(ahead) == (method == "ddtree")  # ddtree's trees stayed on the device
        else:
            assert queued == 0
    ar = build_decoder(model, DecodeConfig(method="ar", engine="graph", max_new_tokens=NEW_AHEAD, stop_at_eos=False,
                                           sampling=sampling), drafter).generate(ids)
    assert all(r.token_ids == ar.token_ids for r in runs.values())
    # the queued drafts are the drafts of one round at a time
    assert runs[True].accept_lengths == runs[False].accept_lengths
    assert runs[True].tau > (2.0 if temperature == 0 else 1.3), runs[True].tau


@on_the_interpreter
def test_a_device_path_that_disagrees_with_the_walk_is_refused(monkeypatch):
    """The tokens come from the host's walk; a device path one node short (its draft would take
    the wrong context) stops the decode with one line instead of drafting on."""
    from specdiff import decode
    from specdiff.errors import SpecdiffError
    from specdiff.verify.walk import DevicePath, device_path

    def short(tree, draws, ancestors):
        p = device_path(tree, draws, ancestors)
        return DevicePath(p.nodes, p.count - 1, p.bonus)

    monkeypatch.setattr(decode, "device_path", short)
    model = tiny_target("qwen3", seed=0)
    cfg = DecodeConfig(method="dflash", engine="graph", max_new_tokens=64, stop_at_eos=False)
    dec = build_decoder(model, cfg, tiny_drafter(model, block_size=16))
    with pytest.raises(SpecdiffError, match="the device found a path"):
        dec.generate(list(range(5, 30)))
