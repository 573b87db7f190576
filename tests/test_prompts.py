"""Prompts as users give them: special tokens the way the tokenizer adds them, chat messages
through the tokenizer's chat template (the bundled tokenizer has one), one line where there is none."""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizers import processors
from transformers import AutoTokenizer

from specdiff.errors import SpecdiffError
from specdiff.loading import encode, encode_chat
from specdiff.models.bundled import default_path


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(default_path("target"))


def test_encode_adds_the_special_tokens_the_tokenizer_adds(tok):
    text = "def f(x):\n    return x"
    assert encode(tok, text) == tok(text, add_special_tokens=False)["input_ids"]  # the bundled one adds none
    with_bos = AutoTokenizer.from_pretrained(default_path("target"))
    bos = with_bos.convert_tokens_to_ids("<|endoftext|>")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    assert encode(with_bos, text) == [bos] + encode(tok, text)


def test_chat_messages_go_through_the_template(tok):
    ids = encode_chat(tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert tok.decode(ids) == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    tok_without = AutoTokenizer.from_pretrained(default_path("target"))
    tok_without.chat_template = None
    with pytest.raises(SpecdiffError, match="no chat template"):
        encode_chat(tok_without, [{"role": "user", "content": "hi"}])


def test_generate_chat_cli(tmp_path, capsys):
    from specdiff.cli import main

    base = ["generate", "--method", "ar", "--max-new-tokens", "6", "--json", "--prompt", "write quicksort"]
    assert main(base + ["--system", "be brief"]) == 0
    assert json.loads(capsys.readouterr().out)["num_new_tokens"] == 6
    folder = tmp_path / "target"
    shutil.copytree(default_path("target"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert main(base + ["--chat", "--target", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no chat template" in err