"""Inflation: a trained Qwen3 target and its DFlash drafters embedded, function unchanged, in a
larger Qwen3 shape. The result is a cost stand-in for a real large pair: the small pair's tokens
and acceptance at the large shape's cost per forward, not a better model.

This module owns the shapes (the public Qwen3 ones and HIDDENxLAYERS), the maps that place each
small weight in a large one, and the folders it writes (`target`, `dflash`, `vp`, their model
cards, `inflate.json`). docs/inflate.md has the math; in short:

- every width is zero-padded, so the residual stream is [x, 0]; a norm over the padded width sees
  mean(x^2) * H/H', which the weights (x sqrt(H/H')) and rms_norm_eps (x H/H') undo exactly;
- q_proj and k_proj rows are scaled so the per-head q/k norms see the same mean square plus eps
  as in the small model, which makes them exact under the one shared eps, and the k_norm weights
  absorb the wider head_dim's attention scale 1/sqrt(hd');
- a wider head_dim keeps rotate-half RoPE pairs: dim d goes to d, dim hd/2 + d to hd'/2 + d, and
  theta' = theta^(hd'/hd) gives them their old frequencies;
- layers are spread evenly and padded with identity layers (o_proj and down_proj zero), and the
  drafters' taps follow their layers.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from specdiff.errors import SpecdiffError
from specdiff.models.shapes import PUBLIC, Shape

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def parse_shape(text: str, source: Shape) -> Shape:
    """A public shape's name or HIDDENxLAYERS, where heads, KV heads and the MLP grow with the
    hidden size (rounded up, the query group kept) and head_dim stays."""
    key = text.strip().lower()
    if key in PUBLIC:
        shape = PUBLIC[key][0]
    else:
        m = re.fullmatch(r"(\d+)x(\d+)", key)
        if not m:
            raise SpecdiffError(f"unknown shape {text!r}; use {', '.join(PUBLIC)} or HIDDENxLAYERS (e.g. 768x16)")
        hidden, layers = int(m[1]), int(m[2])
        if hidden < source.hidden or layers < source.layers:
            raise SpecdiffError(f"shape {text} is smaller than the source target (hidden {source.hidden}, "
                                f"{source.layers} layers)")
        kv = max(source.kv_heads, _ceil_div(source.kv_heads * hidden, source.hidden))
        shape = Shape(hidden, layers, kv * (source.heads // source.kv_heads), kv, source.head_dim,
                      max(source.intermediate, _ceil_div(source.intermediate * hidden, source.hidden)))
    check_fits(source, shape, f"shape {text}")
    return shape


def check_fits(small: Shape, big: Shape, what: str) -> None:
    """Refuse a shape that cannot hold `small` (every width and the depth at least as large, and
    room for every query head next to a copy of its KV head)."""
    for field, a in asdict(small).items():
        if (b := getattr(big, field)) < a:
            raise SpecdiffError(f"{what} is smaller than the source: {field} {b} < {a}")
    if big.head_dim % 2 or big.heads % big.kv_heads:
        raise SpecdiffError(f"{what}: head_dim must be even and heads a multiple of KV heads ({big})")
    head_slots(small, big, what)


def head_slots(small: Shape, big: Shape, what: str = "shape") -> tuple[list[int], list[list[int]]]:
    """Where each query head and each KV head go: (q_slot per small query head, kv_slots[copy][kv]).

    Query head j reads KV head j // g (g = heads / kv_heads, both in HF's GQA and the drafter's
    repeat_interleave). When the large group g' is smaller than g, a KV head is copied into
    ceil(g / g') slots, each serving up to g' of its query heads."""
    g, g2 = small.heads // small.kv_heads, big.heads // big.kv_heads
    copies = _ceil_div(g, g2)
    if small.kv_heads * copies > big.kv_heads:
        raise SpecdiffError(f"{what} cannot hold the source's attention: {small.kv_heads} KV heads x {copies} "
                            f"copies (query groups {g} -> {g2}) exceed its {big.kv_heads} KV heads")
    q_slots = [((j // g) * copies + (j % g) // g2) * g2 + (j % g) % g2 for j in range(small.heads)]
    kv_slots = [[k * copies + r for k in range(small.kv_heads)] for r in range(copies)]
    return q_slots, kv_slots


def drafter_shape(drafter: Shape, small_target: Shape, big_target: Shape) -> Shape:
    """A drafter widened like its target: the target's hidden size, its own depth, and heads, KV
    heads, head_dim and MLP scaled by the target's ratios (a drafter shaped like its small target
    gets exactly the large target's attention shape)."""
    kv = _ceil_div(drafter.kv_heads * big_target.kv_heads, small_target.kv_heads)
    heads = _ceil_div(_ceil_div(drafter.heads * big_target.heads, small_target.heads), kv) * kv
    hd = _ceil_div(drafter.head_dim * big_target.head_dim, small_target.head_dim)
    inter = _ceil_div(drafter.intermediate * big_target.intermediate, small_target.intermediate)
    return Shape(big_target.hidden, drafter.layers, heads, kv, hd + hd % 2, inter)


def spread(small_layers: int, big_layers: int) -> list[int]:
    """The large index of each small layer, spread evenly; the rest are identity layers."""
    return [i * big_layers // small_layers for i in range(small_layers)]


class Widening:
    """Where each weight of a small decoder layer goes in a large one, and the scales that keep
    its function (the module docstring)."""

    def __init__(self, small: Shape, big: Shape):
        self.small, self.big = small, big
        q_slots, kv_slots = head_slots(small, big)
        half, half2 = small.head_dim // 2, big.head_dim // 2
        d = torch.arange(small.head_dim)
        self.dims = torch.where(d < half, d, d - half + half2)  # [hd]: RoPE pairs (d, d + hd/2) stay pairs

        def rows(slots: list[int]) -> torch.Tensor:
            return (torch.tensor(slots)[:, None] * big.head_dim + self.dims).flatten()

        self.q_rows = rows(q_slots)  # [heads * hd] rows of q_proj, columns of o_proj
        self.kv_rows = [rows(s) for s in kv_slots]  # per copy: [kv_heads * hd] rows of k_proj, v_proj
        self.hidden_scale = math.sqrt(small.hidden / big.hidden)
        # mean over hd' of (s q)^2 = (H/H') mean(q^2): the head norms see the hidden norms' eps ratio
        self.qk_scale = math.sqrt(small.hidden * big.head_dim / (big.hidden * small.head_dim))
        # q and k each leave their norm x sqrt(hd'/hd); one of the two factors is SDPA's 1/sqrt(hd') vs 1/sqrt(hd)
        self.k_norm_scale = math.sqrt(small.head_dim / big.head_dim)

    def fill_layer(self, big: nn.Module, small: nn.Module | None) -> None:
        """A large Qwen3 decoder layer (HF's or the drafter's: the same names) from a small one;
        None: an identity layer (o_proj and down_proj zero, so it adds nothing to the stream)."""
        for p in big.parameters():
            p.zero_()
        a = big.self_attn
        if small is None:
            for norm in (big.input_layernorm, big.post_attention_layernorm, a.q_norm, a.k_norm):
                norm.weight.fill_(1.0)
            return
        s, hid, inter = small.self_attn, torch.arange(self.small.hidden), torch.arange(self.small.intermediate)
        _place(a.q_proj.weight, s.q_proj.weight, self.q_rows, hid, self.qk_scale)
        for rows in self.kv_rows:
            _place(a.k_proj.weight, s.k_proj.weight, rows, hid, self.qk_scale)
            _place(a.v_proj.weight, s.v_proj.weight, rows, hid)
        _place(a.o_proj.weight, s.o_proj.weight, hid, self.q_rows)
        _place(a.q_norm.weight, s.q_norm.weight, self.dims)
        _place(a.k_norm.weight, s.k_norm.weight, self.dims, scale=self.k_norm_scale)
        for name in ("gate_proj", "up_proj"):
            _place(getattr(big.mlp, name).weight, getattr(small.mlp, name).weight, inter, hid)
        _place(big.mlp.down_proj.weight, small.mlp.down_proj.weight, hid, inter)
        for name in ("input_layernorm", "post_attention_layernorm"):
            self.fill_norm(getattr(big, name), getattr(small, name))

    def fill_norm(self, big: nn.Module, small: nn.Module) -> None:
        """A norm over the hidden size: the real entries x sqrt(H/H'), the padded ones 0."""
        big.weight.zero_()
        _place(big.weight, small.weight, torch.arange(self.small.hidden), scale=self.hidden_scale)


def _place(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor | None = None,
           scale: float = 1.0) -> None:
    """dst[rows, cols] = src * scale (the product in float32, then dst's dtype)."""
    value = (src.detach().float() * scale).to(device=dst.device, dtype=dst.dtype)
    rows = rows.to(dst.device)
    if cols is None:
        dst[rows] = value
    else:
        dst[rows[:, None], cols.to(dst.device)] = value


def widen_config(cfg, shape: Shape, sources: list[int | None], drop: tuple[str, ...] = ()):
    """`cfg` (a Qwen3Config) at `shape`: eps x H/H', RoPE theta^(hd'/hd), and the layer types of
    `sources` (per large layer, the small layer it holds, or None for an identity layer); the keys
    `drop` left out."""
    small = Shape.of(cfg)
    d = {k: v for k, v in cfg.to_dict().items() if k not in drop}
    d.update(hidden_size=shape.hidden, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
             num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, intermediate_size=shape.intermediate,
             rms_norm_eps=cfg.rms_norm_eps * small.hidden / shape.hidden)
    if shape.head_dim != small.head_dim:
        rope = dict(d.get("rope_parameters") or {})
        if rope.get("rope_type", "default") != "default":
            raise SpecdiffError(f"cannot widen head_dim under {rope['rope_type']} RoPE scaling (only the default RoPE)")
        exponent = shape.head_dim / small.head_dim
        if rope:
            d["rope_parameters"] = {**rope, "rope_theta": float(rope["rope_theta"]) ** exponent}
        if d.get("rope_theta") is not None:
            d["rope_theta"] = float(d["rope_theta"]) ** exponent
    if d.get("layer_types"):
        d["layer_types"] = [d["layer_types"][s] if s is not None else "full_attention" for s in sources]
    return type(cfg).from_dict(d)


def check_qwen3(cfg, what: str) -> None:
    if getattr(cfg, "model_type", None) != "qwen3":
        raise SpecdiffError(f"inflate embeds Qwen3 models; the {what} is {getattr(cfg, 'model_type', None)!r}")
    if getattr(cfg, "attention_bias", False):
        raise SpecdiffError(f"inflate does not handle attention biases (the {what} has them)")


def _meta_build(build, dtype: torch.dtype, device: str) -> nn.Module:
    """A module of uninitialised memory: built on meta, then given storage once (no random init,
    no second copy)."""
    with torch.device("meta"):
        model = build()
    return model.to(dtype).to_empty(device=device)


@torch.no_grad()
def inflate_target(model: nn.Module, shape: Shape, dtype: torch.dtype = torch.float32,
                   device: str = "cpu") -> nn.Module:
    """A Qwen3 causal LM at `shape` computing `model`'s function (same vocabulary)."""
    from transformers import AutoModelForCausalLM

    cfg = model.config
    check_qwen3(cfg, "target")
    small = Shape.of(cfg)
    check_fits(small, shape, "the target shape")
    w, placed = Widening(small, shape), spread(small.layers, shape.layers)
    source = {b: a for a, b in enumerate(placed)}
    sources = [source.get(i) for i in range(shape.layers)]
    big_cfg = widen_config(cfg, shape, sources)
    big = _meta_build(lambda: AutoModelForCausalLM.from_config(big_cfg, dtype=dtype), dtype, device)
    hid = torch.arange(small.hidden)
    for name in ("get_input_embeddings", "get_output_embeddings"):  # [V, H] -> [V, H'], columns padded
        dst, src = getattr(big, name)().weight, getattr(model, name)().weight
        dst.zero_()
        _place(dst, src, torch.arange(src.shape[0]), hid)
    decoder, small_decoder = big.get_decoder(), model.get_decoder()
    w.fill_norm(decoder.norm, small_decoder.norm)
    for layer, i in zip(decoder.layers, sources):
        w.fill_layer(layer, None if i is None else small_decoder.layers[i])
    decoder.rotary_emb = type(decoder.rotary_emb)(big_cfg).to(device)  # its buffers were left empty
    if big_cfg.tie_word_embeddings:
        big.tie_weights()
    return big.eval()


@torch.no_grad()
def inflate_drafter(drafter, small_target: Shape, big_target: Shape, dtype: torch.dtype = torch.float32,
                    device: str = "cpu"):
    """A DFlash drafter for the target inflated from `small_target` to `big_target`: same depth,
    widened like the target, its taps moved to the large indices of the same layers."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    from specdiff.drafters.dflash import DFlashDrafter, DFlashSpec

    cfg, spec = drafter.config, drafter.spec
    small = Shape.of(cfg)
    big = drafter_shape(small, small_target, big_target)
    check_fits(small, big, "the drafter shape")
    w, placed = Widening(small, big), spread(small_target.layers, big_target.layers)
    # the spec and save_drafter's `extra` hold the DFlash keys
    big_cfg = widen_config(cfg, big, list(range(small.layers)),
                           drop=("num_target_layers", "target_layer_ids", "mask_token_id", "specdiff"))
    big_spec = DFlashSpec(block_size=spec.block_size, mask_token_id=spec.mask_token_id,
                          target_layer_ids=[placed[t] for t in spec.target_layer_ids],
                          num_target_layers=big_target.layers)
    model = _meta_build(lambda: DFlashDrafter(big_cfg, big_spec), dtype, device)
    for p in model.parameters():
        p.zero_()
    hid = torch.arange(small.hidden)
    for t in range(len(spec.target_layer_ids)):  # fc [H, T*H] -> [H', T*H']: block t reads tap t's real entries
        _place(model.fc.weight, drafter.fc.weight[:, t * small.hidden:(t + 1) * small.hidden], hid,
               t * big.hidden + hid)
    w.fill_norm(model.hidden_norm, drafter.hidden_norm)
    w.fill_norm(model.norm, drafter.norm)
    for layer, small_layer in zip(model.layers, drafter.layers):
        w.fill_layer(layer, small_layer)
    model.rotary = Qwen3RotaryEmbedding(big_cfg).to(device)
    return model.eval()


# -- folders ----------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json")


@dataclass
class Plan:
    """What `inflate` will write, checked from the sources' configs alone (nothing loaded)."""

    name: str  # the --shape text
    target: Path
    drafter: Path
    vp_drafter: Path
    small: Shape  # the source target
    big: Shape
    drafter_shapes: dict  # kind -> (small, big)
    taps: list[int]  # the source drafter's taps
    vocab: int

    @property
    def layer_map(self) -> list[int]:
        return spread(self.small.layers, self.big.layers)


def _folder(path: str | Path | None, kind: str, flag: str) -> Path:
    from specdiff.models.bundled import default_path

    folder = Path(path) if path else default_path(kind)
    if not (folder / "config.json").is_file():
        where = "no folder" if not folder.is_dir() else "no config.json"
        raise SpecdiffError(f"{flag} source {folder}: {where}" + ("" if path else f"; pass {flag} DIR"))
    return folder


def plan(shape: str, target: str | Path | None = None, drafter: str | Path | None = None,
         vp_drafter: str | Path | None = None) -> Plan:
    """Check the sources and the shape (bundled models where a folder is None) -> the Plan."""
    from transformers import AutoConfig

    from specdiff.drafters.dflash import read_config

    t = _folder(target, "target", "--target")
    try:
        cfg = AutoConfig.from_pretrained(t)
    except Exception as e:  # an unreadable config: one line
        raise SpecdiffError(f"cannot read the target config in {t}: {type(e).__name__}") from None
    check_qwen3(cfg, "target")
    small = Shape.of(cfg)
    big = parse_shape(shape, small)
    shapes, folders, taps = {}, {}, None
    for kind, path, flag in (("dflash", drafter, "--drafter"), ("vp", vp_drafter, "--vp-drafter")):
        folders[kind] = _folder(path, kind, flag)
        dcfg, spec = read_config(folders[kind])
        check_qwen3(dcfg, f"{kind} drafter")
        d = Shape.of(dcfg)
        if d.hidden != small.hidden or any(not 0 <= i < small.layers for i in spec.target_layer_ids):
            raise SpecdiffError(f"{flag} does not fit the target (hidden {d.hidden}, taps {spec.target_layer_ids})")
        if taps is not None and spec.target_layer_ids != taps:
            raise SpecdiffError(f"the VP drafter taps {spec.target_layer_ids}, the DFlash drafter {taps}")
        taps = spec.target_layer_ids
        wide = drafter_shape(d, small, big)
        check_fits(d, wide, f"the {kind} drafter at shape {shape}")
        shapes[kind] = (d, wide)
    return Plan(shape, t, folders["dflash"], folders["vp"], small, big, shapes, taps, int(cfg.vocab_size))


def inflate(p: Plan, out: str | Path, dtype: str = "bfloat16", device: str = "cpu",
            max_shard_size: str = "5GB", log=lambda line: None) -> dict:
    """Write `out/target`, `out/dflash`, `out/vp` and `out/inflate.json` -> the summary written
    (`log`: one line per folder written)."""
    from specdiff.drafters.dflash import load_drafter, save_drafter
    from specdiff.target.hf_causal import load_target

    if dtype not in DTYPES:
        raise SpecdiffError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out, torch_dtype = Path(out), DTYPES[dtype]
    start = time.perf_counter()
    summary = {"shape": p.name, "dtype": dtype, "target_shape": asdict(p.big), "source_target": str(p.target),
               "source_target_shape": asdict(p.small), "layer_map": p.layer_map,
               "taps": {"source": p.taps, "inflated": [p.layer_map[i] for i in p.taps]}, "vocab_size": p.vocab,
               "folders": {}}
    model, _ = load_target(p.target, "cpu", "float32")
    big = inflate_target(model, p.big, torch_dtype, device)
    params = sum(x.numel() for x in big.parameters())
    big.save_pretrained(out / "target", max_shard_size=max_shard_size)
    del big
    for name in TOKENIZER_FILES:
        if (p.target / name).is_file():
            shutil.copy2(p.target / name, out / "target" / name)
    summary["folders"]["target"] = {"params": params}
    (out / "target" / "README.md").write_text(target_card(p, params, dtype))
    log(f"target: {out / 'target'} ({params / 1e9:.2f}B parameters, {p.big})")
    for kind, source in (("dflash", p.drafter), ("vp", p.vp_drafter)):
        small_drafter = load_drafter(source, "cpu", torch.float32)
        extra = {"inflate": {"source": str(source), "shape": p.name},
                 "source": getattr(small_drafter.config, "specdiff", None)}
        wide = inflate_drafter(small_drafter, p.small, p.big, torch_dtype, device)
        n = sum(x.numel() for x in wide.parameters())
        save_drafter(wide, out / kind, extra=extra)
        del wide
        (out / kind / "README.md").write_text(drafter_card(p, kind, source, n, dtype))
        summary["folders"][kind] = {"params": n, "shape": asdict(p.drafter_shapes[kind][1])}
        log(f"{kind}: {out / kind} ({n / 1e6:.0f}M parameters, {p.drafter_shapes[kind][1]})")
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "inflate.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def left_out(p: Plan, dtype: str) -> str:
    """What the kept vocabulary leaves out of a forward against the public model, in words."""
    if p.name.lower() not in PUBLIC:
        return f"The vocabulary stays the source's {p.vocab} tokens (no public model to compare with)."
    _, vocab, tied = PUBLIC[p.name.lower()]
    size = DTYPES[dtype].itemsize
    head = (vocab - p.vocab) * p.big.hidden * size
    weights = (vocab - p.vocab) * p.big.hidden * (1 if tied else 2)
    return (f"The vocabulary stays the source's {p.vocab} tokens, not {p.name}'s {vocab}: zero rows would change "
            f"the softmax, and a bias that could mask them is not part of Qwen3. So each forward's LM head reads "
            f"{head / 1e9:.2f} GB less ({vocab - p.vocab} x {p.big.hidden} x {size} bytes) than {p.name}'s, in the "
            f"target and in every drafting forward (the drafters borrow that head), and the checkpoint holds "
            f"{weights / 1e9:.2f}B fewer weights; the embedding lookup reads one row per token either way.")


def target_card(p: Plan, params: int, dtype: str) -> str:
    rows = "\n".join(f"| {f} | {a} | {getattr(p.big, f)} |" for f, a in asdict(p.small).items())
    return f"""# Inflated target, shape {p.name}: a cost stand-in, not a better model

`specdiff inflate --shape {p.name}` embedded `{p.target}` in this larger Qwen3 shape without changing its
function: the same next-token distribution (up to float rounding), so the same tokens and the same
drafter acceptance as the small pair, at the cost of a {params / 1e9:.2f}B-parameter forward ({dtype}).
Use it to time speculative decoding at this shape; it knows nothing the small model does not.

| | source | this folder |
|---|---|---|
{rows}
| vocabulary | {p.vocab} | {p.vocab} |

The small layers sit at large layers {p.layer_map}; the others are identity layers (their
o_proj and down_proj are zero). Padded widths are zero; norm weights, rms_norm_eps, the q/k
projections and RoPE theta are rescaled so the function is exact in exact arithmetic
(docs/inflate.md). Every weight is read by a forward as in a real model of this shape: the cost is
real, the extra capacity is not.

{left_out(p, dtype)}
"""


def drafter_card(p: Plan, kind: str, source: Path, params: int, dtype: str) -> str:
    small, big = p.drafter_shapes[kind]
    taps = [p.layer_map[i] for i in p.taps]
    return f"""# Inflated {kind} drafter, shape {p.name}: a cost stand-in, not a better drafter

`specdiff inflate --shape {p.name}` embedded `{source}` for the inflated target in `../target`,
without changing its function: it drafts what the source drafts for the source target (up to
float rounding), at this shape's cost. It is not a better drafter.

| | source | this folder |
|---|---|---|
| shape | {small} | {big} |
| taps (target layers) | {p.taps} of {p.small.layers} | {taps} of {p.big.layers} |

{params / 1e6:.0f}M parameters ({dtype}); `fc` reads each tap's real entries (docs/inflate.md).

{left_out(p, dtype)}
"""
