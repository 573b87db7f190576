"""`specdiff dllm generate | calibrate | bench` on a tiny own-format dLLM (trained 2 steps, CPU):
JSON output, Spiffy = baseline, graphs written and found by key, bench exactness, and one-line
exit-2 errors for bad folders and settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from specdiff import cli

TINY = ["--hidden", "32", "--layers", "2", "--heads", "2", "--kv-heads", "2", "--head-dim", "16",
        "--intermediate", "64", "--seq-len", "96", "--block-length", "8", "--batch-size", "4"]
SHORT = ["--gen-length", "16", "--block-length", "8"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dllm_cli")
    tokens = root / "tokens.bin"
    np.random.default_rng(0).integers(2, 8192, 5000).astype(np.uint16).tofile(tokens)
    out = root / "dllm"
    assert cli.main(["train-dllm", "--tokens", str(tokens), "--out", str(out), *TINY, "--steps", "2", "--eval-windows", "4",
                    "--device", "cpu"]) == 0
    return out


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["dllm", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_json_spiffy_equals_baseline(model_dir, capsys):
    results = {}
    for method in ("baseline", "spiffy"):
        for temperature in ("0", "0.8"):
            code, out, _ = run_cli(capsys, "generate", "--model", model_dir, "--prompt", "def add(a, b):", *SHORT,
                                   "--method", method, "--temperature", temperature, "--budget", "4", "--json")
            assert code == 0
            results[method, temperature] = json.loads(out)
    for temperature in ("0", "0.8"):
        base, spec = results["baseline", temperature], results["spiffy", temperature]
        assert spec["token_ids"] == base["token_ids"] and len(base["token_ids"]) == 16
        assert base["nfe"] == base["steps"] == 16 and spec["steps"] == 16 and spec["nfe"] + spec["accepted"] == 16
        assert spec["settings"]["graph"] == "default_graph" and spec["settings"]["budget"] == 4
        assert set(base) == {"token_ids", "text", "nfe", "steps", "accepted", "seconds", "settings"}


def test_calibrate_writes_keyed_graphs_that_generate_finds(model_dir, tmp_path, capsys):
    out = tmp_path / "graphs"
    code, stdout, _ = run_cli(capsys, "calibrate", "--model", model_dir, *SHORT, "--num-prompts", "2",
                              "--budgets", "2,3", "--out", out)
    assert code == 0
    paths = sorted(Path(p) for p in stdout.split())
    assert [p.name for p in paths] == ["graph-low_confidence-s8-b8-T0-none-D2.json",
                                       "graph-low_confidence-s8-b8-T0-none-D3.json"]
    key = json.loads(paths[1].read_text())["key"]
    assert key["budget"] == 3 and key["steps_per_block"] == 8 and key["model"] == "dllm"
    code, stdout, _ = run_cli(capsys, "generate", "--model", model_dir, "--prompt", "x = 1", *SHORT, "--budget", "3",
                              "--graph", out, "--temperature", "0.5", "--json")  # nearest temperature: T=0
    assert code == 0 and json.loads(stdout)["settings"]["graph"] == str(paths[1])
    code, stdout, _ = run_cli(capsys, "generate", "--model", model_dir, "--prompt", "x = 1", *SHORT, "--budget", "3",
                              "--graph", out, "--remasking", "threshold", "--json")  # no threshold graph there
    assert code == 0 and json.loads(stdout)["settings"]["graph"] == "default_graph"


def test_bench_checks_exactness_and_writes_tables(model_dir, tmp_path, capsys):

    out = tmp_path / "bench"
    code = cli.main(["dllm", "bench", "--model", str(model_dir), *SHORT, "--num-prompts", "2", "--budgets", "2,3", "--warmup", "0",
                       "--out", str(out)])
    capsys.readouterr()
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert result["mismatches"] == 0 and len(rows) == 6
    assert [(r["setting"], r["method"], r["budget"]) for r in rows[:3]] == [
        ("fixed", "baseline", None), ("fixed", "spiffy", 2), ("fixed", "spiffy", 3)]
    assert all(r["mean_steps"] == 16 for r in rows[:3]) and rows[0]["nfe_ratio"] == 1.0
    assert result["environment"]["torch"] and "| fixed | spiffy | 3 |" in (out / "results.md").read_text()


def _broken_copy(model_dir: Path, tmp_path: Path, how: str) -> Path:
    bad = tmp_path / f"bad_{how}"
    shutil.copytree(model_dir, bad)
    if how == "no_mask":
        config = json.loads((bad / "config.json").read_text())
        del config["mask_token_id"]
        (bad / "config.json").write_text(json.dumps(config))
    else:  # corrupt weights: cut the safetensors file in half
        weights = next(bad.glob("*.safetensors"))
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("case,message", [
    ("missing", "dLLM folder not found"),
    ("no_mask", "no integer mask_token_id"),
    ("corrupt", "cannot load specdiff model"),
    ("gen_length", "not a multiple of block_length"),
    ("temperature", "temperature must be 0 (greedy) or a finite number"),
    ("temperature_inf", "temperature must be 0 (greedy) or a finite number"),
    ("long_prompt", "exceeds the model's 96 positions"),
    ("no_prompt", "no prompt"),
    ("budget", "--budget must be >= 1"),
    ("graph", "graph file or folder not found"),
    ("latin1_prompt", "is not UTF-8 text"),
    ("bench_zero_prompts", "--num-prompts must be >= 1"),
    ("calibrate_zero_prompts", "--num-prompts must be >= 1"),
    ("bench_out_is_a_file", "is a file, not a folder"),
    ("calibrate_out_is_a_file", "is a file, not a folder"),
])
def test_bad_input_is_one_line_exit_2(model_dir, tmp_path, capsys, case, message):
    model = {"missing": tmp_path / "nowhere", "no_mask": None, "corrupt": None}.get(case, model_dir)
    if model is None:
        model = _broken_copy(model_dir, tmp_path, case)
    argv = ["generate", "--model", model, "--prompt", "def f():", *SHORT]
    extra = {"gen_length": ["--gen-length", "20"], "temperature": ["--temperature", "-1"],
             "temperature_inf": ["--temperature", "inf"],
             "long_prompt": ["--prompt", "x " * 200], "budget": ["--budget", "0"],
             "graph": ["--graph", tmp_path / "no_graph.json"]}.get(case, [])
    if case == "no_prompt":
        argv.remove("--prompt")
        argv.remove("def f():")
    if case == "latin1_prompt":
        latin1 = tmp_path / "p.txt"
        latin1.write_bytes("def caf\xe9():".encode("latin-1"))
        argv = ["generate", "--model", model, "--prompt-file", latin1, *SHORT]
    if case.startswith(("bench", "calibrate")):
        a_file = tmp_path / "a_file"
        a_file.write_text("")
        out = a_file if case.endswith("file") else tmp_path / "out"
        argv = [case.split("_")[0], "--model", model, *SHORT, "--out", out]
        extra = ["--num-prompts", "0"] if "zero" in case else []
    code, _, err = run_cli(capsys, *argv, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory) -> Path:
    from dllm_fixtures import write_fixture

    return write_fixture("dream", tmp_path_factory.mktemp("dream") / "dream", mask_id=63)


def test_generate_json_on_a_dream_folder(dream_dir, capsys):
    # a remote-code (trust_remote_code) stand-in for Dream: --cache auto picks the dual cache
    runs = {}
    for method in ("baseline", "spiffy"):
        code, out, err = run_cli(capsys, "generate", "--model", dream_dir, "--prompt", "t3 t5 t7", *SHORT,
                                 "--method", method, "--budget", "3", "--json")
        assert code == 0, err
        runs[method] = json.loads(out)
    base, spec = runs["baseline"], runs["spiffy"]
    assert base["settings"]["kind"] == "dream" and base["settings"]["cache"] == "dual"
    assert spec["token_ids"] == base["token_ids"] and len(base["token_ids"]) == 16
    assert base["nfe"] == 16 and spec["nfe"] + spec["accepted"] == 16


def test_sdar_dual_cache_is_one_line_exit_2(tmp_path, capsys):
    from dllm_fixtures import write_fixture

    sdar = write_fixture("sdar", tmp_path / "sdar", mask_id=63)
    code, _, err = run_cli(capsys, "generate", "--model", sdar, "--prompt", "t3 t5 t7", *SHORT, "--cache", "dual")
    assert code == 2 and "sdar has no dual cache" in err and len(err.strip().splitlines()) == 1, err


def test_calibrate_bad_budgets(model_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "calibrate", "--model", model_dir, *SHORT, "--budgets", "3,x", "--out", tmp_path)
    assert code == 2 and "--budgets" in err
