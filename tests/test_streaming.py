"""Streaming: `decoder.stream` yields each round's committed tokens (the same tokens as `generate`),
closing it ends the decode, the text streamer never emits a broken character, and stop strings
end a stream at the exact token."""

from __future__ import annotations

import pytest

from specdiff.config import DecodeConfig
from specdiff.drafters.dflash import load_drafter
from specdiff.engine import build_decoder
from specdiff.models.bundled import default_path
from specdiff.streaming import REPLACEMENT, TextStreamer, first_stop, stream_text
from specdiff.target.hf_causal import load_target

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


@pytest.fixture(scope="module")
def bundled():
    model, tokenizer = load_target(default_path("target"))
    return model, tokenizer, load_drafter(default_path("dflash"))


def decoder(bundled, method="ddtree", new=48):
    model, _, drafter = bundled
    cfg = DecodeConfig(method=method, budget=16, max_new_tokens=new, engine="static", stop_at_eos=False)
    return build_decoder(model, cfg, drafter)


def test_stream_yields_the_rounds_generate_makes(bundled):
    _, tok, _ = bundled
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    dec = decoder(bundled)
    chunks = list(dec.stream(ids))
    result = dec.generate(ids)
    assert [t for c in chunks for t in c.tokens] == result.token_ids
    assert [len(c.tokens) for c in chunks] == result.accept_lengths
    assert [c.round for c in chunks] == list(range(len(chunks)))
    assert [c.stop_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert all(c.tree_nodes >= 1 and c.round_ms > 0 for c in chunks)


def test_closing_a_stream_ends_the_decode_and_the_decoder_goes_on(bundled):
    _, tok, _ = bundled
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    dec = decoder(bundled, method="ar")
    stream = dec.stream(ids)
    first = [next(stream) for _ in range(3)]
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    full = dec.generate(ids).token_ids  # the next request starts clean
    assert [c.tokens[0] for c in first] == full[:3]


def test_text_streamer_never_emits_a_broken_character(bundled):
    _, tok, _ = bundled
    text = "héllo wörld — ✓ 日本語 🙂 ok\n\tdone"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)  # the tokenizer does split characters
    streamer = TextStreamer(tok)
    deltas = [streamer.push([i]) for i in ids] + [streamer.flush()]
    assert "".join(deltas) == text == streamer.text
    assert not any(REPLACEMENT in d for d in deltas)
    # a character split over two pushes arrives whole, with the push that completes it
    emoji = tok("🙂", add_special_tokens=False)["input_ids"]
    s = TextStreamer(tok)
    assert [s.push([i]) for i in emoji][:-1] == [""] * (len(emoji) - 1) and s.ids == emoji


@pytest.mark.parametrize("method", ["ar", "ddtree"])
def test_a_stop_string_ends_the_stream_at_the_exact_token(bundled, method):
    _, tok, _ = bundled
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    full_ids = decoder(bundled, method).generate(ids).token_ids
    full = tok.decode(full_ids)
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # three characters from the middle
    assert stop.strip() and REPLACEMENT not in stop
    chunks = list(stream_text(decoder(bundled, method), tok, ids, stop=["<never>", stop]))
    tokens = [t for c in chunks for t in c.tokens]
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop" and all(c.finish_reason is None for c in chunks[:-1])
    assert tokens == full_ids[: len(tokens)]  # the same decode, cut short
    assert stop in tok.decode(tokens) and stop not in tok.decode(tokens[:-1])  # the exact token
    assert text == full[: full.find(stop)]  # the text ends just before the stop string


def test_without_stop_strings_the_text_is_the_whole_decode(bundled):
    _, tok, _ = bundled
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    chunks = list(stream_text(decoder(bundled, "ddtree", new=30), tok, ids))
    full_ids = [t for c in chunks for t in c.tokens]
    assert len(full_ids) == 30 and chunks[-1].finish_reason == "length"
    assert "".join(c.text for c in chunks) == tok.decode(full_ids)


def test_first_stop():
    assert first_stop("abcXYdefXY", ["XY", "de"]) == 3
    assert first_stop("abc", ["x"]) is None and first_stop("abc", []) is None


def test_generate_cli_stops_at_a_stop_string_and_streams(capsys):
    import json

    from specdiff.cli import main

    def generate(*extra) -> str:
        assert main(["generate", "--method", "ddtree", "--budget", "16", "--prompt", "def fibonacci(n):",
                     "--max-new-tokens", "40", *extra]) == 0
        return capsys.readouterr().out

    full = json.loads(generate("--json"))
    stop = full["text"][12:15]
    out = json.loads(generate("--json", "--stop", stop))
    assert out["stop_reason"] == "stop" and out["text"] == full["text"][: full["text"].find(stop)]
    assert out["token_ids"] == full["token_ids"][: len(out["token_ids"])]
    assert generate("--stream") == "def fibonacci(n):" + full["text"] + "\n"
