"""DFlash drafter: the public folder format round-trips (both config layouts, both key layouts),
incompatible or corrupt drafters are refused, and the cached forward matches a plain reference."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from specdiff.drafters.dflash import check_fits, default_target_layer_ids, load_drafter, save_drafter
from specdiff.errors import SpecdiffError
from specdiff.models.tiny import tiny_drafter


@pytest.fixture
def saved(qwen3_model, tmp_path):
    d = tiny_drafter(qwen3_model, block_size=16)
    save_drafter(d, tmp_path / "d")
    return d, tmp_path / "d"


def test_round_trip(qwen3_model, saved):
    d, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["DFlashDraftModel"] and cfg["block_size"] == 16
    assert cfg["dflash_config"] == {"mask_token_id": d.spec.mask_token_id, "target_layer_ids": d.spec.target_layer_ids}
    keys = set(load_file(str(folder / "model.safetensors")))
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "layers.0.self_attn.q_proj.weight",
            "layers.1.mlp.down_proj.weight", "layers.0.self_attn.k_norm.weight"} <= keys
    assert not any("embed" in k or "lm_head" in k for k in keys)  # borrowed from the target
    loaded = load_drafter(folder)
    for k, v in d.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert loaded.spec == d.spec


def test_top_level_config_and_encoder_keys_load(qwen3_model, saved, tmp_path):
    d, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    nested = cfg.pop("dflash_config")
    cfg.update(nested)  # DFlash2-style: mask_token_id / target_layer_ids at top level
    out = tmp_path / "v2"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.fc.weight"] = state.pop("fc.weight")
    state["encoder.output_norm_enc.weight"] = state.pop("hidden_norm.weight")
    save_file(state, str(out / "model.safetensors"))
    loaded = load_drafter(out)
    assert loaded.spec.target_layer_ids == d.spec.target_layer_ids
    assert torch.equal(loaded.fc.weight, d.fc.weight) and torch.equal(loaded.hidden_norm.weight, d.hidden_norm.weight)


def test_missing_layer_ids_use_default_rule(saved, tmp_path):
    _, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dflash_config"].pop("target_layer_ids")
    cfg["num_target_layers"] = 36
    cfg["num_hidden_layers"] = 5
    cfg.pop("layer_types", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from specdiff.drafters.dflash import read_config

    _, spec = read_config(tmp_path)
    assert spec.target_layer_ids == [1, 9, 17, 25, 33] == default_target_layer_ids(36, 5)


def test_refuses_drafters_that_do_not_fit(qwen3_model, saved):
    d, _ = saved
    h, v, n = qwen3_model.config.hidden_size, qwen3_model.config.vocab_size, qwen3_model.config.num_hidden_layers
    check_fits(d, h, v, n)
    with pytest.raises(SpecdiffError, match="hidden size"):
        check_fits(d, h * 2, v, n)
    with pytest.raises(SpecdiffError, match="vocabulary"):
        check_fits(d, h, v + 1, n)
    with pytest.raises(SpecdiffError, match="layer"):
        check_fits(d, h, v, n - 2)


def test_refuses_corrupt_or_foreign_checkpoints(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SpecdiffError, match="corrupt"):
        load_drafter(bad)
    state = load_file(str(folder / "model.safetensors"))
    state["layers.0.attention_conv.base_kernel"] = torch.zeros(2)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(SpecdiffError, match="does not know"):
        load_drafter(bad)
    del state["layers.0.attention_conv.base_kernel"], state["norm.weight"]
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(SpecdiffError, match="missing"):
        load_drafter(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(SpecdiffError, match="JSON"):
        load_drafter(bad)
    with pytest.raises(SpecdiffError, match="not found"):
        load_drafter(tmp_path / "nowhere")


def reference_draft(d, features, root, num_slots):
    """DFlash drafter forward written out plainly: no cache, one concatenated K/V per layer."""
    n = features.shape[0]
    embed, head = d._io
    block = torch.tensor([root] + [d.spec.mask_token_id] * num_slots)
    x = embed(block)
    ctx = d.hidden_norm(d.fc(features))
    cos, sin = d.rope(torch.arange(n + num_slots + 1))
    for layer in d.layers:
        a = layer.self_attn
        h = layer.input_layernorm(x)
        k, v = a.kv(torch.cat([ctx, h]), cos, sin)
        q = a.q(h, cos[n:], sin[n:])
        g = a.num_heads // a.num_kv
        k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
        w = torch.softmax(q @ k.transpose(1, 2) / a.head_dim**0.5, dim=-1)
        x = x + a.o_proj((w @ v).transpose(0, 1).reshape(num_slots + 1, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return head(d.norm(x[1:]))


def test_cached_forward_matches_reference(qwen3_model):
    d = tiny_drafter(qwen3_model, block_size=16)
    feats = torch.randn(13, len(d.spec.target_layer_ids) * qwen3_model.config.hidden_size)
    d.reset(64)
    for chunk in (feats[:5], feats[5:6], feats[6:]):  # context arrives round by round
        d.extend_context(chunk)
    with torch.inference_mode():
        got = d.draft(root=11, num_slots=15)
        ref = reference_draft(d, feats, 11, 15)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_training_forward_matches_inference(qwen3_model):
    """forward_blocks (block attention mask, many anchors at once) == draft() at each anchor."""
    d = tiny_drafter(qwen3_model, block_size=8)
    seq = torch.randint(0, 90, (1, 20))
    feats = torch.randn(1, 20, len(d.spec.target_layer_ids) * qwen3_model.config.hidden_size)
    anchors = torch.tensor([[3, 11, 0]])
    blocks = torch.full((1, 3, 8), d.spec.mask_token_id)
    blocks[..., 0] = seq[0, anchors[0]]
    with torch.inference_mode():
        hidden = d.forward_blocks(feats, blocks, anchors)
        for i, a in enumerate(anchors[0].tolist()):
            d.reset(32)
            d.extend_context(feats[0, :a])
            ref = d.draft(int(seq[0, a]), 7)
            torch.testing.assert_close(d._io[1](hidden[0, i, 1:]), ref, atol=1e-4, rtol=1e-4)
