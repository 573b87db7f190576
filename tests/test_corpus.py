"""Corpus builder, prompt sets and tokenizer, on a small fake source tree (CPU, seconds)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from specdiff.errors import SpecdiffError
from specdiff.cli import main
from specdiff.train import corpus
from specdiff.train.corpus import EOT_TOKEN, HELDOUT, MASK_TOKEN, CorpusConfig, build_corpus
from specdiff.train.tokenizer import TokenizerConfig, tiny_tokenizer, train_tokenizer

N_MODULES = 40


def _module_source(i: int) -> str:
    """A distinct module with documented functions, a method, and enough text to continue."""
    return f'''"""Module number {i}: helpers for the fake corpus."""

import math
import os


def scale_{i}(values: list[float], factor: float = {i}.5) -> list[float]:
    """Multiply every value by `factor`.

    Returns a new list; the input is left alone.
    """
    out = []
    for v in values:
        out.append(v * factor)
    return out


def describe_{i}(name: str) -> str:
    """A short description of `name`."""
    parts = name.split("_")
    label = " ".join(p.capitalize() for p in parts)
    suffix = os.sep + str({i})
    return label + suffix


class Shape{i}:
    """A shape with an area."""

    def __init__(self, side: float) -> None:
        self.side = side

    def area(self) -> float:
        """Area of the square with this side, rounded."""
        a = self.side * self.side
        a = a + math.pi * 0
        b = round(a, {i % 5})
        return b


def no_docstring_{i}(x):
    y = x + {i}
    z = y * 2
    w = z - 1
    return w


def clamp_{i}(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """Clamp `x` into the closed interval [lo, hi]."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def mean_{i}(values: list[float]) -> float:
    """Arithmetic mean; zero for an empty list."""
    if not values:
        return 0.0
    total = sum(values)
    return total / len(values)


def window_{i}(values: list[float], size: int = 3) -> list[list[float]]:
    """Consecutive windows of `size` values, the last one possibly shorter."""
    windows = []
    for start in range(0, len(values), size):
        windows.append(values[start : start + size])
    return windows
'''


def _make_tree(root: Path) -> None:
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    for i in range(N_MODULES):
        (pkg / f"mod_{i:02d}.py").write_text(_module_source(i), encoding="utf-8")
    # Duplicates: a byte-identical copy, and a CRLF + BOM copy that normalises to the same text.
    (root / "dup").mkdir()
    shutil.copy(pkg / "mod_00.py", root / "dup" / "copy.py")
    crlf = "\ufeff" + _module_source(1).replace("\n", "\r\n")
    (root / "dup" / "crlf.py").write_bytes(crlf.encode("utf-8"))
    (root / "latin1.py").write_bytes(("# caf\xe9\n" + _module_source(99)).encode("latin-1"))
    (root / "tiny.py").write_text("x = 1\n", encoding="utf-8")
    (root / "generated.py").write_text("# Auto-generated file. DO NOT EDIT.\n" + _module_source(98))
    (root / "notes.txt").write_text(_module_source(97))  # not *.py
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "cached.py").write_text(_module_source(96))


def _cfg(src: Path, **kw: object) -> CorpusConfig:
    base = dict(src_dirs=[str(src)], heldout_frac=0.3, num_prompts=20, split_salt="test-salt")
    base.update(kw)
    return CorpusConfig(**base)  # type: ignore[arg-type]


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / corpus.MANIFEST_FILE).read_text().splitlines()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, corpus.CorpusStats]:
    base = tmp_path_factory.mktemp("corpus")
    src = base / "src"
    _make_tree(src)
    out = base / "out"
    stats = build_corpus(_cfg(src), out)
    return src, out, stats


def test_dedup_and_skips(built: tuple[Path, Path, corpus.CorpusStats]) -> None:
    _, out, stats = built
    assert stats.files_seen == N_MODULES + 5  # 40 modules, 2 copies, latin1, tiny, generated
    assert stats.duplicates == 2
    assert stats.skipped == {"generated": 1, "not_utf8": 1, "size": 1}
    assert stats.unique_files == N_MODULES
    rows = _manifest(out)
    assert len(rows) == N_MODULES == len({r["sha256"] for r in rows})
    assert [r["sha256"] for r in rows] == sorted(r["sha256"] for r in rows)
    # The first copy in sorted walk order ("dup" < "pkg") names the file.
    expected = {f"pkg/mod_{i:02d}.py" for i in range(2, N_MODULES)} | {"dup/copy.py", "dup/crlf.py"}
    assert {r["path"] for r in rows} == expected
    assert 0 < stats.heldout_files < stats.train_files
    assert stats.train_files + stats.heldout_files == N_MODULES
    saved = json.loads((out / corpus.STATS_FILE).read_text())
    assert saved["unique_files"] == N_MODULES
    assert json.loads((out / corpus.CONFIG_FILE).read_text())["split_salt"] == "test-salt"


def test_corpus_text_round_trips(built: tuple[Path, Path, corpus.CorpusStats]) -> None:
    _, out, stats = built
    rows = _manifest(out)
    splits = (("train", "train.txt", stats.train_bytes), (HELDOUT, "heldout.txt", stats.heldout_bytes))
    for split, name, n_bytes in splits:
        docs = list(corpus.iter_documents(out / name))
        assert [corpus.content_sha256(d) for d in docs] == [r["sha256"] for r in rows if r["split"] == split]
        assert sum(len(d.encode()) for d in docs) == n_bytes
        assert all(d.endswith("\n") and not d.endswith("\n\n") and EOT_TOKEN not in d for d in docs)


def test_split_is_by_content_not_path(built: tuple[Path, Path, corpus.CorpusStats], tmp_path: Path) -> None:
    src, out, _ = built
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(src, moved)
    (moved / "pkg" / "mod_05.py").rename(moved / "renamed.py")
    out2 = tmp_path / "out2"
    build_corpus(_cfg(moved), out2)
    split1 = {r["sha256"]: r["split"] for r in _manifest(out)}
    split2 = {r["sha256"]: r["split"] for r in _manifest(out2)}
    assert split1 == split2
    for name in ("train.txt", "heldout.txt", corpus.FUNCTION_PROMPTS_FILE, corpus.CONTINUATION_PROMPTS_FILE):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()
    cfg = _cfg(src)
    assert all(corpus.split_of(sha, cfg) == split for sha, split in split1.items())
    # Another salt gives another split of the same files.
    other = _cfg(src, split_salt="other")
    assert any(corpus.split_of(sha, other) != split for sha, split in split1.items())


def test_prompts_come_from_heldout_files(built: tuple[Path, Path, corpus.CorpusStats]) -> None:
    _, out, stats = built
    rows = _manifest(out)
    heldout = {r["sha256"][:8] for r in rows if r["split"] == HELDOUT}
    train = {r["sha256"][:8] for r in rows if r["split"] == "train"}
    heldout_docs = list(corpus.iter_documents(out / "heldout.txt"))
    for name, prefix in ((corpus.FUNCTION_PROMPTS_FILE, "fc-"), (corpus.CONTINUATION_PROMPTS_FILE, "fcont-")):
        prompts = _jsonl(out / name)
        assert prompts and len(prompts) <= 20
        assert all(set(p) == {"id", "prompt"} and p["id"].startswith(prefix) for p in prompts)
        assert len({p["id"] for p in prompts}) == len(prompts)
        shas = {p["id"].split("-")[1] for p in prompts}
        assert shas <= heldout and not shas & train
    conts = _jsonl(out / corpus.CONTINUATION_PROMPTS_FILE)
    assert len(conts) == min(20, stats.heldout_files) == stats.continuation_prompts
    for p in conts:
        text = p["prompt"]
        assert text.endswith("\n") and 600 <= len(text) <= 1200
        assert any(d.startswith(text) and len(d) > len(text) for d in heldout_docs)


def test_function_prompts_end_after_docstring(built: tuple[Path, Path, corpus.CorpusStats]) -> None:
    _, out, stats = built
    prompts = _jsonl(out / corpus.FUNCTION_PROMPTS_FILE)
    per_file_cap = CorpusConfig().max_prompts_per_file
    assert len(prompts) == min(20, per_file_cap * stats.heldout_files) == stats.function_prompts
    per_file: dict[str, int] = {}
    for p in prompts:
        sha8 = p["id"].split("-")[1]
        per_file[sha8] = per_file.get(sha8, 0) + 1
        text = p["prompt"]
        head, indent = text.rsplit("\n", 1)
        assert indent == "    "  # the body's indentation, relative to the dedented def
        assert head.endswith('"""') and text.startswith("def ")
        # Dedented methods included: the prompt plus a body is valid top-level Python.
        tree = ast.parse(text + "pass\n")
        fn = tree.body[0]
        assert isinstance(fn, ast.FunctionDef) and ast.get_docstring(fn)
        assert not fn.name.startswith("no_docstring") and fn.name != "__init__"
    assert max(per_file.values()) <= per_file_cap
    assert any(p["prompt"].startswith("def area(self)") for p in prompts) or len(prompts) < 20


def test_function_prompt_extraction_details() -> None:
    src = '''class A:
    def m(self, x):
        """Doc
        spanning lines."""
        y = x
        y += 1
        return y

    def short(self):
        """Too short."""
        return 1
'''
    cfg = CorpusConfig(src_dirs=[])
    prompts = corpus.function_prompts(src, "ab" * 32, cfg)
    assert [p.id for p in prompts] == ["fc-abababab-2"]
    assert prompts[0].prompt == 'def m(self, x):\n    """Doc\n    spanning lines."""\n    '


def test_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SpecdiffError, match="not found"):
        build_corpus(CorpusConfig(src_dirs=[str(missing)]), tmp_path / "out")
    assert main(["corpus", "--src", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


def test_cli_writes_prompts_elsewhere(built: tuple[Path, Path, corpus.CorpusStats], tmp_path: Path) -> None:
    src, out, _ = built
    prompts_dir = tmp_path / "prompts"
    argv = ["--src", str(src), "--out", str(tmp_path / "c"), "--prompts-out", str(prompts_dir),
            "--heldout-frac", "0.3", "--num-prompts", "20", "--salt", "test-salt"]
    assert main(["corpus", *argv]) == 0
    names = (corpus.FUNCTION_PROMPTS_FILE, corpus.CONTINUATION_PROMPTS_FILE)
    for name in names + (corpus.STATS_FILE, corpus.CONFIG_FILE):
        assert (prompts_dir / name).is_file()
    same = corpus.FUNCTION_PROMPTS_FILE
    assert (prompts_dir / same).read_bytes() == (out / same).read_bytes()
    assert not (prompts_dir / "train.txt").exists()


SAMPLE = 'def f(x):\n    """Doc é 中 🐍"""\n\treturn x  \r\n\n\n    # trailing   \n'


def test_tokenizer_on_corpus(built: tuple[Path, Path, corpus.CorpusStats], tmp_path: Path) -> None:
    _, out, _ = built
    stats = train_tokenizer(TokenizerConfig(vocab_size=400, min_frequency=1), out, tmp_path / "tok")
    assert stats.vocab_size == 400 and stats.train_docs > 0
    assert stats.heldout_bytes_per_token is not None and stats.heldout_bytes_per_token > 1.5
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tok.mask_token == MASK_TOKEN and tok.mask_token_id is not None
    assert tok.eos_token == tok.pad_token == EOT_TOKEN
    assert {tok.eos_token_id, tok.mask_token_id} == {0, 1}
    assert tok.convert_tokens_to_ids(MASK_TOKEN) == tok.mask_token_id
    docs = list(corpus.iter_documents(out / "heldout.txt"))[:5] + [SAMPLE]
    for text in docs:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.encode(text) == ids  # no bos/eos added behind the caller's back
    ids = tok.encode("a" + EOT_TOKEN + MASK_TOKEN, add_special_tokens=False)
    assert ids[-2:] == [tok.eos_token_id, tok.mask_token_id]


def test_tokenizer_missing_corpus(tmp_path: Path) -> None:
    with pytest.raises(SpecdiffError, match="train.txt"):
        train_tokenizer(TokenizerConfig(), tmp_path, tmp_path / "tok")
    with pytest.raises(SpecdiffError, match="vocab size"):
        train_tokenizer(TokenizerConfig(vocab_size=10), tmp_path, tmp_path / "tok")


def test_tiny_tokenizer(tmp_path: Path) -> None:
    path = tiny_tokenizer(tmp_path / "tiny", vocab_size=320)
    tok = AutoTokenizer.from_pretrained(str(path))
    assert len(tok) == 320 and tok.mask_token == MASK_TOKEN and tok.pad_token == EOT_TOKEN
    assert tok.decode(tok.encode(SAMPLE, add_special_tokens=False)) == SAMPLE
