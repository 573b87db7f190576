"""The fused-kernel target forward (`--kernels triton`; Triton's interpreter on a CPU) against the
eager static forward and against transformers' own greedy decoding, and where it refuses."""

from __future__ import annotations

import pytest
import torch

from specdiff import native
from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.engine import build_decoder
from specdiff.errors import SpecdiffError
from specdiff.models.tiny import tiny_drafter, tiny_target
from specdiff.target import StaticTarget
from specdiff.target.graphed import GraphedTarget
from specdiff.types import DraftTree

from test_architectures import EXACT, PROMPT, hf_greedy, tiny
from test_target import path_to, random_tree

pytest.importorskip("triton", reason="the fused forward needs Triton (its interpreter runs it on a CPU)")
NATIVE = native.load()
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the interpreter runs no GPU's kernels


# two-layer targets: the interpreter runs a kernel's programs one by one, and a layer repeats the ops
@pytest.fixture(scope="module", params=["qwen3", "llama"])
def target_model(request):
    return tiny_target(request.param, seed=0, layers=2)


@pytest.fixture(scope="module")
def qwen3_model():
    return tiny_target("qwen3", seed=0, layers=2)


@pytest.mark.parametrize("engine,choice", [("static", "triton"), ("graph", "triton"), ("static", "glued")])
def test_fused_forward_equals_eager(target_model, engine, choice):
    """Prefill, a padded tree, a chain and the next tree after commits: logits and taps equal the
    eager forward's to fp32 rounding, so the fused cache writes and tree attention hold up. Glued,
    the few-row forwards run the GEMMs with the glue inside and the prefill does not."""
    g = torch.Generator().manual_seed(11)
    vocab = target_model.config.vocab_size
    prompt = torch.randint(0, vocab, (23,), generator=g).tolist()
    trees = [random_tree(13, vocab, g), DraftTree.chain(5, [6, 7]), random_tree(9, vocab, g)]
    leaves = [int(torch.randint(1, t.num_nodes, (1,), generator=g)) for t in trees]
    eager = StaticTarget(target_model, tap_layers=[0, 1], native=NATIVE, kernels="torch")
    if engine == "graph":
        fused = GraphedTarget(target_model, [0, 1], use_graphs=False, native=NATIVE, kernels=choice)
    else:
        fused = StaticTarget(target_model, tap_layers=[0, 1], native=NATIVE, kernels=choice)
    assert eager.fused is None and fused.fused is not None and fused.kernels_ran == choice
    outs = []
    for t in (eager, fused):
        t.reset(len(prompt) + 40)
        res = [t.prefill(prompt)]
        for tree, leaf in zip(trees, leaves):
            out = t.forward(tree)
            res.append((out.logits.clone(), out.features.clone()))
            t.commit(path_to(tree, leaf))
        outs.append(res[1:] + [(res[0].logits, res[0].features)])
    for (la, fa), (lb, fb) in zip(*outs):
        torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fb, fa, atol=1e-4, rtol=1e-4)
    assert fused.fused.rope.table.shape[1] == fused.max_len  # its RoPE came from the table


@pytest.mark.parametrize("split_keys", [False, True])
def test_fused_forward_with_every_gemm_streamed_equals_eager(qwen3_model, monkeypatch, split_keys):
    """Every GEMM of up to 16 rows in the streaming kernel (as an 8B forward runs them on a GPU),
    SiLU-multiply in the gate/up GEMM's epilogue, and (split_keys) the attention's keys split as
    on a GPU of 132 SMs: a tree's and a chain's logits equal the eager forward's to fp32
    rounding."""
    from specdiff.kernels import attention, gemm

    import copy

    multiprocessors = attention._multiprocessors
    model = copy.deepcopy(qwen3_model).to(DEVICE)
    g = torch.Generator().manual_seed(13)
    prompt = torch.randint(0, 96, (80 if split_keys else 17,), generator=g).tolist()  # 80: keys span two tiles
    trees = [random_tree(12, 96, g), DraftTree.chain(4, [5])]
    outs = []
    for kernels_choice in ("torch", "triton"):
        monkeypatch.setattr(gemm, "SKINNY_MIN_WEIGHT", 0 if kernels_choice == "triton" else gemm.SQUARE_8B)
        t = StaticTarget(model, native=NATIVE, kernels=kernels_choice)
        t.reset(len(prompt) + 20)
        t.prefill(prompt)  # keys unsplit: the interpreter would merge 150 rows' splits one by one
        if split_keys:
            monkeypatch.setattr(attention, "_multiprocessors", lambda device: 132)
        outs.append([t.forward(tree).logits.clone() for tree in trees])
        monkeypatch.setattr(attention, "_multiprocessors", multiprocessors)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_fused_forward_with_a_trees_gemms_in_tree_linear_equals_eager(qwen3_model, monkeypatch):
    """A tree of 20 rows with every GEMM in `tree_linear` (K split in two, as
    `TREE_GEMM_SETTINGS` would name it on a GPU): its logits equal the eager forward's to fp32
    rounding."""
    from specdiff.kernels import gemm, tree_gemm

    import copy

    if DEVICE.type == "cuda":
        pytest.skip("fp32 on a GPU keeps cuBLAS for a tree's rows (the table is bf16's); test_tree_linear runs there")
    model = copy.deepcopy(qwen3_model).to(DEVICE)
    g = torch.Generator().manual_seed(14)
    prompt = torch.randint(0, 96, (17,), generator=g).tolist()
    tree = random_tree(20, 96, g)
    outs, runs = [], []
    real = tree_gemm.tree_linear
    monkeypatch.setattr(tree_gemm, "tree_linear", lambda *a, **kw: (runs.append(kw["splits"]), real(*a, **kw))[1])
    for kernels_choice in ("torch", "triton"):
        monkeypatch.setattr(gemm, "tree_gemm_settings",
                            (lambda d, n, k, m: (16, 32, 2, 4, 2)) if kernels_choice == "triton" else (lambda d, n, k, m: None))
        t = StaticTarget(model, native=NATIVE, kernels=kernels_choice)
        t.reset(len(prompt) + 24)
        t.prefill(prompt)
        outs.append(t.forward(tree).logits.clone())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    assert runs and set(runs) == {2}  # the forward's GEMMs ran in it


def test_embed_rows_reads_what_the_module_gives():
    """The fast paths gather a plain embedding's rows themselves; a scaled embedding (Gemma's kind)
    runs its own forward, scale included."""
    from specdiff.ops import embed_rows

    class Scaled(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 3.0

    ids = torch.tensor([5, 0, 5, 9])
    for module in (torch.nn.Embedding(11, 4), Scaled(11, 4)):
        assert torch.equal(embed_rows(module, ids), module(ids))


@pytest.mark.parametrize("rope_type", ["default", "llama3", "dynamic"])
def test_rope_table_gives_the_rotary_modules_values(rope_type):
    """The fast paths gather cos/sin from a table the model's rotary module filled once: bitwise
    its own values at any positions. A length-dependent rotary (dynamic) keeps no table, and a
    bound past the table runs the module."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from specdiff.ops import RopeTable

    params = {"rope_type": rope_type, "rope_theta": 10000.0}
    if rope_type == "llama3":
        params.update(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    elif rope_type == "dynamic":
        params.update(factor=2.0)
    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=128, num_attention_heads=4, max_position_embeddings=128,
                                              rope_parameters=params))
    like = torch.zeros(3, 5, dtype=torch.bfloat16)
    table = RopeTable(rotary)
    table.build(300, like)
    assert (table.table is None) == (rope_type == "dynamic")
    g = torch.Generator().manual_seed(5)
    for positions, bound in ((torch.randint(0, 300, (17,), generator=g), 300), (torch.arange(250, 290), 300),
                             (torch.arange(290, 310), 310)):
        want = rotary(like[None], positions[None])
        got = table(positions, like, bound)
        assert all(w[0].dtype == x.dtype and torch.equal(w[0], x) for w, x in zip(want, got))


def test_fused_weights_are_views_of_the_model(qwen3_model):
    """Fusing QKV, gate/up and the q/k norms costs no memory and changes no number: the modules'
    weights become views into the fused tensors, and the model's own forward gives the same logits
    bitwise."""
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        before = qwen3_model(input_ids=ids).logits
    t = StaticTarget(qwen3_model, kernels="triton")
    layer, fused = qwen3_model.model.layers[1], t.fused.layers[1]
    w_qkv, w_gate_up = fused.qkv[0], fused.gate_up[0]
    q_rows = layer.self_attn.q_proj.weight.shape[0]
    assert layer.self_attn.q_proj.weight.data_ptr() == w_qkv.data_ptr()
    assert layer.self_attn.k_proj.weight.data_ptr() == w_qkv[q_rows:].data_ptr()
    assert layer.mlp.up_proj.weight.data_ptr() == w_gate_up[layer.mlp.gate_proj.weight.shape[0]:].data_ptr()
    # the q/k norms the QKV kernel reads together are the modules' own weights too
    assert [layer.self_attn.q_norm.weight.data_ptr(), layer.self_attn.k_norm.weight.data_ptr()] == \
        [fused.qk_norm[0].data_ptr(), fused.qk_norm[1].data_ptr()]
    with torch.inference_mode():
        assert torch.equal(qwen3_model(input_ids=ids).logits, before)


def test_fused_decode_is_lossless(qwen3_model):
    """Drafted methods through the fused forward give transformers' greedy tokens, and at T=1
    the tokens AR gives with the same seed (the interpreter is slow: a few short decodes). The
    glued dflash run verifies its blocks, and drafts them, through the glued GEMMs."""
    drafter = tiny_drafter(qwen3_model, block_size=8)
    n = 7
    expected = hf_greedy(qwen3_model, n)
    runs = {}
    for engine, method, budget, temperature, choice in (
            ("static", "ar", 1, 0.0, "triton"), ("static", "dflash", 1, 0.0, "glued"),
            ("graph", "ddtree", 12, 0.0, "triton"), ("static", "ar", 1, 1.0, "triton"),
            ("static", "ddtree", 12, 1.0, "glued")):
        cfg = DecodeConfig(method=method, budget=budget, max_new_tokens=n, engine=engine, kernels=choice,
                           stop_at_eos=False, sampling=SamplingConfig(temperature=temperature, seed=3))
        dec = build_decoder(qwen3_model, cfg, drafter)
        assert dec.target.fused is not None
        runs[engine, method, temperature] = dec.generate(PROMPT).token_ids
    for (engine, method, temperature), got in runs.items():
        want = expected if temperature == 0.0 else runs["static", "ar", 1.0]
        assert got == want, f"{method} on {engine} at T={temperature}"


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_fused_forward_is_exact_per_family(arch):
    """Llama, Mistral, Qwen2 (QKV biases), Qwen3 (q/k norms) and Qwen3-MoE (its MLP as the model's
    module) through the fused kernels, decode steps through the glued GEMMs: transformers' greedy
    tokens."""
    model = tiny(arch)
    cfg = DecodeConfig(method="ar", engine="static", kernels="glued", max_new_tokens=10, stop_at_eos=False)
    dec = build_decoder(model, cfg)
    assert dec.target.fused is not None
    assert dec.generate(PROMPT).token_ids == hf_greedy(model, 10)


def test_kernels_choice_and_refusal(qwen3_model, monkeypatch):
    """auto keeps the eager forward on a CPU; triton where Triton cannot run is refused in one
    line; a head size the kernels do not tile is refused too."""
    assert StaticTarget(qwen3_model, kernels="auto").fused is None
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SpecdiffError, match="--kernels triton cannot run here: Triton kernels need a CUDA device"):
        StaticTarget(qwen3_model, kernels="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    odd = tiny("llama", head_dim=24, hidden_size=96)
    with pytest.raises(SpecdiffError, match="power-of-two head size") as e:
        StaticTarget(odd, kernels="triton")
    assert "\n" not in str(e.value)
    with pytest.raises(SpecdiffError, match="unknown kernels"):
        DecodeConfig(kernels="cuda").validate()


@pytest.mark.parametrize("prompt_len,choice", [(20, "triton"), (250, "triton"), (20, "glued"), (150, "split")])
def test_fused_drafter_step_equals_eager(qwen3_model, monkeypatch, prompt_len, choice):
    """The drafter's fused step (context fusion, then the block through the fused layers, its K/V
    past the context) gives the eager drafter's logits round after round, also across the first
    span bucket; glued, through the GEMMs with the glue inside; "split": every GEMM streamed and
    the attention's keys split as a 132-SM GPU splits them."""
    from specdiff.drafters.graphed import GraphedDrafter
    from specdiff.kernels import attention, gemm

    from test_graph_engine import plain_and_graphed

    if choice == "split":
        monkeypatch.setattr(gemm, "SKINNY_MIN_WEIGHT", 0)
        monkeypatch.setattr(attention, "_multiprocessors", lambda device: 132)
        choice = "triton"

    g = torch.Generator().manual_seed(7)
    plain, fused = plain_and_graphed(qwen3_model, lambda d: GraphedDrafter(d, use_graphs=False, kernels=choice),
                                     prompt_len, g)
    assert fused._fused is not None and fused._fused.glue == (choice == "glued")
    for n, root, slots in [(0, 3, 7), (3, 9, 7), (8, 4, 5), (1, 11, 7)]:
        feats = torch.randn(n, plain.fc.in_features, generator=g)
        plain.extend_context(feats)
        fused.extend_context(feats)
        torch.testing.assert_close(fused.draft(root, slots), plain.draft(root, slots), atol=1e-4, rtol=1e-4)
    assert fused._fused.rope.table.shape[1] == fused.inner.ctx_k.shape[2]  # its RoPE came from the table


BF16_LOGIT_TOLERANCE = 2e-2  # max |difference| over max |logit|: bf16 rounding, not a modelling gap


@pytest.mark.parametrize("choice", ["triton", "glued"])
def test_fused_forward_bf16_logits_within_tolerance(choice):
    """In bf16 the fused forward rounds in other places than the eager one (one rounding per fused
    kernel; glued, the norm scales the product), so logits are held to a stated tolerance rather
    than equality."""
    from specdiff.models.tiny import tiny_target

    model = tiny_target("qwen3", seed=4).to(DEVICE, torch.bfloat16)
    g = torch.Generator().manual_seed(12)
    prompt = torch.randint(0, 96, (19,), generator=g).tolist()
    tree = random_tree(11, 96, g)
    outs = []
    for kernels in ("torch", choice):
        t = StaticTarget(model, native=NATIVE, kernels=kernels)
        t.reset(len(prompt) + 16)
        t.prefill(prompt)
        outs.append(t.forward(tree).logits.float())
    err = float((outs[1] - outs[0]).abs().max() / outs[0].abs().max())
    assert err <= BF16_LOGIT_TOLERANCE, err
