"""Never silently wrong, across architectures: for tiny random models of each family, every engine
either gives the model's own greedy tokens (transformers' `generate`) or refuses it with one line.
The static and graph engines must refuse what their forward does not compute, and the load-time
probe must catch a modelling difference that no config check names."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from specdiff.config import DecodeConfig
from specdiff.engine import build_decoder
from specdiff.errors import SpecdiffError
from specdiff.target import static_model

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.08,
              tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
EXTRA = {
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                      mlp_only_layers=[]),
    "gemma2": dict(sliding_window=16),
    "gemma3_text": dict(sliding_window=16),
}
# the engines that must reproduce these families exactly
EXACT = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe"}
ARCHS = sorted(EXACT | {"gemma", "gemma2", "gemma3_text", "phi3", "gpt_neox", "opt"})
PROMPT = [5, 17, 42, 8, 77, 3, 61, 29]


def tiny(model_type: str, **overrides) -> torch.nn.Module:
    cfg = AutoConfig.for_model(model_type, **{**COMMON, **EXTRA.get(model_type, {}), **overrides})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def hf_greedy(model: torch.nn.Module, n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(PROMPT):].tolist()


def ours(model: torch.nn.Module, engine: str, n: int) -> list[int]:
    cfg = DecodeConfig(method="ar", engine=engine, max_new_tokens=n, stop_at_eos=False)
    return build_decoder(model, cfg).generate(PROMPT).token_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_every_engine_is_exact_or_refuses_in_one_line(arch):
    model = tiny(arch)
    expected = hf_greedy(model, 12)
    outcomes = {}
    for engine in ("hf", "static", "graph"):
        try:
            got = ours(model, engine, 12)
        except SpecdiffError as e:
            assert "\n" not in str(e) and "--engine hf" in str(e) or engine == "hf", str(e)
            outcomes[engine] = "refused"
            continue
        assert got == expected, f"{arch} on {engine}: different tokens without a refusal"
        outcomes[engine] = "exact"
    if arch in EXACT:
        assert outcomes == {"hf": "exact", "static": "exact", "graph": "exact"}
    if arch.startswith("gemma") or arch in ("phi3", "gpt_neox", "opt"):
        assert outcomes["static"] == outcomes["graph"] == "refused"
    if arch in ("gemma", "phi3", "gpt_neox", "opt"):  # probed at load on hf, and passing: no false refusal
        assert outcomes["hf"] == "exact"


@pytest.mark.parametrize("arch", ["gemma", "gemma2"])
def test_the_probe_refuses_a_model_the_config_check_lets_through(arch, monkeypatch):
    """Planted: with the config check off, Gemma's scaled embeddings and offset norms reach the
    probe, which must refuse them."""
    monkeypatch.setattr(static_model, "check_config", lambda cfg: None)
    with pytest.raises(SpecdiffError, match="does not reproduce"):
        ours(tiny(arch), "static", 4)


def test_the_probe_catches_a_planted_forward_bug(monkeypatch):
    """A static forward that drops the per-head q/k norms on a Qwen3 is refused at load."""
    model = tiny("qwen3")
    original = static_model.rms_norm

    def skip_head_norms(norm, x):
        return x if x.shape[-1] == 16 else original(norm, x)  # head_dim rows: the q/k norms

    monkeypatch.setattr(static_model, "rms_norm", skip_head_norms)
    with pytest.raises(SpecdiffError, match="does not reproduce"):
        ours(model, "static", 4)


def test_a_sliding_window_shorter_than_the_decode_is_refused_on_every_engine():
    model = tiny("mistral", sliding_window=12)
    for engine in ("hf", "static", "graph"):
        with pytest.raises(SpecdiffError, match="sliding window"):
            ours(model, engine, 16)
    assert ours(tiny("mistral", sliding_window=64), "static", 8) == hf_greedy(tiny("mistral", sliding_window=64), 8)


def test_the_hf_engine_probe_refuses_a_tree_forward_that_ignores_the_mask(monkeypatch):
    """Planted: a tree plan whose mask lets every node see every other one (siblings included);
    the hf engine's load-time probe must refuse the model (probed here as an untested family)."""
    from specdiff.target import hf_causal, tree_plan

    monkeypatch.setattr(hf_causal, "TREE_FORWARD_TESTED", ())
    build = tree_plan.TreePlan.build

    def leaky(tree, *args, **kwargs):
        plan = build(tree, *args, **kwargs)
        plan.mask.zero_()  # nothing hidden
        return plan

    monkeypatch.setattr(tree_plan.TreePlan, "build", staticmethod(leaky))
    with pytest.raises(SpecdiffError, match="does not reproduce"):
        ours(tiny("llama"), "hf", 4)


def outcome(model: torch.nn.Module, method: str, engine: str, expected: list[int], hf_refuses: bool) -> str:
    cfg = DecodeConfig(method=method, engine=engine, max_new_tokens=len(expected), stop_at_eos=False)
    try:
        got = build_decoder(model, cfg).generate(PROMPT).token_ids
    except SpecdiffError as e:
        assert "\n" not in str(e), str(e)
        # a static/graph refusal points to the hf engine, unless that one refuses the model too
        assert engine == "hf" or hf_refuses or "--engine hf" in str(e), str(e)
        return "refused"
    assert got == expected, f"{method} on {engine}: different tokens without a refusal"
    return "exact"


# Families past the Llama layout (from scripts/arch_sweep.py), each with the outcome its engines must
# give: latent attention and Doge's dynamic-mask attention run on the hf engine only; a hybrid with
# linear-attention layers and a decoder without a `layers` list are refused everywhere.
MORE = {
    "deepseek_v3": (dict(num_key_value_heads=4, head_dim=8, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8,
                         qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                         moe_intermediate_size=32, n_shared_experts=1, n_group=1, topk_group=1), "exact"),
    "doge": (dict(), "exact"),
    "qwen3_next": (dict(num_hidden_layers=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        shared_expert_intermediate_size=32, linear_num_value_heads=4, linear_num_key_heads=2,
                        linear_key_head_dim=16, linear_value_head_dim=16), "refused"),
    "gpt2": (dict(), "refused"),
}


@pytest.mark.parametrize("arch", sorted(MORE))
def test_more_families_are_exact_on_hf_or_refused_everywhere(arch):
    overrides, on_hf = MORE[arch]
    model = tiny(arch, **overrides)
    expected = hf_greedy(model, 12)
    hf_refuses = on_hf == "refused"
    got = {(m, e): outcome(model, m, e, expected, hf_refuses)
           for m, e in (("ar", "hf"), ("ar", "static"), ("ar", "graph"), ("pld", "hf"))}
    assert got == {("ar", "hf"): on_hf, ("ar", "static"): "refused", ("ar", "graph"): "refused", ("pld", "hf"): on_hf}


def test_a_sliding_window_model_decodes_the_same_twice_on_the_hf_engine():
    """Hugging Face's sliding-window cache layers also count their length in a Python int, and
    roll or concatenate once it reaches their size: the adapter sets it with the tensor one, so
    neither rejected tree nodes nor an earlier decode make a later one attend to other keys."""
    model = tiny("mistral", sliding_window=64)
    expected = hf_greedy(model, 24)
    # prompt lookup: its rejected drafts and the second decode both ran the count past the cache
    decoder = build_decoder(model, DecodeConfig(method="pld", engine="hf", max_new_tokens=24, stop_at_eos=False))
    assert [decoder.generate(PROMPT).token_ids for _ in range(2)] == [expected] * 2
