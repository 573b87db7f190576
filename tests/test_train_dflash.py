"""One short run of the DFlash trainer on the CPU: regenerate, train, save, resume."""

import json

import numpy as np
import torch

from specdiff.drafters.dflash import load_drafter
from specdiff.models.demo import build_demo_models
from specdiff.cli import main
from specdiff.train import dflash_train


def tiny_run_argv(tmp_path, out: str, steps: int, num_sequences: int, regen_batch: int) -> list[str]:
    """Trainer flags for a tiny CPU run on the demo target and random corpus tokens."""
    target, _ = build_demo_models(tmp_path / "models")
    tokens = np.random.default_rng(0).integers(2, 500, size=5000).astype(np.uint16)
    tokens.tofile(tmp_path / "tokens.bin")
    return ["--target", target, "--tokens", str(tmp_path / "tokens.bin"), "--data", str(tmp_path / "regen.pt"),
            "--out", str(tmp_path / out), "--device", "cpu", "--layers", "1", "--num-features", "2",
            "--block-size", "8", "--anchors", "8", "--batch-size", "4", "--lr", "3e-3", "--steps", str(steps),
            "--num-sequences", str(num_sequences), "--prompt-len", "12", "--response-len", "24",
            "--regen-batch", str(regen_batch)]


def test_regenerate_and_train(tmp_path):
    argv = tiny_run_argv(tmp_path, "drafter", steps=20, num_sequences=40, regen_batch=20)
    assert main(["train-drafter", *argv]) == 0
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
    assert main(["train-drafter", *argv[:-8]] + ["--steps", "23", "--num-sequences", "40", "--prompt-len", "12",
                                           "--response-len", "24", "--resume"]) == 0
    log = [json.loads(line) for line in (tmp_path / "drafter" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 23


def _tiny_drafter_and_batch(tmp_path, block=8):
    target_dir, _ = build_demo_models(tmp_path / "models")
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    cfg = dflash_train.DrafterTrainConfig(layers=1, num_features=2, block_size=block)
    drafter = dflash_train.build_drafter(target, cfg, mask_token_id=1)
    drafter.bind(target.get_input_embeddings(), target.get_output_embeddings())
    ids = torch.randint(2, 200, (2, 40), generator=torch.Generator().manual_seed(0))
    feats = dflash_train.target_features(target, ids, drafter.spec.target_layer_ids)
    anchors = torch.tensor([[5, 20], [9, 31]])
    return drafter, target.get_output_embeddings(), feats, ids, anchors


def test_vp_loss_scores_only_masked_slots_and_restarts_decay(tmp_path):
    drafter, head, feats, ids, anchors = _tiny_drafter_and_batch(tmp_path)
    base, _ = dflash_train.block_loss(drafter, head, feats, ids, anchors, 7.0)
    zero, _ = dflash_train.block_loss(drafter, head, feats, ids, anchors, 7.0, torch.zeros_like(anchors))
    assert torch.allclose(base, zero)  # l = 0 is the DFlash objective
    lens = torch.tensor([[3, 0], [6, 2]])
    loss, acc = dflash_train.block_loss(drafter, head, feats, ids, anchors, 7.0, lens)
    # reference: slot k of a block with prefix l sees true tokens 1..l, is scored iff k > l,
    # with weight exp(-(k-l-1)/7)
    num = den = 0.0
    for b in range(2):
        for a in range(2):
            l, t0 = int(lens[b, a]), int(anchors[b, a])
            block = torch.full((1, 1, 8), 1)
            block[0, 0, 0] = ids[b, t0]
            block[0, 0, 1 : l + 1] = ids[b, t0 + 1 : t0 + 1 + l]
            h = drafter.forward_blocks(feats[b : b + 1], block, anchors[b : b + 1, a : a + 1])[0, 0, 1:]
            logits = head(h)
            for k in range(l + 1, 8):
                w = torch.exp(torch.tensor(-(k - l - 1) / 7.0))
                num += w * torch.nn.functional.cross_entropy(logits[k - 1], ids[b, t0 + k])
                den += w
    assert torch.allclose(loss, num / den, atol=1e-5)


def test_vp_prefix_lengths_follow_beta():
    g = torch.Generator().manual_seed(0)
    lens = dflash_train.sample_prefix_lens((400, 50), 16, 0.9, g)
    assert int(lens.min()) == 0 and int(lens.max()) == 14
    counts = torch.bincount(lens.flatten(), minlength=15).float()
    expected = 0.9 ** torch.arange(15.0)
    expected = expected / expected.sum() * lens.numel()
    assert torch.allclose(counts, expected, rtol=0.08)


def test_vp_objective_trains(tmp_path):
    argv = tiny_run_argv(tmp_path, "vp", steps=12, num_sequences=16, regen_batch=16) + [
        "--objective", "vp", "--vp-beta", "0.8", "--sampled-frac", "0.25"]
    assert main(["train-drafter", *argv]) == 0
    cfg = json.loads((tmp_path / "vp" / "config.json").read_text())["specdiff"]
    assert cfg["train_config"]["objective"] == "vp" and cfg["train_config"]["vp_beta"] == 0.8
    assert cfg["train_config"]["regen"]["sampled_frac"] == 0.25
    acc4 = cfg["stats"]["heldout_slot_accuracy_prefix4"]
    assert acc4[:4] == [0.0, 0.0, 0.0, 0.0]  # slots inside the true prefix are not predictions
