"""`specdiff generate` honours its contract: JSON fields, and exit 2 with one line on bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from specdiff.cli import main
from specdiff.drafters.dflash import save_drafter
from specdiff.models.demo import build_demo_models
from specdiff.models.tiny import tiny_drafter, tiny_target


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_models(tmp_path_factory.mktemp("demo"))


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("method", ["ar", "pld", "dflash", "ddtree", "d2sd", "d2sd-hybrid"])
def test_generate_json(capsys, demo, method):
    target, drafter = demo
    code, out, err = run_cli(capsys, "generate", "--target", target, "--drafter", drafter, "--method", method,
                             "--vp-drafter", drafter, "--budget", "16", "--branches", "3", "--prompt", "def add(a, b):\n", "--max-new-tokens", "12", "--json", "--ignore-eos")
    assert code == 0, err
    row = json.loads(out)  # exactly one JSON object
    for key in ("method", "numerics", "text", "token_ids", "num_new_tokens", "rounds", "tau", "accept_hist", "wall_s", "ms_per_token"):
        assert key in row
    assert row["method"] == method and row["num_new_tokens"] == len(row["token_ids"]) == 12
    assert row["numerics"] == "fast"  # auto on a CPU
    assert row["tau"] == pytest.approx(row["num_new_tokens"] / row["rounds"])
    assert sum(row["accept_hist"]) == row["rounds"]
    assert sum(k * c for k, c in enumerate(row["accept_hist"])) == row["num_new_tokens"]
    if method == "ar":
        assert row["tau"] == 1.0
    if method == "d2sd":  # K = 3 branches: the paper would verify 4 rows of 16 (fewer only at the end)
        assert row["mean_tree_nodes"] < row["mean_candidate_rows"] <= 4 * 16


def test_top_k_1_at_t_above_0_is_greedy(capsys, demo):
    """Sampling from top-k 1 at any temperature is greedy decoding, for every seed and method (the
    earlier sampler emitted a filtered token wherever its noise reached u = 1)."""
    target, drafter = demo
    base = ["generate", "--target", target, "--drafter", drafter, "--prompt", "def f(x):", "--max-new-tokens", "8",
            "--json", "--ignore-eos"]
    greedy = json.loads(run_cli(capsys, *base, "--method", "ar")[1])["token_ids"]
    for method in ("ar", "ddtree"):
        for seed in ("848", "12345678901234"):
            code, out, err = run_cli(capsys, *base, "--method", method, "--temperature", "0.8", "--top-k", "1",
                                     "--seed", seed)
            assert code == 0, err
            assert json.loads(out)["token_ids"] == greedy, (method, seed)


def test_all_methods_same_text(capsys, demo):
    target, drafter = demo
    texts = set()
    for method in ("ar", "pld", "dflash", "ddtree", "d2sd", "d2sd-hybrid"):
        code, out, _ = run_cli(capsys, "generate", "--target", target, "--drafter", drafter, "--method", method,
                               "--vp-drafter", drafter, "--prompt", "import os\n", "--max-new-tokens", "20", "--json")
        texts.add(json.loads(out)["text"])
    assert len(texts) == 1


def bad_cases(demo, tmp_path):
    target, drafter = demo
    other = tmp_path / "other_drafter"  # built for a target with another hidden size
    save_drafter(tiny_drafter(tiny_target(hidden=32, vocab_size=512), block_size=16), other)
    other_taps = tmp_path / "other_taps"  # fits the target, but taps other layers than the DFlash drafter
    save_drafter(tiny_drafter(tiny_target(vocab_size=512), block_size=16, taps=[1, 2]), other_taps)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in ("config.json",):
        (corrupt / f).write_text(open(f"{drafter}/{f}").read())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    truncated = tmp_path / "truncated_target"
    shutil.copytree(target, truncated)
    weights = next(truncated.glob("*.safetensors"))
    state = load_file(str(weights))
    state.pop(next(iter(state)))
    save_file(state, str(weights))
    weights.write_bytes(weights.read_bytes()[:100])
    base = ["generate", "--target", target, "--drafter", drafter, "--prompt", "x = 1\n"]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    prompt_files = {"empty": "", "list row": "[1, 2]\n", "no prompt": '{"id": "a"}\n', "not json": "{oops\n"}
    for name, text in prompt_files.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "a", "prompt": "caf\xe9"}\n'.encode("latin-1"))
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "prompt": "x = 1"}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    bench = ["bench", "--target", target, "--drafter", drafter, "--methods", "ar", "--out", str(tmp_path / "b")]
    corrupt_results = tmp_path / "corrupt_results"
    corrupt_results.mkdir()
    (corrupt_results / "results.json").write_text('{"runs": [')
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=512, n_positions=64)).save_pretrained(gpt2)
    for f in Path(target).glob("tokenizer*"):
        shutil.copy(f, gpt2)
    return {
        "non-UTF-8 prompt file": base[:5] + ["--prompt-file", str(latin1)],
        **{f"bench prompts file: {name}": bench + ["--prompts", str(tmp_path / f"{name}.jsonl")]
           for name in [*prompt_files, "latin1"]},
        "bench --limit 0": bench + ["--prompts", str(good), "--limit", "0"],
        "bench --out is a file": bench[:-1] + [str(a_file), "--prompts", str(good)],
        "profile --out is a folder": ["profile", "--target", target, "--drafter", drafter, "--out", str(tmp_path)],
        "corrupt results for plot": ["plot", str(corrupt_results)],
        "corrupt results for versus": ["versus", str(corrupt_results)],
        "training on a device that does not exist": ["pretrain", "--corpus", str(tmp_path), "--out",
                                                     str(tmp_path / "pt"), "--device", "bogus"],
        "a GPT-2 target": ["generate", "--target", str(gpt2), "--method", "ar", "--prompt", "x"],
        "unknown method": base + ["--method", "nope"],
        "missing target folder": ["generate", "--target", str(tmp_path / "missing"), "--prompt", "x"],
        "missing drafter folder": base[:3] + ["--drafter", str(tmp_path / "gone"), "--prompt", "x"],
        "drafter does not fit": base[:3] + ["--drafter", str(other), "--prompt", "x"],
        "vp drafter does not fit the target": base + ["--method", "d2sd", "--vp-drafter", str(other)],
        "vp drafter does not fit the drafter": base + ["--method", "d2sd-hybrid", "--vp-drafter", str(other_taps)],
        "zero branches": base + ["--method", "d2sd", "--branches", "0"],
        "corrupt drafter": base[:3] + ["--drafter", str(corrupt), "--prompt", "x"],
        "corrupt target": ["generate", "--target", str(truncated), "--drafter", drafter, "--prompt", "x"],
        "over-long prompt": base[:5] + ["--prompt", "x = 1\n" * 400, "--max-new-tokens", "900"],
        "negative temperature": base + ["--temperature", "-0.5"],
        "infinite temperature": base + ["--temperature", "inf"],
        "NaN temperature": base + ["--temperature", "nan"],
        "temperature that overflows float32": base + ["--temperature", "1e-45"],
        "bench temperature list with inf": ["bench", "--target", target, "--drafter", drafter, "--temperature", "0,inf",
                                            "--prompts", str(good), "--out", str(tmp_path / "b")],
        "bad top-p": base + ["--top-p", "0"],
        "zero budget": base + ["--budget", "0"],
        "negative draft vocabulary": base + ["--draft-vocab", "-3"],
        "draft vocabulary past the target's": base + ["--draft-vocab", "100000"],
        "bench draft vocabulary past the target's": bench + ["--prompts", str(good), "--draft-vocab", "100000"],
        "missing prompt file": base[:5] + ["--prompt-file", str(tmp_path / "nope.txt")],
        "no prompt": base[:5],
        "unknown option": base + ["--frobnicate"],
        "unknown caddtree horizon": ["bench", "--target", target, "--drafter", drafter, "--methods", "caddtree",
                                     "--caddtree-horizon", "round,forever", "--prompts", str(good),
                                     "--out", str(tmp_path / "b")],
    }


# what each case's one line must name (the case fails for its own reason, not an earlier one)
EXPECTED = {
    "non-UTF-8 prompt file": "is not UTF-8 text", "bench prompts file: empty": "no prompts",
    "bench prompts file: list row": "not a JSON object", "bench prompts file: no prompt": "not a JSON object",
    "bench prompts file: not json": "not JSON", "bench prompts file: latin1": "is not UTF-8 text",
    "bench --limit 0": "--limit must be >= 1", "bench --out is a file": "is a file, not a folder",
    "negative draft vocabulary": "--draft-vocab must be 0", "draft vocabulary past the target's": "exceeds the target's",
    "bench draft vocabulary past the target's": "exceeds the target's",
    "profile --out is a folder": "is a folder, not a file", "corrupt results for plot": "is not a bench's results",
    "corrupt results for versus": "is not a bench's results",
    "training on a device that does not exist": "is not a device", "a GPT-2 target": "GPT2LMHeadModel is not supported",
    "unknown method": "--method", "missing target folder": "target folder not found",
    "missing drafter folder": "drafter folder not found", "drafter does not fit": "does not match the target",
    "vp drafter does not fit the target": "does not match the target", "vp drafter does not fit the drafter": "taps",
    "zero branches": "--branches", "corrupt drafter": "corrupt drafter", "corrupt target": "cannot load target",
    "over-long prompt": "exceeds the target's context", "negative temperature": "--temperature must be",
    "infinite temperature": "--temperature must be", "NaN temperature": "--temperature must be",
    "temperature that overflows float32": "--temperature must be",
    "bench temperature list with inf": "--temperature must be", "bad top-p": "--top-p", "zero budget": "--budget",
    "missing prompt file": "prompt file not found", "no prompt": "no prompt", "unknown option": "--frobnicate",
    "unknown caddtree horizon": "--caddtree-horizon",
}


def test_bad_input_exits_2_with_one_line(capsys, demo, tmp_path):
    cases = bad_cases(demo, tmp_path)
    capsys.readouterr()
    assert set(cases) == set(EXPECTED)
    for name, argv in cases.items():
        code, out, err = run_cli(capsys, *argv)
        assert EXPECTED[name] in err, f"{name}: {err!r}"
        assert code == 2, f"{name}: exit {code}, stderr {err!r}"
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("specdiff: error:"), f"{name}: {err!r}"
        assert "Traceback" not in err and out == ""


def test_process_exit_status(demo, tmp_path):
    """The installed entry point, end to end: exit status 2, one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "specdiff", "generate", "--target", str(tmp_path / "missing"), "--prompt", "x"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "target folder not found" in proc.stderr


@pytest.mark.parametrize("measure", ["steps", None])
def test_profile_then_caddtree(capsys, demo, tmp_path, measure):
    """`specdiff profile` on the graph engine saves a bucketed profile (either way of measuring;
    whole rounds by default there); caddtree reads it, builds trees that fill a bucket, and gives
    ar's text."""
    target, drafter = demo
    path = tmp_path / "prof.json"
    vp = ["--vp-drafter", drafter, "--branches", "3"] if measure is None else []  # D²SD's re-draft, priced
    code, out, err = run_cli(capsys, "profile", "--target", target, "--drafter", drafter, "--engine", "graph",
                             "--contexts", "16,64", "--nodes", "1,4,16,32", "--reps", "2", "--warmup", "1",
                             *(["--measure", measure] if measure else []), *vp, "--out", str(path))
    assert code == 0, err
    prof = json.loads(path.read_text())
    assert prof["buckets"] and prof["nodes"] == [1, 4, 16, 32] and prof["draft_ms"] > 0
    assert (prof["redraft_ms"] > 0, prof["redraft_rows"]) == ((True, 3) if vp else (False, 0))
    measure = measure or "rounds"
    assert prof["measure"] == measure and ("whole rounds" in out) == (measure == "rounds")
    assert all(len(row) == 4 and min(row) > 0 for row in prof["raw_verify_ms"])
    assert len(prof["root_alone_ms"]) == 2 and min(prof["root_alone_ms"]) > 0  # caddtree's root-alone step
    texts = []
    for method in ("ar", "caddtree"):
        code, out, err = run_cli(capsys, "generate", "--target", target, "--drafter", drafter, "--method", method,
                                 "--engine", "graph", "--profile", str(path), "--prompt", "import os\n",
                                 "--max-new-tokens", "20", "--json", "--ignore-eos")
        assert code == 0, err
        texts.append(json.loads(out)["text"])
    assert texts[0] == texts[1]


def test_bench_names_a_profile_measured_elsewhere(capsys, demo, tmp_path):
    """A caddtree bench whose cost profile was measured on another device says so in its report
    (its tree sizes follow that device's costs); one measured here adds no line."""
    from oracle_drafters import rising_profile

    from specdiff.bench.harness import profile_note

    target, drafter = demo
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "import os\n"}) + "\n")
    rising_profile().save(tmp_path / "prof.json")  # measured on the device "test"
    code, _, err = run_cli(capsys, "bench", "--target", target, "--drafter", drafter, "--engine", "static",
                           "--methods", "ar,caddtree", "--profile", str(tmp_path / "prof.json"), "--prompts",
                           str(prompts), "--max-new-tokens", "6", "--warmup", "0", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert "cost profile was measured on test, not on this run's cpu-" in (tmp_path / "b" / "report.md").read_text()
    assert profile_note({"caddtree_profile_device": "NVIDIA H200", "device_name": "NVIDIA H200"}) == []


def test_bench_interleaves_methods_and_checks_outputs(capsys, demo, tmp_path):
    """`specdiff bench` writes results.json and report.md with every method on every prompt, AR
    first on each prompt and the others in rotated order, outputs compared with AR's (0 here)."""
    target, drafter = demo
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(["import os\n", "def f(x):\n", "class A:\n"])))
    out = tmp_path / "bench"
    code, stdout, err = run_cli(capsys, "bench", "--target", target, "--drafter", drafter, "--engine", "static",
                                "--methods", "ar,dflash,ddtree", "--budgets", "4,8", "--prompts", str(prompts),
                                "--temperature", "0,1", "--max-new-tokens", "10", "--warmup", "1", "--out", str(out))
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert result["mismatches"] == 0 and (out / "report.md").is_file() and "| ddtree@8 |" in stdout
    methods = ["ar", "dflash", "ddtree@4", "ddtree@8"]
    for temp in (0.0, 1.0):
        runs = [r for r in result["runs"] if r["temperature"] == temp]
        orders = [[r["method"] for r in runs if r["prompt_id"] == f"p{i}"] for i in range(3)]
        assert all(o[0] == "ar" and sorted(o) == sorted(methods) for o in orders)
        assert len({tuple(o) for o in orders}) == 3  # rotated from prompt to prompt
        assert all(r["matches_ar"] for r in runs if r["method"] != "ar")
    # each prompt ran with its own seed, derived from (seed, prompt set, prompt id), the same for every method
    from specdiff.sampling import derive_seed

    assert all(r["seed"] == derive_seed(0, "p", r["prompt_id"]) for r in result["runs"])
    assert len({r["seed"] for r in result["runs"]}) == 3
    assert {(r["method"], r["prompts"]) for r in result["summary"]} == {(m, 3) for m in methods}
    # every round's size and wall time are kept, and they add up to the run's
    for r in result["runs"]:
        assert len(r["tree_sizes"]) == len(r["round_ms"]) == r["rounds"] and r["prompt_tokens"] > 1
        assert sum(r["tree_sizes"]) / r["rounds"] == pytest.approx(r["mean_tree_nodes"])
        assert sum(r["round_ms"]) == pytest.approx(1000 * r["decode_s"], rel=0.2, abs=2.0)
    # which bench.round_costs groups by bucket and prices with a profile
    from specdiff.bench.round_costs import round_cost_table
    from specdiff.methods.caddtree.cost_model import CostProfile

    prof = CostProfile(device="t", target="t", drafter="d", dtype="float32", draft_ms=3.0, contexts=[1, 1000],
                       nodes=[1, 64], verify_ms=[[1.0, 1.0], [1.0, 1.0]])
    rows = round_cost_table(result, prof)
    assert sum(r["rounds"] for r in rows) == sum(r["rounds"] for r in result["runs"])
    top = {"ar": 1, "dflash": 16, "ddtree@4": 8, "ddtree@8": 16}  # the last rounds of a decode draft less
    for method, bucket in top.items():
        mine = [r for r in rows if r["method"] == method]
        assert max(r["bucket"] for r in mine) == bucket and all(r["bucket"] & (r["bucket"] - 1) == 0 for r in mine)
    assert all(r["predicted_ms"] == (1.0 if r["bucket"] == 1 else 4.0) for r in rows)  # a root alone: no drafter
    # D²SD's rounds also pay the VP re-draft, where the profile measured it
    from dataclasses import replace

    from specdiff.bench.round_costs import drafter_ms

    vp_prof = replace(prof, redraft_ms=2.0, redraft_rows=4)
    assert [drafter_ms(vp_prof, m) for m in ("ddtree@8", "caddtree/decode", "d2sd", "d2sd-hybrid@16")] == [3, 3, 5, 5]


def _runs(method: str, seconds: list[float]) -> list[dict]:
    return [{"prompt_set": "s", "temperature": 0.0, "method": method, "prompt_id": f"p{i}",
             "num_new_tokens": 100, "decode_s": s} for i, s in enumerate(seconds)]


def test_versus_picks_the_best_fixed_budget_and_bounds_the_gap(capsys, tmp_path):
    """`bench.versus`: caddtree against the fastest ddtree@B of the run, paired over prompts. A
    uniform 10% gain is +10% with a tight interval; a tie with prompt noise has an interval that
    holds 0; without a caddtree run beside a ddtree@B run it is bad input (exit 2)."""
    from specdiff.bench.versus import versus_best_fixed

    rng = np.random.default_rng(0)
    base = list(rng.uniform(0.5, 2.0, size=40))  # prompts differ a lot; the pairing cancels that
    result = {"runs": _runs("ddtree@16", [1.3 * s for s in base]) + _runs("ddtree@32", base)
              + _runs("caddtree", [s / 1.1 for s in base])}
    (row,) = versus_best_fixed(result)
    assert row["best_fixed"] == "ddtree@32" and row["prompts"] == 40
    assert row["advantage"] == pytest.approx(0.10) and row["ci95"] == pytest.approx([0.10, 0.10], abs=1e-9)
    pairs = [s for s in base[:20] for _ in (0, 1)]  # each prompt twice: one 5% faster, one 5% slower
    noisy = [s * (1.05 if i % 2 else 0.95) for i, s in enumerate(pairs)]
    (row,) = versus_best_fixed({"runs": _runs("ddtree@32", pairs) + _runs("caddtree", noisy)})
    lo, hi = row["ci95"]
    assert row["advantage"] == pytest.approx(0.0, abs=1e-12) and lo < 0.0 < hi and hi - lo < 0.1
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result))
    assert main(["versus", str(path)]) == 0 and "| s | 0 | ddtree@32 |" in capsys.readouterr().out
    path.write_text(json.dumps({"runs": _runs("ddtree@32", base)}))
    assert main(["versus", str(path)]) == 2 and "no caddtree run" in capsys.readouterr().err
    path.write_text(json.dumps(result))
    assert main(["versus", str(path), "--method", "caddtree/decode"]) == 2
    assert "no caddtree/decode run" in capsys.readouterr().err


def test_bound_reads_a_steps_profile_and_refuses_a_whole_round_one(capsys, tmp_path):
    """The bound (C_d + C_v(n)) / tau against the measured ms/token; a whole-round profile already
    holds the loop's overhead, so the bound would hide it: exit 2 with one line."""
    from specdiff.methods.caddtree.cost_model import CostProfile

    summary = [{"prompt_set": "s", "temperature": 0.0, "method": "ddtree@32", "tau": 2.0, "mean_tree_nodes": 33.0,
                "ms_per_token": 1.5}]
    (tmp_path / "results.json").write_text(json.dumps({"summary": summary, "runs": []}))
    for measure in ("steps", "rounds"):
        CostProfile(device="d", target="t", drafter="d", dtype="float32", draft_ms=0.5, contexts=[512], nodes=[1, 64],
                    verify_ms=[[1.0, 2.0]], measure=measure).save(tmp_path / f"{measure}.json")
    assert main(["bound", str(tmp_path / "results.json"), str(tmp_path / "steps.json")]) == 0
    # C_v(33) = 1 + 32/63, bound (0.5 + C_v) / 2, overhead 1.5 / bound - 1
    bound = (0.5 + 1.0 + 32 / 63) / 2
    assert f"| {1.5 / bound - 1:+.0%}".replace("%", "") in capsys.readouterr().out.replace("%", "")
    assert main(["bound", str(tmp_path / "results.json"), str(tmp_path / "rounds.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--measure steps" in err


def test_an_interrupted_bench_keeps_every_finished_run(capsys, demo, tmp_path, monkeypatch):
    """Ctrl-C during a bench (KeyboardInterrupt) exits 130 and leaves results.json with the runs
    that finished, marked incomplete."""
    from specdiff.decode import SpeculativeDecoder

    target, drafter = demo
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"x = {i}\n"}) + "\n" for i in range(3)))
    generate, calls = SpeculativeDecoder.generate, []

    def interrupted(self, ids):
        calls.append(1)
        if len(calls) == 2 + 5:  # 2 warm-up decodes (1 per method), then 4 timed runs finish
            raise KeyboardInterrupt
        return generate(self, ids)

    monkeypatch.setattr(SpeculativeDecoder, "generate", interrupted)
    out = tmp_path / "bench"
    code, _, err = run_cli(capsys, "bench", "--target", target, "--drafter", drafter, "--engine", "static",
                           "--methods", "ar,dflash", "--prompts", str(prompts), "--max-new-tokens", "6",
                           "--warmup", "1", "--out", str(out))
    assert code == 130 and "4 finished runs saved" in err
    result = json.loads((out / "results.json").read_text())
    assert result["complete"] is False and len(result["runs"]) == 4
    assert "Interrupted" in (out / "report.md").read_text()


def test_a_normal_run_prints_only_its_own_lines(demo):
    """No library warning (transformers' deprecations, say) reaches a user's stderr."""
    target, drafter = demo
    proc = subprocess.run([sys.executable, "-m", "specdiff", "generate", "--target", target, "--drafter", drafter,
                           "--method", "ddtree", "--prompt", "x = 1", "--max-new-tokens", "6", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout)["num_new_tokens"] > 0


def test_progress_off_a_terminal_is_the_first_line_then_one_per_tenth_and_quiet_is_silent(capsys):
    from specdiff.cli.common import ProgressBar

    bar = ProgressBar("decode")
    for i in range(1, 101):
        bar(f"prompt {i}", i, 100)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 11 and lines[0] == "[1/100 decodes] prompt 1" and lines[-1].startswith("[100/100")
    quiet = ProgressBar("decode", quiet=True)
    quiet("x", 1, 1)
    assert capsys.readouterr().err == ""


def test_demo_on_a_cpu_says_why_and_runs_the_cpus_best_setting(capsys):
    """On a CPU the demo says in one line, before the numbers, why a tree gains little there, and
    sets ar beside pld (no drafter forward) rather than a method slower than ar."""
    code, out, err = run_cli(capsys, "demo", "--max-new-tokens", "16", "--prompts", "3", "--device", "cpu")
    assert code == 0, err
    assert out.index("compute-bound") < out.index("method     tokens")
    assert "\npld " in out and "pld outputs identical to ar: 3 of 3" in out
    assert out.startswith("specdiff demo on ") and "3 held-out prompts" in out
