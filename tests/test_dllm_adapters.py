"""load_dllm on local stand-ins for specdiff's own dLLM, LLaDA, Dream and SDAR (tests/dllm_fixtures.py):
dispatch and mask ids, logits equal to the model's own forward (Dream's shift undone), visibility
and positions honoured, Spiffy equal to the baseline, and one-line errors for bad folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from dllm_fixtures import write_fixture, write_tokenizer
from transformers import AutoModel, AutoModelForCausalLM

from specdiff.dllm import (DLLMConfig, base_visibility, default_graph, generate_baseline, generate_spiffy, spiffy,
                           tiny_mdm)
from specdiff.dllm import MaskedDiffusionModel
from specdiff.dllm.adapters import DreamAdapter, LLaDAAdapter, SDARAdapter, load_dllm
from specdiff.dllm.decoding import DLLMState, block_logits, initial_state, transition
from specdiff.errors import SpecdiffError

MASK = 61  # not the real models' ids, so it must come from the folder
KINDS = ("llada", "dream", "sdar")
P, GEN, BLOCK = 4, 8, 4
PROMPT = torch.tensor([5, 9, 2, 30])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dllm_fixtures")
    return {kind: write_fixture(kind, root / f"tiny_{kind}", mask_id=MASK, seed=i) for i, kind in enumerate(KINDS)}


@pytest.fixture(scope="module")
def bundles(folders):
    return {kind: load_dllm(folder, dtype=torch.float64) for kind, folder in folders.items()}


def _plain(folder, kind):
    """The same folder loaded by transformers alone: the model's own forward, unpatched."""
    loader = AutoModelForCausalLM if kind == "sdar" else AutoModel
    return loader.from_pretrained(folder, trust_remote_code=True, dtype=torch.float64).eval()


def _ids(seed=0):
    return torch.randint(0, MASK, (1, P + GEN), generator=torch.Generator().manual_seed(seed))


def test_dispatch_and_mask_ids(bundles, tmp_path):
    expected = {"llada": LLaDAAdapter, "dream": DreamAdapter, "sdar": SDARAdapter}
    for kind, b in bundles.items():
        assert (b.kind, b.mask_id, type(b.model)) == (kind, MASK, expected[kind])
        assert b.logit_shift == (kind == "dream") and b.supports_dual_cache == (kind != "sdar")
        assert b.native_block_causal == (kind == "sdar") and b.supports_block_causal
        assert b.tokenizer.token_to_id("<|MASK|>") == MASK
    # SDAR's generate takes the mask id from the tokenizer when the config has none
    sdar = load_dllm(write_fixture("sdar", tmp_path / "sdar_tok", mask_id=None, tokenizer_mask=True))
    assert sdar.mask_id == 63 and sdar.tokenizer.mask_token == "<|MASK|>"


def test_own_dllm_folder(tmp_path):
    # the format specdiff's dLLM trainer writes: a Qwen3 folder plus mask_token_id and a marker
    mdm = tiny_mdm(vocab_size=32, seed=3, dtype=torch.float32)
    mdm.hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "mask_token_id": 1, "specdiff_dllm": True}))
    write_tokenizer(tmp_path, 32, 1, "<mask>")
    b = load_dllm(tmp_path)
    assert (b.kind, b.mask_id, b.logit_shift, b.supports_dual_cache) == ("specdiff", 1, False, True)
    assert isinstance(b.model, MaskedDiffusionModel)
    ids, vis = _ids()[:, :10] % 32, base_visibility(2, 8, 4, True)[None]
    torch.testing.assert_close(b.model(ids, vis, torch.arange(10)[None]), mdm(ids, vis, torch.arange(10)[None]))


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_the_models_own_forward(folders, bundles, kind):
    plain, model = _plain(folders[kind], kind), bundles[kind].model
    ids, pos = _ids(), torch.arange(P + GEN)[None]
    full = torch.ones(1, P + GEN, P + GEN, dtype=torch.bool)
    ours = model(ids, full, pos)
    with torch.no_grad():
        if kind == "llada":
            raw = plain(input_ids=ids).logits
            # the flaw the adapter works around: LLaDA's own attention ignores attention_bias
            causal = torch.full((1, 1, P + GEN, P + GEN), -1e9, dtype=torch.float64).triu(1)
            assert torch.equal(plain(input_ids=ids, attention_bias=causal).logits, raw)
        else:
            raw = plain(input_ids=ids, attention_mask=full[:, None], position_ids=pos).logits
    if kind == "dream":  # row i-1 predicts token i; position 0 keeps its own row
        raw = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
    torch.testing.assert_close(ours, raw, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_block_causal_visibility_is_honoured(bundles, kind):
    model = bundles[kind].model
    vis, pos = base_visibility(P, GEN, BLOCK, block_causal=True)[None], torch.arange(P + GEN)[None]
    ids = _ids()
    later = ids.clone()
    later[0, P + BLOCK:] = (later[0, P + BLOCK:] + 7) % MASK  # the last block's tokens change
    a, b = model(ids, vis, pos), model(later, vis, pos)
    assert torch.equal(a[:, :P + BLOCK], b[:, :P + BLOCK])  # prompt and first block: untouched
    assert not torch.allclose(a[:, P + BLOCK + 1:], b[:, P + BLOCK + 1:])


@pytest.mark.parametrize("kind", KINDS)
def test_draft_rows_equal_stand_alone_forwards(bundles, kind):
    # draft copies reuse the block's positions and see the context, not the real block
    model = bundles[kind].model
    cfg = DLLMConfig(gen_length=GEN, block_length=BLOCK, steps=GEN, mask_id=MASK)
    visible = base_visibility(P, GEN, BLOCK, block_causal=True)
    state = initial_state(PROMPT, cfg)
    for _ in range(BLOCK + 1):  # into the second block, one token in
        anchor = block_logits(model, state, visible, cfg)
        state = transition(state, anchor, cfg)
    drafts = spiffy.instantiate(default_graph(1, 2), anchor, state, cfg)  # [D, BLOCK]
    assert drafts.shape[0] >= 2
    p, p_dd = spiffy.verify_forward(model, state, drafts, visible, cfg)
    junk = torch.randint(0, MASK, drafts.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(p, spiffy.verify_forward(model, state, junk, visible, cfg)[0])
    torch.testing.assert_close(p, block_logits(model, state, visible, cfg), rtol=0, atol=1e-10)
    for d, logits in zip(drafts, p_dd):
        ids = state.ids.clone()
        ids[state.block_slice(cfg)] = d
        alone = block_logits(model, DLLMState(ids, state.prompt_len, state.block), visible, cfg)
        torch.testing.assert_close(logits, alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_spiffy_equals_baseline_on_loaded_models(bundles, kind):
    b = bundles[kind]
    modes = [dict(block_causal=True)] + ([dict(block_causal=False, dual_cache=True)] if b.supports_dual_cache else [])
    accepted = 0
    for mode in modes:
        for temperature, seed in ((0.0, 0), (0.8, 1)):
            cfg = DLLMConfig(gen_length=GEN, block_length=BLOCK, steps=GEN, temperature=temperature, seed=seed,
                             mask_id=b.mask_id)
            base = generate_baseline(b.model, PROMPT, cfg, **mode)
            spec = generate_spiffy(b.model, PROMPT, cfg, default_graph(1, 3), **mode)
            assert spec.trajectory == base.trajectory and torch.equal(spec.token_ids, base.token_ids)
            assert spec.nfe + spec.accepted == base.nfe and not (base.token_ids == MASK).any()
            accepted += spec.accepted
    assert accepted > 0


def test_dual_cache_first_step_matches_plain_forward(bundles):
    # at a block's first step the frozen context is fresh: cached logits = plain logits
    for kind in ("llada", "dream"):
        model = bundles[kind].model
        vis, pos, ids = base_visibility(P, GEN, BLOCK, False)[None], torch.arange(P + GEN)[None], _ids(2)
        sl = slice(P + BLOCK, P + GEN)
        keep = torch.arange(P + BLOCK)
        logits, ctx = model.context(ids, vis, pos, keep)
        cached = model(ids[:, sl], torch.cat([vis[:, sl, keep], vis[:, sl, sl]], -1), pos[:, sl], context=ctx)
        torch.testing.assert_close(cached, logits[:, sl], rtol=0, atol=1e-10)
        torch.testing.assert_close(logits, model(ids, vis, pos), rtol=0, atol=1e-12)


def _one_line_error(path, match):
    with pytest.raises(SpecdiffError, match=match) as e:
        load_dllm(path)
    assert "\n" not in str(e.value)


def test_bad_folders_are_one_line_errors(folders, tmp_path):
    _one_line_error(tmp_path / "absent", "not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "no config.json")

    def variant(name, kind="dream", edit=None):
        folder = tmp_path / name
        shutil.copytree(folders[kind], folder)
        if edit:
            config = json.loads((folder / "config.json").read_text())
            edit(config)
            (folder / "config.json").write_text(json.dumps(config))
        return folder

    bad_json = variant("bad_json")
    (bad_json / "config.json").write_text("{not json")
    _one_line_error(bad_json, "not valid JSON")
    _one_line_error(variant("bert", edit=lambda c: (c.pop("mask_token_id"), c.update(model_type="bert"))),
                    "model_type 'bert' is not a masked-diffusion LM")
    _one_line_error(variant("no_mask", edit=lambda c: c.pop("mask_token_id")), "no integer mask_token_id.*151666")
    _one_line_error(variant("sdar_no_mask", "sdar", edit=lambda c: c.pop("mask_token_id")),
                    "no integer mask_token_id.*tokenizer has no mask_token")
    _one_line_error(variant("no_code", "llada", edit=lambda c: c["auto_map"].update(AutoModel="modeling_x.M")),
                    "modeling_x.py, which is not in the folder")
    _one_line_error(variant("no_auto_map", "llada", edit=lambda c: c.pop("auto_map")), "needs auto_map")
    corrupt = variant("corrupt", "llada")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    _one_line_error(corrupt, "cannot load llada model")
