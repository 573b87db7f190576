"""Own dLLM training (CPU, seconds): the two-half layout gives each noised row exactly the logits
of a block-causal decode forward; a tiny model's loss falls; the folder reloads; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specdiff.dllm import base_visibility
from specdiff.dllm.model import MaskedDiffusionModel
from specdiff.dllm.adapters import load_dllm
from specdiff.cli import main
from specdiff.train import dllm_train as dt
from specdiff.train.loop import LOG_FILE

TINY = ["--hidden", "32", "--layers", "2", "--heads", "2", "--kv-heads", "2", "--head-dim", "16",
        "--intermediate", "64", "--seq-len", "64", "--block-length", "8", "--batch-size", "8"]


def periodic_tokens(path: Path, n: int = 20_000, period: int = 37, seed: int = 0) -> Path:
    """A stream that repeats one random phrase of `period` tokens: learnable in a few steps."""
    phrase = np.random.default_rng(seed).integers(2, 8192, period).astype(np.uint16)
    np.tile(phrase, n // period + 1)[:n].tofile(path)
    return path


def test_noised_rows_see_what_a_block_causal_decode_sees():
    cfg = dt.DLLMTrainConfig(vocab_size=64, mask_token_id=1, hidden_size=32, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=8, intermediate_size=64, seq_len=40, block_length=8,
                             max_position_embeddings=40, min_prompt=3, init_std=0.3)
    hf = dt.build_model(cfg).double().eval()
    x0 = torch.randint(2, 64, (3, 40), generator=torch.Generator().manual_seed(0))
    batch = dt.diffusion_batch(x0, cfg, torch.Generator().manual_seed(1))
    logits = dt.diffusion_logits(hf, batch)  # [3, 40, V] the noised half
    model = MaskedDiffusionModel(hf)
    for b in range(3):
        P = int(batch.prompt_len[b])
        for start in range(P, 40, 8):  # decode state: clean prompt + clean earlier blocks + noised block
            stop = min(start + 8, 40)
            ids = torch.cat([x0[b, :start], batch.ids[b, 40 + start:40 + stop]])
            vis = base_visibility(P, stop - P, 8, block_causal=True)
            alone = model(ids[None], vis[None], torch.arange(stop)[None])[0, start:stop]
            torch.testing.assert_close(logits[b, start:stop], alone, rtol=0, atol=1e-9)
        assert not batch.masked[b, :P].any() and batch.weight[b, :P].eq(0).all()


def test_train_loss_falls_and_folder_reloads(tmp_path):
    tokens = periodic_tokens(tmp_path / "tokens.bin")
    out = tmp_path / "dllm"
    argv = ["--tokens", str(tokens), "--out", str(out), *TINY, "--steps", "60", "--lr", "1e-2",
            "--warmup-steps", "5", "--log-every", "10", "--eval-every", "30", "--eval-windows", "16", "--device", "cpu"]
    assert main(["train-dllm", *argv]) == 0
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    evals = [r for r in log if "heldout_acc" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert evals[-1]["heldout_acc"] > evals[0]["heldout_acc"] and evals[-1]["step"] == 60
    saved = json.loads((out / dt.CONFIG_FILE).read_text())
    assert saved["config"]["block_length"] == 8 and saved["stats"]["steps"] == 60
    config = json.loads((out / "config.json").read_text())
    assert config["mask_token_id"] == 1 and config["specdiff_dllm"] is True and config["tie_word_embeddings"]
    assert config["dtype"] == "bfloat16" and config["max_position_embeddings"] == 64
    assert "held-out loss" in (out / "README.md").read_text()
    loaded = load_dllm(out)
    assert loaded.mask_id == 1 and loaded.tokenizer.token_to_id("<|mask|>") == 1
    assert loaded.model.dtype == torch.float32 and loaded.model.hf_model.config.num_hidden_layers == 2


@pytest.mark.parametrize("extra,message", [
    (["--tokens", "/nonexistent/tokens.bin"], "no token file"),
    ([], "no training data"),
    (["--corpus", "/nonexistent/corpus"], "corpus directory not found"),
    (["--heads", "3", "--kv-heads", "2"], "multiple of kv heads"),
    (["--seq-len", "16", "--block-length", "32"], "min prompt"),
    (["--eps", "1.5"], "eps"),
    (["--tokenizer", "/nonexistent/tok"], "no tokenizer"),
])
def test_bad_input_exits_2(tmp_path, capsys, extra, message):
    tokens = periodic_tokens(tmp_path / "tokens.bin", n=2000)
    base = ["--out", str(tmp_path / "out"), *TINY, "--steps", "1"]
    if not any(flag in extra for flag in ("--tokens", "--corpus")) and message != "no training data":
        base += ["--tokens", str(tokens)]
    assert main(["train-dllm", *base, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_short_token_file_is_refused(tmp_path, capsys):
    tokens = periodic_tokens(tmp_path / "tokens.bin", n=100)  # held-out tail of 2 tokens < seq len
    assert main(["train-dllm", "--tokens", str(tokens), "--out", str(tmp_path / "o"), *TINY, "--steps", "1"]) == 2
    assert "fewer than seq len" in capsys.readouterr().err
