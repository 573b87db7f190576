"""Byte-level BPE tokenizer for the Python corpus.

Owns: training the tokenizer (`tokenizers` BPE over the documents of a corpus's `train.txt`),
its special tokens (`<|endoftext|>` is eos and pad, `<|mask|>` is the diffusion drafter's mask),
saving it in Hugging Face format so `transformers.AutoTokenizer.from_pretrained(dir)` loads it,
and `tiny_tokenizer`, a seconds-fast offline tokenizer for tests.

Byte-level with no normalizer, so decode(encode(text)) == text for any text. Beside the Hugging
Face files the output directory holds `specdiff_tokenizer_config.json` (`TokenizerConfig`) and
`tokenizer_stats.json` (`TokenizerStats`, including held-out bytes per token).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from specdiff.errors import SpecdiffError
from specdiff.train.corpus import EOT_TOKEN, MASK_TOKEN, SPECIAL_TOKENS, iter_documents

CONFIG_FILE = "specdiff_tokenizer_config.json"  # not tokenizer_config.json: that one is HF's
# A plain chat template (role tags on their own lines) so chat messages have a defined encoding:
# the bundled models were trained on code, not dialogues, so any format is as good as another
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
STATS_FILE = "tokenizer_stats.json"
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # byte alphabet + specials + at least one merge


@dataclass
class TokenizerConfig:
    """Every setting of a tokenizer training run; saved as `specdiff_tokenizer_config.json`."""

    vocab_size: int = 8192
    min_frequency: int = 2
    # Cap on train.txt bytes fed to the trainer (None: all). Documents are in content-hash order,
    # so a capped prefix is a pseudo-random sample of the corpus, not one package.
    max_bytes: int | None = None
    eval_max_bytes: int = 4_000_000  # held-out bytes used to measure compression

    def validate(self) -> None:
        if self.vocab_size < _MIN_VOCAB:
            raise SpecdiffError(f"vocab size must be >= {_MIN_VOCAB}, got {self.vocab_size}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise SpecdiffError(f"max bytes must be positive, got {self.max_bytes}")


@dataclass
class TokenizerStats:
    vocab_size: int
    train_docs: int
    train_bytes: int
    heldout_bytes: int = 0
    heldout_tokens: int = 0
    heldout_bytes_per_token: float | None = None


@dataclass
class _Tally:
    docs: int = 0
    n_bytes: int = 0


def _capped(texts: Iterable[str], max_bytes: int | None, tally: _Tally) -> Iterator[str]:
    """Yield texts while they fit in `max_bytes` UTF-8 bytes (always the first), counting them."""
    for text in texts:
        n = len(text.encode("utf-8"))
        if max_bytes is not None and tally.n_bytes + n > max_bytes and tally.docs > 0:
            return
        tally.docs += 1
        tally.n_bytes += n
        yield text


def _train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _save_hf(tok: Tokenizer, out_dir: Path) -> PreTrainedTokenizerFast:
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOT_TOKEN,
        pad_token=EOT_TOKEN,
        mask_token=MASK_TOKEN,
        clean_up_tokenization_spaces=False,  # exact round trip of source text
    )
    hf.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))
    return hf


def bytes_per_token(tok: Tokenizer, texts: Iterable[str]) -> tuple[int, int]:
    """(UTF-8 bytes, tokens) over `texts`."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tok.encode(text, add_special_tokens=False).ids)
    return n_bytes, n_tokens


def train_tokenizer(cfg: TokenizerConfig, corpus_dir: Path, out_dir: Path) -> TokenizerStats:
    """Train on `corpus_dir/train.txt`, save to `out_dir`, measure on `corpus_dir/heldout.txt`."""
    cfg.validate()
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    train_path = corpus_dir / "train.txt"
    if not train_path.is_file():
        raise SpecdiffError(f"no train.txt in corpus directory {corpus_dir} (run `specdiff corpus`)")
    tally = _Tally()
    texts = _capped(iter_documents(train_path), cfg.max_bytes, tally)
    tok = _train_bpe(texts, cfg.vocab_size, cfg.min_frequency)
    _save_hf(tok, out_dir)
    stats = TokenizerStats(vocab_size=tok.get_vocab_size(), train_docs=tally.docs, train_bytes=tally.n_bytes)
    heldout_path = corpus_dir / "heldout.txt"
    if heldout_path.is_file():
        sample = _capped(iter_documents(heldout_path), cfg.eval_max_bytes, _Tally())
        stats.heldout_bytes, stats.heldout_tokens = bytes_per_token(tok, sample)
        if stats.heldout_tokens:
            stats.heldout_bytes_per_token = round(stats.heldout_bytes / stats.heldout_tokens, 4)
    _write_json(out_dir / CONFIG_FILE, asdict(cfg))
    _write_json(out_dir / STATS_FILE, asdict(stats))
    return stats


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerFast:
    """The saved tokenizer, or a one-line error when `path` holds none."""
    if not (Path(path) / "tokenizer.json").is_file():
        raise SpecdiffError(f"no tokenizer at {path} (expected tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(path))


# A little Python so tiny_tokenizer never depends on what is installed beyond the stdlib.
_TINY_TEXT = '''\
import os
from dataclasses import dataclass


@dataclass
class Point:
    """A point in the plane."""

    x: float = 0.0
    y: float = 0.0

    def norm(self) -> float:
        """Euclidean length."""
        return (self.x ** 2 + self.y ** 2) ** 0.5


def read_lines(path: str) -> list[str]:
    """Lines of a text file, without line ends."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\\n") for line in f]


if __name__ == "__main__":
    for i in range(10):
        print(i, Point(i, i + 1).norm(), os.sep)
'''

_TINY_STDLIB_MODULES = ("textwrap", "dataclasses", "functools", "json.encoder")


def _tiny_texts() -> list[str]:
    import importlib

    texts = [_TINY_TEXT]
    for name in _TINY_STDLIB_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None)
        if path and path.endswith(".py"):
            texts.append(Path(path).read_text(encoding="utf-8"))
    return texts


def tiny_tokenizer(out_dir: Path | str, vocab_size: int = 512) -> Path:
    """Train a small tokenizer on built-in text plus a few stdlib modules; returns `out_dir`."""
    cfg = TokenizerConfig(vocab_size=vocab_size, min_frequency=1)
    cfg.validate()
    out_dir = Path(out_dir)
    texts = _tiny_texts()
    tok = _train_bpe(texts, cfg.vocab_size, cfg.min_frequency)
    _save_hf(tok, out_dir)
    _write_json(out_dir / CONFIG_FILE, asdict(cfg))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    _write_json(out_dir / STATS_FILE, asdict(TokenizerStats(tok.get_vocab_size(), len(texts), n_bytes)))
    return out_dir


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- command line --------------------------------------------------------------------------
