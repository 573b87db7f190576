"""`--numerics exact`: a token's logits are bitwise the same forwarded alone or inside a tree of any
size (bf16), a planted batch-dependent kernel is caught, and bf16 speculative decodes equal AR's.
On a CUDA machine the same tests run the compiled kernels and the graph engine's captured graphs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from specdiff import invariant
from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.engine import build_decoder
from specdiff.errors import SpecdiffError
from specdiff.models.tiny import tiny_drafter, tiny_target
from specdiff.target import StaticTarget
from specdiff.target import fused
from specdiff.target.graphed import GraphedTarget
from specdiff.types import DraftTree

from test_architectures import tiny

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = DEVICE.type == "cpu"  # Triton's interpreter runs each program in turn: smaller trees
PROMPT = [5, 17, 42, 8, 77, 3, 61, 29, 11, 90, 4, 33]
ROOT, A, B = 7, 21, 50  # the root, its child A, A's child B: in every tree, and the AR steps


@pytest.fixture(scope="module")
def bf16_model():
    # two layers under the interpreter (its programs run one by one): a layer repeats the ops
    return tiny_target("qwen3", seed=3, layers=2 if INTERPRETED else 4).to(DEVICE, torch.bfloat16)


def tree_with_path(n: int, g: torch.Generator) -> DraftTree:
    """n nodes: root, A under it, B under A (n >= 3), the rest random children of earlier nodes."""
    tokens = [ROOT, A, B][:n] + torch.randint(0, 96, (max(0, n - 3),), generator=g).tolist()
    parents = [-1, 0, 1][:n] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(3, n)]
    return DraftTree.from_lists(tokens, parents)


def path_logits(target: StaticTarget, sizes: list[int]) -> dict[int, torch.Tensor]:
    """Logits [3, V] of root, A and B in a tree of each size (the root alone at size 1), and of the
    three verified alone as AR steps (key 0)."""
    g = torch.Generator().manual_seed(0)
    target.reset(len(PROMPT) + max(sizes) + 4)
    target.prefill(PROMPT)
    out = {}
    for n in sizes:
        out[n] = target.forward(tree_with_path(n, g)).logits[: min(n, 3)].clone()
    steps = []
    for token in (ROOT, A, B):
        steps.append(target.forward(DraftTree.from_lists([token], [-1])).logits[0].clone())
        target.commit([0])
    out[0] = torch.stack(steps)
    return out


@pytest.mark.parametrize("path", ["torch", "triton", "triton-graph", "triton-tree-gemm"])
def test_a_tokens_logits_are_bitwise_the_same_alone_and_in_any_tree(bf16_model, path, monkeypatch):
    """PyTorch's invariant ops (static engine), the Triton kernels' (static, and the graph
    engine's padded buckets, under Triton's interpreter on a CPU), and the Triton kernels with
    every GEMM in `tree_linear` at one setting, split over K (as a card's `INVARIANT_SETTINGS`
    would run them once the load's probe passed them)."""
    if path == "triton-tree-gemm":
        from specdiff.kernels import exact_gemm

        calls = []
        monkeypatch.setattr(exact_gemm, "_listed_invariant", lambda x, shape: calls.append(1) or (64, 32, 2, 4, 2))
        monkeypatch.setattr(exact_gemm, "INVARIANCE_VERDICTS", {})  # the target's load probes every weight
    if path == "torch":
        target, sizes = StaticTarget(bf16_model, numerics="exact", kernels="torch"), [1, 7, 64, 300]
    else:
        pytest.importorskip("triton", reason="the exact kernels need Triton (its interpreter runs them on a CPU)")
        if path == "triton":
            target = StaticTarget(bf16_model, numerics="exact", kernels="triton")
        else:
            target = GraphedTarget(bf16_model, use_graphs=not INTERPRETED, numerics="exact", kernels="triton")
        sizes = [1, 7, 24] if INTERPRETED else [1, 7, 64, 300]  # 24: past the 16 rows of one GEMM tile
    assert target.kernels_ran == ("invariant" if path == "torch" else "triton")
    logits = path_logits(target, sizes)
    ar = logits.pop(0)
    for n, got in logits.items():
        assert torch.equal(got, ar[: got.shape[0]]), f"a tree of {n} nodes"
    if path == "triton-tree-gemm":
        assert calls and exact_gemm.INVARIANCE_VERDICTS and all(exact_gemm.INVARIANCE_VERDICTS.values())


def test_a_planted_batch_dependent_kernel_is_caught(bf16_model, monkeypatch):
    """The same check fails when one op rounds by the row count: a GEMM that, for more than one
    row, sums K in two halves rounded apart (as a split-K GEMM would)."""

    def planted(x, weight, bias=None):
        if x.shape[0] == 1:
            return invariant.linear(x, weight, bias)
        k = x.shape[1] // 2
        y = F.linear(x[:, :k], weight[:, :k]) + F.linear(x[:, k:], weight[:, k:])
        return y if bias is None else y + bias

    monkeypatch.setattr(invariant.OPS, "linear", planted)
    logits = path_logits(StaticTarget(bf16_model, numerics="exact", kernels="torch"), [7, 64])
    ar = logits.pop(0)
    assert any(not torch.equal(got, ar[: got.shape[0]]) for got in logits.values())


def test_exact_speculative_decodes_equal_ar_in_bf16(bf16_model):
    drafter = tiny_drafter(bf16_model, block_size=8).to(DEVICE, torch.bfloat16)
    engine, ran = ("static", "invariant") if INTERPRETED else ("graph", "triton")
    runs = {}
    for method, budget in (("ar", 1), ("dflash", 1), ("ddtree", 6), ("ddtree", 30)):
        for temperature in (0.0, 1.0):
            cfg = DecodeConfig(method=method, budget=budget, max_new_tokens=14, engine=engine, numerics="exact",
                               stop_at_eos=False, sampling=SamplingConfig(temperature=temperature, seed=5))
            dec = build_decoder(bf16_model, cfg, drafter)
            assert dec.target.kernels_ran == ran
            runs[method, budget, temperature] = dec.generate(PROMPT).token_ids
    for (method, budget, temperature), tokens in runs.items():
        assert tokens == runs["ar", 1, temperature], f"{method}@{budget} at T={temperature}"


def test_exact_needs_a_fast_engine_and_a_swiglu_mlp():
    with pytest.raises(SpecdiffError, match="--numerics exact runs on the static and graph engines, not hf"):
        DecodeConfig(engine="hf", numerics="exact").validate()
    with pytest.raises(SpecdiffError, match="on the graph engine needs the Triton kernels"):
        GraphedTarget(tiny("qwen3"), use_graphs=True, numerics="exact", kernels="torch")
    with pytest.raises(SpecdiffError, match="unknown numerics"):
        DecodeConfig(numerics="bitwise").validate()

    with pytest.raises(SpecdiffError, match="needs a SwiGLU MLP"):
        StaticTarget(tiny("qwen3_moe"), numerics="exact")


def test_auto_numerics_is_exact_only_where_it_costs_about_what_fast_does(monkeypatch):
    """auto: exact on the graph engine's Triton kernels while the GEMM weights fit in L2; fast on
    other engines, without Triton, past L2, and for a model exact cannot run."""
    model = tiny("qwen3").to(torch.bfloat16)
    target = StaticTarget(model, kernels="torch", check=False)
    assert target.numerics == "fast"  # the default (auto) on a CPU
    gemm_bytes = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.Linear))
    monkeypatch.setattr(fused.kernels, "use_triton", lambda *a, **k: True)
    for l2, graphs, want in ((gemm_bytes, True, "exact"), (gemm_bytes - 1, True, "fast"), (gemm_bytes, False, "fast")):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d, l2=l2: SimpleNamespace(L2_cache_size=l2))
        assert fused.auto_numerics(target, "auto", graphs=graphs) == want, (l2, graphs)
    moe = StaticTarget(tiny("qwen3_moe"), kernels="torch", check=False)
    assert fused.auto_numerics(moe, "auto", graphs=True) == "fast"
    monkeypatch.setattr(fused.kernels, "use_triton", lambda *a, **k: False)
    assert fused.auto_numerics(target, "auto", graphs=True) == "fast"


def test_bench_exact_bf16_on_the_bundled_pair_matches_ar(tmp_path, capsys):
    """`specdiff bench --dtype bfloat16 --numerics exact` on the CPU: no output unlike AR's, and the
    report says which numerics ran."""
    rows = [json.loads(line) for line in open("data/prompts/function_completion.jsonl").readlines()[:1]]
    prompts = tmp_path / "short.jsonl"  # the prompts' heads: exact numerics prefill one row per call
    prompts.write_text("".join(json.dumps({**r, "prompt": r["prompt"][:160]}) + "\n" for r in rows))
    from specdiff.cli import main

    code = main(["bench", "--dtype", "bfloat16", "--engine", "static", "--numerics", "exact", "--methods", "ar,ddtree",
                 "--budgets", "16", "--temperature", "0,1", "--limit", "1", "--max-new-tokens", "24", "--warmup", "0",
                 "--prompts", str(prompts), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err[-2000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["mismatches"] == 0 and result["environment"]["numerics"] == "exact"
    assert len(result["runs"]) == 2 * 2  # temperatures x methods
    assert "invariant kernels, exact numerics" in (tmp_path / "out" / "report.md").read_text()
