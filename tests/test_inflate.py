"""`specdiff inflate`: the inflated pair computes the small pair's function (fp32: the same greedy
tokens and acceptance, logits within rounding), its folders load with the ordinary loaders, a
head_dim widening keeps RoPE, and bad input is one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from specdiff.cli import main
from specdiff.config import DecodeConfig
from specdiff.drafters.dflash import load_drafter
from specdiff.engine import build_decoder
from specdiff.loading import encode, eos_ids, load_drafter_folder, load_models, read_prompt_rows
from specdiff.models.bundled import REPO_MODELS, default_path, has_bundled
from specdiff.models.inflate import PUBLIC, Shape, inflate_drafter, inflate_target, plan
from specdiff.models.tiny import tiny_drafter, tiny_target

needs_bundled = pytest.mark.skipif(not all(has_bundled(k) for k in ("target", "dflash", "vp")),
                                   reason="no bundled models")
# fp32 logits of the inflated models against the small ones: the same sums with zeros added and
# another blocking, so float rounding only (measured about 1e-5 on logits of magnitude about 20)
LOGIT_TOL = 1e-3


@pytest.fixture(scope="module")
def inflated(tmp_path_factory):
    out = tmp_path_factory.mktemp("inflated") / "768x16"
    assert main(["inflate", "--shape", "768x16", "--out", str(out), "--dtype", "float32",
                 "--max-shard-size", "200MB"]) == 0
    return out


@pytest.fixture(scope="module")
def pairs(inflated):
    small = (*load_models(None, None), load_drafter_folder(None, kind="vp"))
    big = (*load_models(inflated / "target", inflated / "dflash"), load_drafter_folder(inflated / "vp", kind="vp"))
    return small, big


def prompts(n: int = 2) -> list[str]:
    rows = read_prompt_rows(REPO_MODELS.parent / "data" / "prompts" / "function_completion.jsonl")
    return [p for _, p in rows[:n]]


@needs_bundled
def test_the_target_folder_is_an_ordinary_sharded_hf_folder(inflated):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(inflated / "target")
    cfg = model.config
    assert Shape.of(cfg) == Shape(768, 16, 12, 4, 64, 2048) and cfg.vocab_size == 8192
    assert len(json.loads((inflated / "target" / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list((inflated / "target").glob("model-*.safetensors"))) > 1
    assert AutoTokenizer.from_pretrained(inflated / "target").vocab_size == 8192
    assert "cost stand-in" in (inflated / "target" / "README.md").read_text()
    summary = json.loads((inflated / "inflate.json").read_text())
    assert summary["layer_map"] == [0, 2, 4, 6, 8, 10, 12, 14]


@needs_bundled
def test_the_drafters_load_with_their_taps_on_the_same_layers(inflated):
    for kind in ("dflash", "vp"):
        small, big = load_drafter(default_path(kind)), load_drafter(inflated / kind)
        assert big.config.hidden_size == 768 and len(big.layers) == len(small.layers)
        assert big.spec.target_layer_ids == [2 * i for i in small.spec.target_layer_ids]
        assert big.spec.num_target_layers == 16
        assert "cost stand-in" in (inflated / kind / "README.md").read_text()


@needs_bundled
def test_logits_of_target_and_drafter_match_the_small_pair(pairs):
    (model, tokenizer, drafter, _), (big, _, big_drafter, _) = pairs
    ids = torch.tensor([encode(tokenizer, prompts(1)[0])[:96]])
    feats = []
    for m, d in ((model, drafter), (big, big_drafter)):
        with torch.no_grad():
            out = m(ids, output_hidden_states=True)
        taps = torch.cat([out.hidden_states[i + 1][0] for i in d.spec.target_layer_ids], dim=-1)
        d.bind(m.get_input_embeddings(), m.get_output_embeddings())
        d.reset(256)
        d.extend_context(taps)
        feats.append((out.logits[0], d.draft(int(ids[0, -1]), 15)))
    (t1, d1), (t2, d2) = feats
    assert (t1 - t2).abs().max() < LOGIT_TOL and (d1 - d2).abs().max() < LOGIT_TOL
    assert torch.equal(t1.argmax(-1), t2.argmax(-1)) and torch.equal(d1.argmax(-1), d2.argmax(-1))


@needs_bundled
@pytest.mark.parametrize("method", ["ddtree", "dflash", "d2sd"])
def test_greedy_tokens_and_acceptance_equal_the_small_pair(pairs, method):
    cfg = DecodeConfig(method=method, budget=16, max_new_tokens=32)
    runs = []
    for model, tokenizer, drafter, vp_drafter in pairs:
        decoder = build_decoder(model, cfg, drafter, eos_ids(model, tokenizer), vp_drafter=vp_drafter)
        runs.append([decoder.generate(encode(tokenizer, p)[:64]) for p in prompts()])
    for a, b in zip(*runs):
        assert a.token_ids == b.token_ids and a.accept_lengths == b.accept_lengths


@pytest.mark.parametrize("shape", [Shape(96, 6, 8, 8, 32, 256), Shape(96, 6, 12, 4, 32, 256)])
def test_a_wider_head_dim_keeps_rope_and_gqa(shape):
    """head_dim x2 (RoPE pairs and theta moved), query groups 2 -> 1 (KV heads copied) or 2 -> 3
    (a spare head per group), 4 -> 6 layers: logits over 80 positions within rounding; without
    the theta change they are not."""
    target = tiny_target(hidden=64, layers=4)  # 4 heads, 2 KV heads, head_dim 16
    drafter = tiny_drafter(target, layers=2, taps=[0, 1, 2])
    small = Shape.of(target.config)
    big = inflate_target(target, shape)
    assert big.config.rope_parameters["rope_theta"] == target.config.rope_parameters["rope_theta"] ** 2
    ids = torch.randint(0, target.config.vocab_size, (1, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = target(ids, output_hidden_states=True), big(ids, output_hidden_states=True)
    assert (a.logits - b.logits).abs().max() < 1e-4
    big_drafter = inflate_drafter(drafter, small, shape)
    assert big_drafter.spec.target_layer_ids == [0, 1, 3]
    drafts = []
    for m, d, out in ((target, drafter, a), (big, big_drafter, b)):
        d.bind(m.get_input_embeddings(), m.get_output_embeddings())
        d.reset(128)
        d.extend_context(torch.cat([out.hidden_states[i + 1][0] for i in d.spec.target_layer_ids], dim=-1))
        drafts.append(d.draft(3, 7))
    assert (drafts[0] - drafts[1]).abs().max() < 1e-4

    wrong = type(big.model.rotary_emb)(target.config.__class__.from_dict(
        {**big.config.to_dict(), "rope_parameters": target.config.rope_parameters}))
    big.model.rotary_emb = wrong  # the old theta on the wider head: the original dims rotate at other rates
    with torch.no_grad():
        assert (target(ids).logits - big(ids).logits).abs().max() > 1e-2


def test_public_shapes_plan_without_building():
    p = plan("qwen3-8b") if has_bundled("target") and has_bundled("dflash") and has_bundled("vp") else None
    if p is None:
        pytest.skip("no bundled models")
    assert p.big == PUBLIC["qwen3-8b"][0] and p.layer_map[:3] == [0, 4, 9]
    assert p.drafter_shapes["dflash"][1] == Shape(4096, 4, 32, 8, 128, 12288)
    assert p.drafter_shapes["vp"][1].intermediate == 6144
    assert plan("qwen3-1.7b").big.kv_heads == 8  # query groups 3 -> 2: each KV head copied twice


@pytest.mark.parametrize("argv, says", [
    (["--shape", "qwen3-9000b"], "unknown shape"),
    (["--shape", "256x16"], "smaller than the source"),
    (["--shape", "768x4"], "smaller than the source"),
    (["--shape", "768x16", "--target", "/nonexistent/target"], "--target"),
    (["--shape", "768x16", "--drafter", "/nonexistent/dflash"], "--drafter"),
    (["--shape", "768x16", "--out", "FILE"], "is a file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, says, tmp_path, capsys):
    if not has_bundled("target"):
        pytest.skip("no bundled models")
    (tmp_path / "f").write_text("")
    argv = [str(tmp_path / "f") if a == "FILE" else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(["inflate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specdiff: error:") and err.count("\n") == 1 and says in err
    assert not (tmp_path / "out").exists()  # nothing made before the checks pass


def test_help_says_it_is_a_cost_stand_in(capsys):
    with pytest.raises(SystemExit):
        main(["inflate", "--help"])
    assert "cost stand-in" in capsys.readouterr().out
