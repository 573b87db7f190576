"""One short run of the DFlash trainer on the CPU: regenerate, train, save, resume."""

import json

import numpy as np
import torch

from specdiff.drafters.dflash import load_drafter
from specdiff.models.demo import build_demo_models
from specdiff.train import dflash_train


def test_regenerate_and_train(tmp_path):
    target, _ = build_demo_models(tmp_path / "models")
    tokens = np.random.default_rng(0).integers(2, 500, size=5000).astype(np.uint16)
    tokens.tofile(tmp_path / "tokens.bin")
    argv = ["--target", target, "--tokens", str(tmp_path / "tokens.bin"), "--data", str(tmp_path / "regen.pt"),
            "--out", str(tmp_path / "drafter"), "--device", "cpu", "--layers", "1", "--num-features", "2",
            "--block-size", "8", "--anchors", "8", "--batch-size", "4", "--lr", "3e-3", "--steps", "20",
            "--num-sequences", "40", "--prompt-len", "12", "--response-len", "24", "--regen-batch", "20"]
    assert dflash_train.main(argv) == 0
    blob = torch.load(tmp_path / "regen.pt")
    assert blob["ids"].shape == (40, 36)
    log = [json.loads(line) for line in (tmp_path / "drafter" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 20 and log[-1]["loss"] < log[0]["loss"]
    cfg = json.loads((tmp_path / "drafter" / "config.json").read_text())
    assert cfg["specdiff"]["train_config"]["block_size"] == 8
    assert len(cfg["specdiff"]["stats"]["heldout_slot_accuracy"]) == 7
    drafter = load_drafter(tmp_path / "drafter")
    assert drafter.spec.block_size == 8 and drafter.fc.weight.dtype == torch.float32
    # resume: continues from step 20
    assert dflash_train.main(argv[:-8] + ["--steps", "23", "--num-sequences", "40", "--prompt-len", "12",
                                           "--response-len", "24", "--resume"]) == 0
    log = [json.loads(line) for line in (tmp_path / "drafter" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 23
