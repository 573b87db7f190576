"""What the `specdiff dllm` commands do, as library functions: loading a dLLM folder, encoding
prompts, decoding with the baseline or Spiffy, and calibrating Spiffy's draft graphs on held-out
prompts (the benchmark is `specdiff.bench.dllm`).

Graphs are JSON files (`DraftGraph.to_json`) keyed by the decode settings they were calibrated
under (`graph_key`). Calibration writes one per budget D; a graph argument names one file or a
folder to search, and without one `generate` and the bench look in the model's own `graphs/`
folder, falling back to `default_graph` (the top-1 chain plus two alternatives).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from specdiff.dllm.calibration import calibrate, counts_of, futures, search
from specdiff.dllm.config import DLLMConfig
from specdiff.dllm.decoding import DLLMResult, generate_baseline
from specdiff.dllm.spiffy import DraftGraph, default_graph, generate_spiffy
from specdiff.errors import SpecdiffError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
REPO = Path(__file__).resolve().parents[3]
PROMPT_SETS = REPO / "data" / "prompts"


# -- loading ------------------------------------------------------------------------------------


def load_model(model: Path | None, device: str = "cpu", dtype: str = "float32"):
    """The dLLM folder `model` (None: the bundled one) on `device` in `dtype` -> adapters.DLLMBundle."""
    from specdiff.dllm.adapters import load_dllm
    from specdiff.loading import check_device
    from specdiff.models.bundled import default_path

    check_device(device)
    folder = Path(model) if model is not None else default_path("dllm")
    if model is None and not (folder / "config.json").is_file():
        raise SpecdiffError(f"no bundled dLLM at {folder}; pass --model DIR (train one with `specdiff train-dllm`)")
    loaded = load_dllm(folder, device, DTYPES[dtype])
    if loaded.tokenizer is None:
        raise SpecdiffError(f"{folder} has no tokenizer (tokenizer.json or tokenizer_config.json): cannot encode prompts")
    return loaded


def resolve_cache(cache: str, loaded) -> str:
    """--cache auto -> the exact mode the model was trained for: block-causal ("none") for specdiff's
    own dLLM and SDAR, the dual cache for LLaDA and Dream (bidirectional). Unsupported pairs are errors."""
    if cache == "auto":
        return "dual" if loaded.kind in ("llada", "dream") else "none"
    if cache == "dual" and not loaded.supports_dual_cache:
        raise SpecdiffError(f"{loaded.kind} has no dual cache in specdiff; use --cache none "
                            f"(block-causal, as it was trained)")
    return cache


def max_positions(loaded) -> int | None:
    config = getattr(getattr(loaded.model, "hf_model", None), "config", None)
    return getattr(config, "max_position_embeddings", None)


def _encode(tokenizer, text: str) -> list[int]:
    """tokenizers.Tokenizer (own folders) or a Hugging Face tokenizer (LLaDA, Dream, SDAR) -> ids."""
    out = tokenizer.encode(text)
    return list(out.ids) if hasattr(out, "ids") else list(out)


def _eos_id(tokenizer) -> int | None:
    if hasattr(tokenizer, "token_to_id"):
        return tokenizer.token_to_id("<|endoftext|>")
    return getattr(tokenizer, "eos_token_id", None)


def encode_prompt(loaded, text: str, cfg: DLLMConfig, truncate: bool = False) -> torch.Tensor:
    """Prompt text -> [P] ids. A prompt that leaves no room for gen_length tokens in the model's
    positions is an error, or (truncate) loses its oldest tokens."""
    ids = _encode(loaded.tokenizer, text)
    limit = max_positions(loaded)
    if limit is not None and cfg.gen_length >= limit:
        raise SpecdiffError(f"gen_length {cfg.gen_length} leaves no room for a prompt in the model's {limit} positions")
    if limit is not None and len(ids) + cfg.gen_length > limit:
        if not truncate:
            raise SpecdiffError(f"prompt of {len(ids)} tokens + gen_length {cfg.gen_length} exceeds the model's "
                                f"{limit} positions")
        ids = ids[len(ids) + cfg.gen_length - limit:]
    if not ids:
        raise SpecdiffError("empty prompt: a dLLM answer needs at least one prompt token")
    return torch.tensor(ids, dtype=torch.long)


def answer_text(loaded, token_ids: torch.Tensor) -> str:
    """The answer up to its first end-of-text token."""
    ids = token_ids.tolist()
    eos = _eos_id(loaded.tokenizer)
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return loaded.tokenizer.decode(ids)


def read_prompts(files: list[Path], offset: int, num: int) -> list[tuple[str, str]]:
    """(id, prompt) pairs: prompts offset..offset+num of each JSONL file (fields `id`, `prompt`)."""
    from specdiff.loading import read_prompt_rows

    out = []
    for f in files:
        out += read_prompt_rows(f)[offset: offset + num]
    if not out:
        raise SpecdiffError(f"no prompts in {', '.join(map(str, files))} from offset {offset}")
    return out


# -- decoding ------------------------------------------------------------------------------------


def decode(loaded, prompt_ids: torch.Tensor, cfg: DLLMConfig, graph: DraftGraph | None, cache: str,
           trace: list | None = None) -> DLLMResult:
    """The baseline (graph None) or Spiffy, in the attention mode `cache` names."""
    mode = dict(block_causal=cache == "none", dual_cache=cache == "dual")
    if graph is None:
        return generate_baseline(loaded.model, prompt_ids, cfg, trace=trace, **mode)
    return generate_spiffy(loaded.model, prompt_ids, cfg, graph, **mode)


# -- graphs -------------------------------------------------------------------------------------


def graph_key(model: str, cfg: DLLMConfig, cache: str, budget: int) -> dict:
    """What a calibrated graph depends on: the unmasking rule and its step size, the block, the
    temperature, the attention mode and the budget D."""
    key = dict(model=model, block_length=cfg.block_length, remasking=cfg.remasking, temperature=cfg.temperature,
               cache=cache, budget=budget)
    if cfg.remasking == "threshold":
        key["threshold"] = cfg.threshold
    else:
        key["steps_per_block"] = cfg.steps_per_block
    return key


def graph_file_name(key: dict) -> str:
    rule = f"t{key['threshold']:g}" if "threshold" in key else f"s{key['steps_per_block']}"
    return f"graph-{key['remasking']}-{rule}-b{key['block_length']}-T{key['temperature']:g}-{key['cache']}-D{key['budget']}.json"


def find_graph(folder: Path, key: dict) -> tuple[DraftGraph, Path] | None:
    """The graph in `folder` calibrated under `key` (the model name aside); at another temperature
    only when none matches it, the nearest."""
    fixed = {k: v for k, v in key.items() if k not in ("model", "temperature")}
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            graph, saved = DraftGraph.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, KeyError, TypeError):
            continue
        if all(saved.get(k) == v for k, v in fixed.items()):
            found.append((abs(saved.get("temperature", 0.0) - key["temperature"]), path.name, graph, path))
    if not found:
        return None
    _, _, graph, path = min(found)
    return graph, path


def fallback_graph(cfg: DLLMConfig, budget: int) -> DraftGraph:
    """`default_graph` with `budget` nodes: the chain plus two alternatives (a bare chain below 3)."""
    k = 1 if cfg.remasking == "threshold" else max(1, cfg.block_length // cfg.steps_per_block)
    if budget < 3:
        return default_graph(k, budget, alternatives=False)
    return default_graph(k, budget - 2)


def resolve_graph(graph_arg: Path | None, loaded, cfg: DLLMConfig, cache: str, budget: int) -> tuple[DraftGraph, str]:
    """-> (graph, where it came from): --graph FILE, --graph DIR, the model's graphs/, or the default."""
    key = graph_key(loaded.path.name, cfg, cache, budget)
    if graph_arg is not None and Path(graph_arg).is_file():
        try:
            return DraftGraph.from_json(Path(graph_arg).read_text(encoding="utf-8"))[0], str(graph_arg)
        except (ValueError, KeyError, TypeError) as e:
            raise SpecdiffError(f"{graph_arg} is not a draft graph JSON: {e}") from None
    if graph_arg is not None and not Path(graph_arg).is_dir():
        raise SpecdiffError(f"graph file or folder not found: {graph_arg}")
    folder = Path(graph_arg) if graph_arg is not None else loaded.path / "graphs"
    found = find_graph(folder, key) if folder.is_dir() else None
    if found is not None:
        return found[0], str(found[1])
    return fallback_graph(cfg, budget), "default_graph"


# -- calibrate ----------------------------------------------------------------------------------


@dataclass
class Calibration:
    graphs: dict[int, DraftGraph]  # budget -> graph
    prompts: int
    steps: int  # baseline transitions recorded
    formulas: int  # distinct (formula, level) pairs
    seconds: float
    method: str = "degree1"


def calibrate_graphs(loaded, prompt_ids: list[torch.Tensor], cfg: DLLMConfig, cache: str,
                     budgets: list[int], method: str = "degree1") -> Calibration:
    """Algorithm 2: baseline traces, rewound one prompt at a time (a trace holds [m, V] logits per
    step), then for each budget degree-1 accumulation, or (method "replay") the search that
    minimises the replayed NFE (calibration.search)."""
    t0 = time.perf_counter()
    walks: list = []
    steps = 0
    for ids in prompt_ids:
        trace: list = []
        decode(loaded, ids, cfg, None, cache, trace=trace)
        walks += futures(trace, cfg, depth=max(budgets))
        steps += len(trace)
    counts = counts_of(walks)
    graphs = {d: calibrate(counts, d) if method == "degree1" else search(walks, d) for d in budgets}
    return Calibration(graphs, len(prompt_ids), steps, len(counts), time.perf_counter() - t0, method)


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise SpecdiffError(f"--budgets takes comma-separated integers, got {text!r}") from None
    if not budgets or budgets[0] < 1:
        raise SpecdiffError(f"--budgets must be positive integers, got {text!r}")
    return budgets


def write_graphs(out: Path, calib: Calibration, key_of) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for budget, graph in calib.graphs.items():
        key = key_of(budget)
        path = out / graph_file_name(key)
        path.write_text(graph.to_json(**key, calibration=dict(prompts=calib.prompts, steps=calib.steps,
                                                              method=calib.method)) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
