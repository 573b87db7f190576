"""Target pretraining on a tiny corpus and model: token files, loss going down, checkpoint, resume
(CPU, seconds)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdiff.errors import SpecdiffError
from specdiff.cli import main
from specdiff.train import loop
from specdiff.train import pretrain as pt
from specdiff.train import tokens as tk
from specdiff.train.corpus import iter_documents, normalize_source, write_documents
from specdiff.train.tokenizer import tiny_tokenizer

# Stdlib modules as documents: real Python, present on every machine.
_TRAIN_MODULES = ("textwrap", "dataclasses", "functools", "json.encoder", "json.decoder", "string", "shlex")
_HELDOUT_MODULES = ("fnmatch", "bisect")

_TINY_MODEL = dict(
    hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
    max_position_embeddings=128,
)  # fmt: skip


def _module_text(name: str) -> str:
    text = normalize_source(Path(importlib.import_module(name).__file__).read_bytes())
    assert text is not None
    return text


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    corpus = root / "corpus"
    corpus.mkdir()
    write_documents([_module_text(m) for m in _TRAIN_MODULES], corpus / "train.txt")
    write_documents([_module_text(m) for m in _HELDOUT_MODULES], corpus / "heldout.txt")
    return {"root": root, "corpus": corpus, "tokenizer": tiny_tokenizer(root / "tok", vocab_size=512)}


@pytest.fixture(scope="module")
def tokens(dirs) -> Path:
    """Token files for the training tests, encoded once, in-process (no worker start-up)."""
    out = dirs["root"] / "tokens-train"
    tk.tokenize_corpus(dirs["corpus"], dirs["tokenizer"], out, num_workers=1)
    return out


def _tiny_config(**overrides) -> pt.PretrainConfig:
    settings = dict(
        _TINY_MODEL, seq_len=64, batch_size=4, lr=1e-2, warmup_steps=2, max_steps=20, eval_every=10,
        eval_tokens=1024, log_every=1, device="cpu", seed=0,
    )  # fmt: skip
    settings.update(overrides)
    return pt.PretrainConfig(**settings)


def test_tokenize_corpus_round_trip_and_cache(dirs):
    out = dirs["root"] / "tokens"
    files = tk.tokenize_corpus(dirs["corpus"], dirs["tokenizer"], out, num_workers=1)
    assert not files.cached and files.vocab_size == 512 and files.eos_token_id == 0
    tok = AutoTokenizer.from_pretrained(str(dirs["tokenizer"]))
    for split in tk.SPLITS:
        data = files.load(split)
        assert data.dtype == np.uint16 and len(data) == files.tokens[split]
        docs = list(iter_documents(dirs["corpus"] / f"{split}.txt"))
        assert files.docs[split] == len(docs) and data[-1] == 0
        # Every document, then the eos id: cutting at eos gives the documents back.
        cuts = np.flatnonzero(data == 0)
        first = np.asarray(data[: cuts[0]]).tolist()
        assert tok.decode(first) == docs[0]
    again = tk.tokenize_corpus(dirs["corpus"], dirs["tokenizer"], out, num_workers=1)
    assert again.cached and again.tokens == files.tokens


def test_tokenize_workers_match_in_process(dirs):
    one = tk.tokenize_corpus(dirs["corpus"], dirs["tokenizer"], dirs["root"] / "tok1", num_workers=1)
    two = tk.tokenize_corpus(dirs["corpus"], dirs["tokenizer"], dirs["root"] / "tok2", num_workers=2)
    for split in tk.SPLITS:
        assert np.array_equal(one.load(split), two.load(split))


def test_lr_schedule_warmup_cosine_and_time_budget():
    cfg = pt.PretrainConfig(lr=1.0, min_lr_frac=0.1, warmup_steps=10, max_steps=110)
    assert loop.lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert loop.lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    sched = loop.Schedule(cfg)
    assert loop.lr_at(cfg, 60, sched.progress(60, 0.0)) == pytest.approx(0.55)
    assert loop.lr_at(cfg, 110, sched.progress(110, 0.0)) == pytest.approx(0.1)
    # A binding time budget drives the decay by wall-clock.
    timed = loop.Schedule(pt.PretrainConfig(warmup_steps=10, max_steps=10**6), decay_s=100.0)
    assert timed.progress(20, 50.0) == pytest.approx(0.5)
    resumed = loop.Schedule(timed.cfg, start_progress=0.5, decay_s=100.0)
    assert resumed.progress(20, 0.0) == 0.5 and resumed.progress(20, 50.0) == pytest.approx(0.75)


def test_pretrain_checkpoint_and_resume(dirs, tokens):
    out = dirs["root"] / "ckpt"
    stats = pt.pretrain(_tiny_config(), dirs["corpus"], dirs["tokenizer"], out, tokens_dir=tokens)
    assert stats.steps == 20 and stats.stop_reason == "max_steps" and stats.tokens_seen == 20 * 4 * 64

    rows = [json.loads(line) for line in (out / loop.LOG_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses  # ~0.7 seen
    assert stats.heldout_loss is not None and stats.heldout_loss < np.log(512) - 0.5  # below uniform
    assert stats.heldout_ppl == pytest.approx(np.exp(stats.heldout_loss))

    # A plain Hugging Face folder: bf16 shards, tokenizer, special ids, our config beside.
    saved_cfg = json.loads((out / pt.CONFIG_FILE).read_text())
    assert saved_cfg["hidden_size"] == 64 and saved_cfg["vocab_size"] == 512 and saved_cfg["max_steps"] == 20
    assert json.loads((out / pt.STATS_FILE).read_text())["steps"] == 20
    assert all(f.stat().st_size <= 15_000_000 for f in out.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16 and model.config.model_type == "qwen3"
    assert model.config.eos_token_id == tok.eos_token_id == 0 and model.generation_config.eos_token_id == 0
    with torch.no_grad():
        logits = model(input_ids=tok("def f(x):\n", return_tensors="pt").input_ids).logits
    assert logits.shape[-1] == 512 and torch.isfinite(logits).all()

    # A fresh run must not overwrite a checkpoint.
    with pytest.raises(SpecdiffError, match="--resume"):
        pt.pretrain(_tiny_config(), dirs["corpus"], dirs["tokenizer"], out, tokens_dir=tokens)

    # Resume through the CLI for 5 more steps (total 25), tokenizer taken from the checkpoint.
    argv = ["--corpus", str(dirs["corpus"]), "--out", str(out), "--tokens", str(tokens)]
    argv += ["--resume", "--steps", "25"]
    assert main(["pretrain", *argv]) == 0
    resumed = json.loads((out / pt.STATS_FILE).read_text())
    assert resumed["steps"] == 25 and resumed["run_steps"] == 5 and resumed["tokens_seen"] == 25 * 4 * 64
    rows = [json.loads(line) for line in (out / loop.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 26))
    assert json.loads((out / pt.CONFIG_FILE).read_text())["max_steps"] == 25
    state = torch.load(out / loop.STATE_FILE, weights_only=True)
    assert state["state"]["step"] == 25 and "optimizer" in state


def test_resume_matches_uninterrupted_run(dirs, tokens):
    """With float32 checkpoints and a constant LR, 6 steps + resume for 4 replays the losses of
    10 uninterrupted steps: weights, AdamW moments and the data RNG all come back."""
    common = dict(min_lr_frac=1.0, warmup_steps=0, eval_tokens=0, save_dtype="float32")
    whole, split = dirs["root"] / "whole", dirs["root"] / "split"
    for out, steps in ((whole, 10), (split, 6)):
        cfg = _tiny_config(max_steps=steps, **common)
        pt.pretrain(cfg, dirs["corpus"], dirs["tokenizer"], out, tokens_dir=tokens)
    cfg = pt.PretrainConfig.load(split / pt.CONFIG_FILE)
    cfg.max_steps = 10
    pt.pretrain(cfg, dirs["corpus"], None, split, resume=True, tokens_dir=tokens)

    def losses(out: Path) -> list[float]:
        rows = [json.loads(line) for line in (out / loop.LOG_FILE).read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    assert losses(split) == pytest.approx(losses(whole), abs=1e-4)


def test_time_budget_stops_and_saves(dirs, tokens):
    out = dirs["root"] / "ckpt-budget"
    cfg = _tiny_config(max_steps=1000, time_budget_s=1e-6, eval_tokens=256)
    stats = pt.pretrain(cfg, dirs["corpus"], dirs["tokenizer"], out, tokens_dir=tokens)
    assert stats.stop_reason == "time_budget" and stats.steps < 1000
    assert (out / "config.json").is_file() and (out / loop.STATE_FILE).is_file()


def test_resume_rejects_other_shape(dirs, tokens):
    out = dirs["root"] / "ckpt-shape"
    cfg = _tiny_config(max_steps=1, eval_tokens=0)
    pt.pretrain(cfg, dirs["corpus"], dirs["tokenizer"], out, tokens_dir=tokens)
    argv = ["--corpus", str(dirs["corpus"]), "--out", str(out), "--tokens", str(tokens)]
    assert main(["pretrain", *argv, "--resume", "--steps", "2", "--hidden", "32"]) == 2
