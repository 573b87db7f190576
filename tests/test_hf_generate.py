"""The transformers-shaped drop-in (`specdiff.hf_generate.generate`) against `model.generate` on tiny
configs: the same ids out, left padding dropped, streamer calls, GenerationConfig fields read."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from specdiff.errors import SpecdiffError
from specdiff.hf_generate import generate
from specdiff.models.tiny import tiny_drafter

from test_architectures import PROMPT, tiny


class Recorder:
    """A streamer as transformers calls one: put(prompt), put(new ids)..., end()."""

    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_ids_equal_model_generate(arch):
    model = tiny(arch)
    drafter = tiny_drafter(model, block_size=8)
    ids = torch.tensor([PROMPT])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False)
    gen_cfg = GenerationConfig(max_new_tokens=12, do_sample=False)
    for method in ("ar", "dflash", "ddtree"):
        got = generate(model, ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg, method=method,
                       drafter=drafter, budget=12)
        assert torch.equal(got, want), method


def test_left_padding_streamer_and_sampling_fields():
    model = tiny("qwen3")
    drafter = tiny_drafter(model, block_size=8)
    greedy = GenerationConfig(max_new_tokens=10, do_sample=False)
    plain = generate(model, torch.tensor([PROMPT]), generation_config=greedy, drafter=drafter)
    padded = torch.tensor([[0, 0, 0] + PROMPT])
    mask = torch.tensor([[0, 0, 0] + [1] * len(PROMPT)])
    rec = Recorder()
    out = generate(model, padded, attention_mask=mask, generation_config=greedy, streamer=rec, drafter=drafter)
    assert torch.equal(out, plain)  # the padding is dropped
    assert rec.puts[0] == PROMPT and sum(rec.puts[1:], []) == out[0, len(PROMPT):].tolist() and rec.ended == 1
    assert len(rec.puts) > 2  # one put per round, not one at the end
    top1 = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.7, top_k=1)
    assert torch.equal(generate(model, torch.tensor([PROMPT]), generation_config=top1, drafter=drafter), plain)
    sampled = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5)
    a = generate(model, torch.tensor([PROMPT]), generation_config=sampled, drafter=drafter, seed=4)
    b = generate(model, torch.tensor([PROMPT]), generation_config=sampled, method="ar", seed=4)
    assert torch.equal(a, b)  # lossless at T>0: AR's tokens for the same seed


def test_what_it_does_not_do_is_refused_in_one_line():
    model = tiny("llama")
    ids = torch.tensor([PROMPT])
    cases = [
        (dict(generation_config=GenerationConfig(num_beams=4)), "num_beams=4 is not supported"),
        (dict(generation_config=GenerationConfig(repetition_penalty=1.3)), "repetition_penalty"),
        (dict(input_ids=torch.tensor([PROMPT, PROMPT])), "one sequence"),
        (dict(attention_mask=torch.tensor([[1, 0] + [1] * (len(PROMPT) - 2)])), "ones after any left padding"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SpecdiffError, match=message) as e:
            generate(model, kwargs.pop("input_ids", ids), method="ar", **kwargs)
        assert "\n" not in str(e.value)
