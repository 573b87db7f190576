"""`specdiff speed`: a shape's per-token and per-round costs next to the HBM bound (tiny shapes on
the CPU here; the numbers themselves come from the GPU)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from specdiff.bench.speed import read_bytes_per_token, shape_config
from specdiff.cli import main


def test_public_shapes_have_their_published_sizes():
    """Qwen3-8B has 8.19B parameters and Qwen3-1.7B 1.72B (1.41B without its tied embedding)."""
    for name, params in (("qwen3-8b", 8.19e9), ("qwen3-1.7b", 1.72e9)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(shape_config(name))
        assert abs(sum(p.numel() for p in model.parameters()) / params - 1) < 0.01, name


def test_an_ar_step_reads_every_weight_but_the_input_embedding_plus_the_cache():
    cfg = shape_config("256x2", vocab=512)
    model = AutoModelForCausalLM.from_config(cfg)
    embed = model.get_input_embeddings().weight.numel() * 4
    weights = sum(p.numel() for p in model.parameters()) * 4 - embed
    kv = 2 * 2 * cfg.num_key_value_heads * cfg.head_dim * 100 * 4
    assert read_bytes_per_token(model, 100) == weights + kv


def test_speed_prints_every_method_for_a_tiny_shape(capsys):
    rc = main(["speed", "--shape", "256x2", "--vocab", "512", "--device", "cpu", "--dtype", "float32", "--engine",
               "static", "--prompt-tokens", "12", "--new-tokens", "6", "--budgets", "4,8", "--drafter-layers", "1",
               "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in result["rows"]] == ["ar", "ar, no overlap", "dflash", "ddtree@4", "ddtree@8"]
    assert all(r["ms_per_token"] > 0 and r["tau"] >= 1 for r in result["rows"])
    assert result["bound_ms"] is None  # no peak bandwidth known for a CPU
    assert [r["forward_nodes"] for r in result["rows"]] == [1, 1, 16, 5, 9]


def test_a_rounds_cost_beyond_its_forwards_subtracts_the_parts_it_ran():
    """The table's last column: the round less the target's forward of the rows that method
    verifies, and less the drafter's step where it drafts (AR does not)."""
    from specdiff.bench.speed import table

    rows = [dict(method=m, tau=1.0, ms_per_token=r, round_ms=r, mean_nodes=n, syncs_per_round=None, drafted=d,
                 forward_nodes=n) for m, r, n, d in (("ar", 5.0, 1, False), ("dflash", 7.0, 16, True),
                                                     ("ddtree@64", 9.0, 65, True), ("ddtree@8", 3.0, 9, True))]
    result = dict(shape="s", params=1e9, device="d", dtype="bfloat16", engine="graph", bound_ms=None, rows=rows,
                  anatomy={"draft_ms": 1.0, "verify_ms": {"1": 4.5, "16": 5.5, "65": 7.25}})
    cells = [line.rsplit("|", 2)[1].strip() for line in table(result).splitlines() if line.startswith("| ")][1:]
    assert cells == ["0.50", "0.50", "0.75", "-"]  # no forward of 9 rows timed: no cell


@pytest.mark.parametrize("argv,message", [
    (["--shape", "qwen9"], "unknown shape"),
    (["--shape", "100x2"], "multiple of 64"),
    (["--budgets", "0"], "budgets must be >= 1"),
    (["--new-tokens", "0"], "--new-tokens must be >= 1"),
])
def test_speed_bad_input_is_one_line(capsys, argv, message):
    assert main(["speed", "--device", "cpu", "--dtype", "float32", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
