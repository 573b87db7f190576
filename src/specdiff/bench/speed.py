"""A shape's speed: AR's ms per token and a drafted round's cost for one model shape, next to the
HBM bound that an AR step cannot beat (every weight read once, plus the KV cache).

The models are random weights of a public Qwen3 shape (or HIDDENxLAYERS), built on the device, or
a target folder; the drafter is a random DFlash drafter of the target's width. Random drafts are
almost never accepted, so a drafted method's ms per token is its round's cost: what the fast path
has to bring down. `specdiff speed` prints the table.
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from specdiff.config import DecodeConfig
from specdiff.errors import SpecdiffError
from specdiff.models.shapes import PUBLIC

# Peak HBM bandwidth by device name (bytes/s, the vendors' figures): the bound uses the peak, so
# "% of bandwidth" is against the hardware, not against a copy kernel
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}


@dataclass
class SpeedConfig:
    shape: str = "qwen3-8b"  # a key of models.shapes.PUBLIC or HIDDENxLAYERS (random weights); ignored with `target`
    target: str | None = None  # a target folder instead of random weights
    drafter_layers: int = 5  # the random DFlash drafter's depth (Qwen3-8B's DFlash drafter has 5)
    block_size: int = 16
    vocab: int | None = None  # HIDDENxLAYERS: the vocabulary (None: 151,936)
    device: str = "cuda"
    dtype: str = "bfloat16"
    engine: str = "graph"
    kernels: str = "auto"  # DecodeConfig.kernels
    numerics: str = "auto"  # DecodeConfig.numerics
    tree_searches: list[str] = field(default_factory=lambda: ["auto"])  # DecodeConfig.tree_search, each timed
    prompt_tokens: int = 200
    new_tokens: int = 96
    budgets: list[int] = field(default_factory=lambda: [16, 64, 256])
    draft_vocab: int = DecodeConfig.draft_vocab
    seed: int = 0


def shape_config(name: str, vocab: int | None = None):
    """A Qwen3Config for a public shape (models.shapes.PUBLIC) or HIDDENxLAYERS (head_dim 128 from a hidden of 1024, else
    64; a KV head per 4 query heads; MLP 3x)."""
    from transformers import Qwen3Config

    key = name.strip().lower()
    if key in PUBLIC:
        shape, v, tied = PUBLIC[key]
        hidden, layers, heads, kv, hd, mlp = (shape.hidden, shape.layers, shape.heads, shape.kv_heads,
                                              shape.head_dim, shape.intermediate)
    else:
        m = re.fullmatch(r"(\d+)x(\d+)", key)
        if not m:
            raise SpecdiffError(f"unknown shape {name!r}; use {', '.join(PUBLIC)} or HIDDENxLAYERS (e.g. 2048x24)")
        hidden, layers = int(m[1]), int(m[2])
        hd = 128 if hidden >= 1024 else 64
        if hidden % hd or layers < 1:
            raise SpecdiffError(f"shape {name}: the hidden size must be a multiple of {hd} and layers >= 1")
        heads = hidden // hd
        kv, mlp, v, tied = max(1, heads // 4), 3 * hidden, 151936, False
    return Qwen3Config(vocab_size=vocab or v, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, head_dim=hd, intermediate_size=mlp, tie_word_embeddings=tied,
                       max_position_embeddings=40960, rope_theta=1e6, bos_token_id=None, eos_token_id=None,
                       pad_token_id=None)


def random_target(shape: str, device, dtype, vocab: int | None = None):
    """A causal LM of a public shape (`shape_config`) with random weights, made on `device` in
    `dtype` itself (no float32 copy of an 8B model first; seeded by the caller's generator)."""
    import torch

    from transformers import AutoModelForCausalLM

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # random weights made on the device: an 8B model in seconds
            return AutoModelForCausalLM.from_config(shape_config(shape, vocab), attn_implementation="sdpa").eval()
    finally:
        torch.set_default_dtype(default)


def timed_ms(fn, device, reps: int = 20) -> float:
    """Milliseconds per call of `fn`, back to back after 3 untimed calls, with one device sync at
    each end (host work hides behind the device, as in a decode)."""
    import torch

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return 1000 * (time.perf_counter() - t) / reps


def random_drafter(target_cfg, layers: int, block_size: int, device, dtype):
    """A random DFlash drafter of the target's width, tapping layers by DFlash's rule."""
    import torch

    from transformers import Qwen3Config

    from specdiff.drafters.dflash import DFlashDrafter, DFlashSpec, default_target_layer_ids

    t = target_cfg
    same = {k: getattr(t, k) for k in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                       "intermediate_size", "max_position_embeddings")}
    # transformers keeps RoPE in rope_parameters from 5.x on, in rope_theta before
    rope = getattr(t, "rope_parameters", None)
    same.update(rope_parameters=rope) if rope else same.update(rope_theta=getattr(t, "rope_theta", 1e6))
    hd = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    cfg = Qwen3Config(**same, head_dim=hd, num_hidden_layers=layers)
    n = t.num_hidden_layers
    # DFlash's rule spreads 5 taps over layers 1 .. L-3; a target too shallow for it gets 3
    taps = default_target_layer_ids(n, 5) if n >= 8 else sorted({0, n // 2, n - 1})
    spec = DFlashSpec(block_size=block_size, mask_token_id=t.vocab_size - 1, target_layer_ids=taps,
                      num_target_layers=t.num_hidden_layers)
    with torch.device(device):
        drafter = DFlashDrafter(cfg, spec)
    return drafter.to(dtype=dtype).eval()


def read_bytes_per_token(model: torch.nn.Module, context: int) -> int:
    """What one AR step must read from memory: every weight but the input embedding (one row of it
    is read), and the K/V of `context` tokens."""
    embed = model.get_input_embeddings().weight
    tied = embed is model.get_output_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed or tied)
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * hd * context * embed.element_size()
    return weights + kv


def peak_bandwidth(device: torch.device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def measure(cfg: SpeedConfig) -> dict:
    """AR and each drafted method on one shape -> {"rows": [...], "shape": ..., "bound_ms": ...}."""
    import torch

    from specdiff import kernels, native
    from specdiff.engine import build_decoder, make_target
    from specdiff.loading import check_device
    from specdiff.target.hf_causal import DTYPES, load_target

    check_device(cfg.device)
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    torch.manual_seed(cfg.seed)
    if cfg.target:
        model, _ = load_target(cfg.target, cfg.device, cfg.dtype)
        name = cfg.target
    else:
        model = random_target(cfg.shape, device, dtype, cfg.vocab)
        name = cfg.shape
    drafter = random_drafter(model.config, cfg.drafter_layers, cfg.block_size, device, dtype)
    prompt = torch.randint(0, model.config.vocab_size, (cfg.prompt_tokens,), generator=torch.Generator().manual_seed(
        cfg.seed)).tolist()
    peak = peak_bandwidth(device)
    read = read_bytes_per_token(model, cfg.prompt_tokens + cfg.new_tokens // 2)
    # one target for every method: its cache and graphs serve them all (a target per method would
    # hold a graph set each)
    target = make_target(model, cfg.engine, native.load(), cfg.kernels, cfg.numerics)
    rows = []
    # ar twice: each forward launched before the last draw is read (the default), and one step
    # at a time, as a drafted round runs (what the overlap buys)
    runs = [("ar", 1, "auto", True), ("ar", 1, "auto", False), ("dflash", 1, "auto", True)] + [
        ("ddtree", b, s, True) for s in cfg.tree_searches for b in cfg.budgets]
    for method, budget, search, overlap in runs:
        dc = DecodeConfig(method=method, budget=budget, max_new_tokens=cfg.new_tokens, engine=cfg.engine,
                          kernels=cfg.kernels, numerics=cfg.numerics, tree_search=search, overlap=overlap,
                          stop_at_eos=False, draft_vocab=cfg.draft_vocab)
        decoder = build_decoder(target, dc, drafter)
        decoder.prepare(len(prompt))
        decoder.generate(prompt)  # warm-up
        t = time.perf_counter()
        r = decoder.generate(prompt)
        wall = time.perf_counter() - t
        syncs = count_syncs(decoder, prompt)
        label = method if method != "ddtree" else f"ddtree@{budget}" + (f" ({search} search)" if search != "auto" else "")
        label += "" if overlap else ", no overlap"
        rows.append({"method": label, "tau": r.tau, "drafted": method != "ar",
                     # the rows its target forward takes: AR 1, a DFlash block, a ddtree@B tree its root + B
                     "forward_nodes": 1 if method == "ar" else cfg.block_size if method == "dflash" else 1 + budget,
                     "syncs_per_round": syncs[0] / syncs[1] if syncs else None,
                     "ms_per_token": 1000 * wall / max(1, r.num_new_tokens),
                     "round_ms": statistics.median(r.round_ms[1:] or r.round_ms),
                     "mean_nodes": sum(r.tree_sizes) / max(1, len(r.tree_sizes)),
                     # what the device held so far: the graphs of the larger trees are the most
                     "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None})
        del decoder
        gc.collect()  # the drafter's graphs of this method go before the next method's are captured
    # the node counts the methods forward: AR 1, a DFlash block 16, a ddtree@B tree its root + B
    parts = anatomy(target, drafter, prompt, cfg, [1, cfg.block_size] + sorted({1 + b for b in cfg.budgets}))
    return {"shape": name, "params": sum(p.numel() for p in model.parameters()), "device":
            torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": cfg.dtype,
            "engine": cfg.engine, "kernels": target.kernels_ran, "numerics": target.numerics,
            "kernel_switches": kernels.switches(device),
            "read_bytes_per_token": read, "peak_bandwidth": peak,
            "bound_ms": 1000 * read / peak if peak else None, "rows": rows, "anatomy": parts,
            "draft_vocab": cfg.draft_vocab}


def count_syncs(decoder, prompt: list[int]) -> tuple[int, int] | None:
    """(synchronizing calls, rounds) of one more decode under PyTorch's sync debug mode, which
    flags each call that makes the host wait for the GPU (prefill and the decode's end included);
    None off CUDA. Untimed: the mode's checks cost host time."""
    import warnings

    import torch

    if decoder.target.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = decoder.generate(prompt)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), result.rounds


def anatomy(target, drafter, prompt: list[int], cfg: SpeedConfig, sizes: list[int], reps: int = 20) -> dict:
    """Each part of a round alone, back to back with one sync at the end (so host work hides
    behind the device, as in a decode): the drafter's step (fuse the committed features, draft a
    block) and the target's forward of N nodes, N in `sizes` -> {"draft_ms", "verify_ms": {N: ms}}.
    A round's time beyond the two is the host's (tree search, walk, commit)."""
    from specdiff.engine import build_decoder
    from specdiff.types import DraftTree

    def timed(fn) -> float:
        return timed_ms(fn, target.device, reps)

    dc = DecodeConfig(method="dflash", max_new_tokens=cfg.new_tokens, engine=cfg.engine, kernels=cfg.kernels,
                      numerics=cfg.numerics, stop_at_eos=False, draft_vocab=cfg.draft_vocab)
    decoder = build_decoder(target, dc, drafter)
    decoder.prepare(len(prompt))
    decoder.generate(prompt)  # the drafter holds the whole context, as mid-decode
    step = decoder.proposer.drafters[0]
    draft_ms = timed(lambda: step.propose(prompt[-1], step.block_size - 1))
    target.reset(len(prompt) + cfg.new_tokens + max(sizes))
    target.prefill(prompt)
    verify = {n: timed(lambda: target.forward(DraftTree.chain(prompt[-1], [prompt[-1]] * (n - 1)))) for n in sizes}
    return {"draft_ms": draft_ms, "verify_ms": verify}


def _fixed_cost(row: dict, parts: dict | None) -> str:
    """A round's time beyond its forwards timed alone (the target's of the rows it verifies, and
    the drafter's step where it drafts): its tree search, draws, walk, commit and idle device."""
    if not parts or "forward_nodes" not in row:
        return "-"
    forward = {int(n): ms for n, ms in parts["verify_ms"].items()}.get(row["forward_nodes"])
    if forward is None:
        return "-"
    return f"{row['round_ms'] - forward - (parts['draft_ms'] if row['drafted'] else 0.0):.2f}"


def table(result: dict) -> str:
    from specdiff.bench.tables import markdown_table, switches_note

    bound = result["bound_ms"]
    head = (f"{result['shape']} ({result['params'] / 1e9:.2f}B parameters), {result['device']}, {result['dtype']}, "
            f"engine {result['engine']}, {result.get('kernels', 'torch')} kernels, {result.get('numerics', 'fast')} "
            "numerics; HBM bound for AR: "
            + (f"{bound:.2f} ms/token ({result['read_bytes_per_token'] / 1e9:.2f} GB at "
               f"{result['peak_bandwidth'] / 1e12:.2f} TB/s)" if bound else "- (no known peak bandwidth)"))
    head += switches_note(result.get("kernel_switches"))
    if result.get("draft_vocab"):
        head += f"; the drafter's head over the first {result['draft_vocab']:,} token ids"
    parts = result.get("anatomy")
    rows = [[r["method"], f"{r['ms_per_token']:.2f}", f"{r['round_ms']:.2f}", f"{r['tau']:.2f}",
             f"{r['mean_nodes']:.0f}",
             f"{r['syncs_per_round']:.2f}" if r.get("syncs_per_round") is not None else "-",
             f"{100 * bound / r['ms_per_token']:.0f}%" if bound and r["method"].startswith("ar") else "-",
             _fixed_cost(r, parts)]
            for r in result["rows"]]
    lines = [head, "", *markdown_table(["method", "ms/token", "round ms (median)", "tau", "nodes/round",
                                        "host syncs/round", "of HBM bandwidth", "beyond its forwards ms"], rows)]
    if parts:
        lines += ["", "Alone: drafter step {:.2f} ms; target forward of N nodes: {}".format(
            parts["draft_ms"], ", ".join(f"{n}: {ms:.2f} ms" for n, ms in parts["verify_ms"].items()))]
    return "\n".join(lines) + "\n"
