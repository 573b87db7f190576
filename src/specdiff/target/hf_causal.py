"""Adapter for any Hugging Face `AutoModelForCausalLM` (Qwen3, Llama, Qwen2, ...) as the target.

It owns the target's static KV cache and the three operations the decode loop needs:
- `prefill(ids)`: run the prompt, committed at once;
- `forward(tree)`: run a `DraftTree` at slots [length, length + N) under its ancestor mask, at
  positions length + depth, returning logits for every node and the tapped hidden states;
- `commit(accepted)`: gather the accepted nodes' K/V into slots [length, length + k) and advance
  `length`. Whatever else the tree wrote is simply overwritten later: rollback is a pointer.

The cache is Hugging Face's `StaticCache`; its layers append at their `cumulative_length`, which
this adapter sets before each forward (the same on transformers 5.17 and 5.23).
"""

from __future__ import annotations

import inspect

import json
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, StaticCache

from specdiff.errors import SpecdiffError
from specdiff.native import Native
from specdiff.ops import device_index
from specdiff.target.tree_plan import TreePlan
from specdiff.types import DraftTree, TargetOutput

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBE_TOKENS = 8
# The largest probe error (max |logit difference| over the largest |logit|) that rounding explains:
# two forwards order their float work differently. A modelling difference (a missing scale, norm
# offset, cap or mask) moves logits by a large share of their scale.
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
# Families whose tree forward through this adapter tests/test_architectures.py pins against
# transformers' own generate; any other family is probed at load (`HFTarget.check_probe`)
TREE_FORWARD_TESTED = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe")


def cache_argument(model: torch.nn.Module) -> str:
    """The name of a forward's cache argument: `cache` where transformers renamed
    `past_key_values` (which it still takes, with a warning on every call), else the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sliding_window(cfg) -> int | None:
    """The attention window the model applies to some layer (None: full attention everywhere)."""
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


class HFTarget:
    engine = "hf"
    numerics = "fast"  # its rounding (`DecodeConfig.numerics`)
    kernels_ran = "torch"  # the forward's kernels: torch, triton (fused) or invariant (exact numerics)
    fused = None  # a forward that reads the ancestor block, not the [N, max_len] mask (static engine)

    def __init__(self, model: torch.nn.Module, tap_layers: Sequence[int] = (), native: Native | None = None,
                 check: bool = True):
        """native: the tree's ancestor mask in C (None: in Python, the same mask); check: run the
        load-time probe (`check_probe`)."""
        self.model = model.eval()
        self.native = native
        self.config = model.config.get_text_config(decoder=True)
        layers = getattr(model.get_decoder(), "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            # the taps, the static cache and the tree mask address decoder layers by index
            raise SpecdiffError(f"{type(model).__name__} is not supported: specdiff needs a decoder whose layers are a "
                                "`layers` list (Llama, Mistral, Qwen2/3 and similar)")
        self.layers = layers
        self.num_layers = len(self.layers)
        self.hidden_size = int(self.config.hidden_size)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_positions = int(getattr(self.config, "max_position_embeddings", 1 << 30))
        self.window = sliding_window(self.config)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.cache: StaticCache | None = None
        self._cache_arg = cache_argument(model)
        self.max_len = 0
        self.length = 0  # committed slots
        self._taps: dict[int, torch.Tensor] = {}
        self._hooks: list = []
        self.set_taps(tap_layers)
        if check and getattr(self.config, "model_type", None) not in TREE_FORWARD_TESTED:
            self.check_probe()

    def check_probe(self) -> None:
        """Refuse (one line) a model whose tree forward this adapter does not get right: a small
        tree after a short prompt, each node's logits against the model's own forward over that
        node's path. Families whose attention ignores a custom 4D mask or the static cache fail here
        instead of returning other tokens."""
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.vocab_size, (PROBE_TOKENS + 3,), generator=g).tolist()
        prompt, (a, b, c) = ids[:PROBE_TOKENS], ids[PROBE_TOKENS:]
        tree = DraftTree.from_lists([prompt[-1], a, b, c], [-1, 0, 0, 1])  # siblings a, b; c under a
        try:
            with torch.inference_mode():
                self.reset(len(ids) + 1)
                self.prefill(prompt[:-1])
                got = self.forward(tree).logits.float()  # [4, V]
                # nodes 0, 1, 3 lie on the path prompt + a + c, node 2 on prompt + b
                chain = self.model(input_ids=torch.tensor([prompt + [a, c]], device=self.device)).logits[0, -3:]
                side = self.model(input_ids=torch.tensor([prompt + [b]], device=self.device)).logits[0, -1:]
                ref = torch.cat([chain[:2], side, chain[2:]]).float()
        except SpecdiffError:  # already one line that says why
            raise
        except Exception as e:  # an architecture whose forward cannot take the tree at all
            raise SpecdiffError(f"specdiff cannot run {type(self.model).__name__}'s tree forward "
                                f"({type(e).__name__}: {first_line(e)})") from None
        finally:
            self.cache, self.max_len, self.length = None, 0, 0
        err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        if not err <= PROBE_TOLERANCE[self.dtype]:
            raise SpecdiffError(f"specdiff's tree forward does not reproduce {type(self.model).__name__}'s logits "
                                f"(probe error {err:.2g} of their scale); this model is not supported")

    # -- embeddings the drafter borrows ------------------------------------------------------
    @property
    def embed_tokens(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    # -- hidden-state taps -------------------------------------------------------------------
    def set_taps(self, layer_ids: Sequence[int]) -> None:
        """Record the outputs of decoder layers `layer_ids` (0-based) on every forward."""
        for h in self._hooks:
            h.remove()
        self._hooks, self.tap_layers = [], tuple(layer_ids)
        for i in self.tap_layers:
            if not 0 <= i < self.num_layers:
                raise SpecdiffError(f"tapped layer {i} does not exist: the target has {self.num_layers} layers")
            self._hooks.append(self.layers[i].register_forward_hook(self._make_hook(i)))

    def _make_hook(self, i: int):
        def hook(_module, _args, output):
            self._taps[i] = output[0] if isinstance(output, tuple) else output

        return hook

    # -- cache -------------------------------------------------------------------------------
    def reset(self, max_len: int) -> None:
        """Start a new sequence with room for `max_len` slots (prompt + output + one tree)."""
        if self.cache is None or self.max_len < max_len:
            cache = StaticCache(config=self.model.config, max_cache_len=max_len)
            for layer in cache.layers:
                # per-slot state past K/V (DeepSeek V3.2's indexer keys) that commit would not
                # move nor rollback rewind: later rounds would read stale slots
                extra = [n for n in vars(layer) if n.endswith("cumulative_length") and n != "cumulative_length"]
                if extra:
                    raise SpecdiffError(f"specdiff does not manage {type(self.model).__name__}'s cache state "
                                        f"{extra[0]} ({type(layer).__name__}); this model is not supported")
            self.cache = cache
            self.max_len = max_len
        self.length = 0

    def _layer_states(self):
        return [(layer.keys, layer.values) for layer in self.cache.layers if layer.is_initialized]

    # -- forwards ----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, tree: DraftTree) -> TargetOutput:
        plan = TreePlan.build(tree, self.length, self.max_len, self.device, self.dtype, self.native,
                              with_mask=self.fused is None)
        return self.run(plan)

    @torch.inference_mode()
    def run(self, plan: TreePlan) -> TargetOutput:
        for layer in self.cache.layers:  # write the nodes at slots [start, start + N)
            layer.cumulative_length.fill_(plan.start)
            if hasattr(layer, "cumulative_length_int"):
                # sliding-window layers count their length as an int too, and treat the cache as
                # full (roll, concatenate) once it reaches their size: it must not count nodes
                # the walk rejected nor an earlier sequence's
                layer.cumulative_length_int = plan.start
        self._taps.clear()
        out = self.model(
            input_ids=plan.input_ids,
            position_ids=plan.position_ids,
            attention_mask=plan.mask,
            use_cache=True,
            **{self._cache_arg: self.cache},
        )
        features = None
        if self.tap_layers:
            features = torch.cat([self._taps[i][0] for i in self.tap_layers], dim=-1)  # [N, T*H]
        return TargetOutput(logits=out.logits[0], features=features)

    def prefill(self, ids: Sequence[int]) -> TargetOutput:
        """Run `ids` as a chain from slot `length` and commit all of them."""
        tree = DraftTree.from_lists(list(ids), list(range(-1, len(ids) - 1)))
        out = self.forward(tree)
        self.length += len(ids)
        return out

    @torch.inference_mode()
    def commit(self, accepted: Sequence[int]) -> None:
        """Keep tree nodes `accepted` (increasing, root first) as the next committed slots."""
        k = len(accepted)
        if list(accepted) != list(range(k)):  # a prefix of the tree is already in place
            src = device_index(accepted, self.device) + self.length
            for keys, values in self._layer_states():
                keys[:, :, self.length : self.length + k] = keys.index_select(2, src)
                values[:, :, self.length : self.length + k] = values.index_select(2, src)
        self.length += k


def load_target(path: str | Path, device: str = "cpu", dtype: str = "float32") -> tuple[torch.nn.Module, object]:
    """Load an `AutoModelForCausalLM` and its tokenizer from a local folder (exit 2 if unusable)."""
    from transformers import AutoTokenizer

    folder, _ = read_model_folder(path, "target")
    if dtype not in DTYPES:
        raise SpecdiffError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], attn_implementation="sdpa")
    except Exception as e:  # corrupt or unsupported checkpoints: one line, no traceback
        raise SpecdiffError(f"cannot load target model from {folder}: {type(e).__name__}: {first_line(e)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise SpecdiffError(f"cannot load tokenizer from {folder}: {type(e).__name__}: {first_line(e)}") from None
    return model.to(device), tokenizer


def read_model_folder(path: str | Path, what: str) -> tuple[Path, dict]:
    """A local model folder -> (folder, its config.json); SpecdiffError naming `what` ("target",
    "dLLM") if the folder or its config is missing or broken."""
    folder = Path(path)
    if not folder.is_dir():
        raise SpecdiffError(f"{what} folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise SpecdiffError(f"{what} folder has no config.json: {folder}")
    try:
        return folder, json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecdiffError(f"{what} config.json is not valid JSON: {folder / 'config.json'} ({e})") from None


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
