"""Masked-diffusion LLMs from local Hugging Face folders, behind the MaskedDiffusionModel interface.

`load_dllm(path)` reads config.json and returns a `DLLMBundle` whose `model` is called as
`model(ids [B, N], visible [B, N, N] bool, position_ids [B, N], context=None) -> logits [B, N, V]`,
row i's logits predicting the token at row i's own position, with `.context(...)` for the dual
cache (model.py). What each architecture needs to get there:

| kind     | config.json                  | mask id                | visibility, positions              | dual cache |
|----------|------------------------------|------------------------|------------------------------------|------------|
| specdiff | qwen3 (etc.) + mask_token_id | config                 | additive 4-D mask, position_ids    | yes        |
| llada    | model_type llada             | config mask_token_id   | ignored by its attention, and its  | yes        |
|          |                              |                        | RoPE takes no positions: patched   |            |
| dream    | model_type Dream             | config mask_token_id   | bool 4-D mask, position_ids; row   | yes        |
|          |                              |                        | i-1 predicts token i: undone       |            |
| sdar     | model_type sdar              | config, else tokenizer | bool 4-D mask, position_ids        | no         |

LLaDA, Dream and SDAR load their own modeling code (`auto_map`, trust_remote_code), so what is
relied on is their calling convention, named where it is used below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from specdiff.dllm.model import KV, MaskedDiffusionModel
from specdiff.errors import SpecdiffError
from specdiff.target.hf_causal import first_line, read_model_folder

KINDS = ("specdiff", "llada", "dream", "sdar")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DLLMBundle:
    model: object  # the MaskedDiffusionModel interface
    mask_id: int
    tokenizer: object | None  # tokenizers.Tokenizer, a Hugging Face tokenizer, or None if the folder has none
    kind: str  # one of KINDS
    logit_shift: bool  # the raw model predicts token i at row i-1 (Dream); `model` already undoes it
    supports_block_causal: bool  # block-causal visibility is honoured (Spiffy exact without a cache)
    supports_dual_cache: bool  # `model.context` exists
    native_block_causal: bool = False  # trained block-causal (SDAR): decode with block_causal=True
    config: dict = field(default_factory=dict, repr=False)  # config.json as read
    path: Path | None = None  # the folder it was loaded from (its graphs/ hold calibrated draft graphs)


class _Adapter:
    """Shared by the remote-code adapters: eval mode, inputs moved to the model's device."""

    def __init__(self, hf_model: torch.nn.Module):
        self.hf_model = hf_model.eval()
        p = next(hf_model.parameters())
        self.dtype, self.device = p.dtype, p.device

    def _inputs(self, ids, visible, position_ids):
        return ids.to(self.device), visible.to(self.device), position_ids.to(self.device)


# --- LLaDA -------------------------------------------------------------------------------------
# Its Hugging Face code (LLaDAModelLM) calls SDPA with attn_mask=None whatever attention_bias says
# (LLaDA#89/#90), its RotaryEmbedding.forward(q, k) rotates by row index, and it refuses a KV cache.
# Each block's `_scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)` (called
# after RoPE) and `rotary_emb.forward(q, k)` are therefore replaced by versions that read the mask,
# the positions and the dual-cache context from `_Hooks` while an adapter call is in flight, and
# fall back to the originals otherwise.


@dataclass
class _Hooks:
    visible: torch.Tensor | None = None  # [B, Q, K] bool; None: no adapter call in flight
    positions: torch.Tensor | None = None  # [B, Q]
    context: KV | None = None  # per layer (keys, values) [B, H_kv, C, d], after RoPE
    capture: list | None = None  # receives every layer's (keys, values) of the queried rows


def _patch_llada_block(block: torch.nn.Module, layer: int, hooks: _Hooks) -> None:
    sdpa, rope, rot = block._scaled_dot_product_attention, block.rotary_emb.forward, block.rotary_emb

    def rope_at_positions(q, k):  # [B, H, Q, d] each
        if hooks.positions is None:
            return rope(q, k)
        # the model's own tables and rotation: sin, cos [1, 1, L, d] -> [B, 1, Q, d] at the positions
        sin, cos = rot.get_rotary_embedding(int(hooks.positions.max()) + 1, q.device)
        sin, cos = sin[0, 0][hooks.positions][:, None], cos[0, 0][hooks.positions][:, None]
        full = getattr(rot.config, "rope_full_precision", True)
        out = []
        for t in (q, k):
            t_ = t.float() if full else t
            out.append(rot.apply_rotary_pos_emb(sin.type_as(t_), cos.type_as(t_), t_).type_as(t))
        return tuple(out)

    def masked_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        if hooks.visible is None:
            return sdpa(q, k, v, attn_mask, dropout_p, is_causal)
        if hooks.capture is not None:
            hooks.capture.append((k, v))
        if hooks.context is not None:
            ck, cv = hooks.context[layer]
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
        groups = q.shape[1] // k.shape[1]  # grouped-query heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=hooks.visible[:, None], is_causal=False)

    block._scaled_dot_product_attention = masked_sdpa
    rot.forward = rope_at_positions


class LLaDAAdapter(_Adapter):
    def __init__(self, hf_model: torch.nn.Module):
        super().__init__(hf_model)
        self.hooks = _Hooks()
        blocks = [m for m in hf_model.modules()
                  if hasattr(m, "_scaled_dot_product_attention") and hasattr(m, "rotary_emb")]
        if not blocks:
            raise SpecdiffError(f"LLaDA model {type(hf_model).__name__} has no blocks with "
                                "_scaled_dot_product_attention and rotary_emb: not LLaDA modeling code specdiff knows")
        for layer, block in enumerate(blocks):
            _patch_llada_block(block, layer, self.hooks)

    def _run(self, ids, visible, position_ids, context=None, capture=None) -> torch.Tensor:
        ids, visible, position_ids = self._inputs(ids, visible, position_ids)
        self.hooks.visible, self.hooks.positions, self.hooks.context, self.hooks.capture = (
            visible, position_ids, context, capture)
        try:
            return self.hf_model(input_ids=ids).logits
        finally:
            self.hooks.visible = self.hooks.positions = self.hooks.context = self.hooks.capture = None

    @torch.no_grad()
    def __call__(self, ids, visible, position_ids, context: KV | None = None) -> torch.Tensor:
        return self._run(ids, visible, position_ids, context)

    @torch.no_grad()
    def context(self, ids, visible, position_ids, keep) -> tuple[torch.Tensor, KV]:
        captured: list = []
        logits = self._run(ids, visible, position_ids, capture=captured)
        return logits, [(k[:, :, keep], v[:, :, keep]) for k, v in captured]


# --- Dream -------------------------------------------------------------------------------------
# DreamModel(input_ids, attention_mask, position_ids, past_key_values, use_cache) takes a 4-D bool
# mask and explicit positions (as its diffusion_generate does when padded), appends to a Cache
# passed in, and returns raw logits whose row i predicts token i + 1 (AR-initialised): its own
# sampler uses cat([logits[:, :1], logits[:, :-1]]). Here row q's logits are the raw logits of the
# row that holds position(q) - 1 in q's view, which for draft copies (same positions, other rows)
# is the row before the copy's block: the real row of the previous block, or the draft's own row.


@dataclass
class ShiftedContext:
    """Dream's dual cache: the frozen keys and values, plus the raw logits of the context rows
    followed by a queried row (the row just before the block): they predict its first token."""

    kv: KV
    rows: torch.Tensor  # [R] their columns among the context's
    positions: torch.Tensor  # [B, R]
    raw: torch.Tensor  # [B, R, V]


def unshift(raw_q: torch.Tensor, raw_k: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor,
            visible: torch.Tensor) -> torch.Tensor:
    """Row q's logits = raw_k at the key row that q sees at position(q) - 1 ([B, Q, V]); a row at
    position 0 keeps its own (Dream's convention). raw_q [B, Q, V], raw_k [B, K, V], pos_q [B, Q],
    pos_k [B, K], visible [B, Q, K]."""
    source = visible & (pos_k[:, None, :] == pos_q[:, :, None] - 1)  # [B, Q, K]
    found = source.any(dim=-1)  # [B, Q]
    if not bool((found | (pos_q == 0)).all()):
        raise ValueError("Dream: a row sees no row at its position - 1, so nothing predicts its token")
    row = source.int().argmax(dim=-1)  # [B, Q] the first such row
    moved = raw_k.gather(1, row[..., None].expand(-1, -1, raw_k.shape[-1]))
    return torch.where(found[..., None], moved, raw_q)


class DreamAdapter(_Adapter):
    def _raw(self, ids, visible, position_ids, cache) -> torch.Tensor:
        return self.hf_model(input_ids=ids, attention_mask=visible[:, None], position_ids=position_ids,
                             past_key_values=cache, use_cache=cache is not None).logits

    @torch.no_grad()
    def __call__(self, ids, visible, position_ids, context: ShiftedContext | None = None) -> torch.Tensor:
        ids, visible, position_ids = self._inputs(ids, visible, position_ids)
        if context is None:
            raw = self._raw(ids, visible, position_ids, None)
            return unshift(raw, raw, position_ids, position_ids, visible)
        raw = self._raw(ids, visible, position_ids, DynamicCache(ddp_cache_data=context.kv))
        C = visible.shape[-1] - ids.shape[1]  # context columns come first
        seen = torch.cat([visible[:, :, context.rows.to(self.device)], visible[:, :, C:]], dim=-1)  # [B, Q, R + Q]
        return unshift(raw, torch.cat([context.raw, raw], 1), position_ids,
                       torch.cat([context.positions, position_ids], 1), seen)

    @torch.no_grad()
    def context(self, ids, visible, position_ids, keep) -> tuple[torch.Tensor, ShiftedContext]:
        ids, visible, position_ids = self._inputs(ids, visible, position_ids)
        cache = DynamicCache()
        raw = self._raw(ids, visible, position_ids, cache)
        kv = [(layer.keys[:, :, keep], layer.values[:, :, keep]) for layer in cache.layers]
        pos = position_ids[:, keep]  # [B, C]
        rows = (~torch.isin(pos[0] + 1, pos[0])).nonzero()[:, 0]  # [R] context rows followed by a queried row
        shifted = unshift(raw, raw, position_ids, position_ids, visible)
        return shifted, ShiftedContext(kv, rows, pos[:, rows], raw[:, keep][:, rows])


# --- SDAR --------------------------------------------------------------------------------------
# SDARForCausalLM(input_ids, attention_mask, position_ids, ...) hands the mask to its attention,
# which takes `attention_mask.bool()` (True = attend) into SDPA: a bool mask, not an additive one.
# Its cache protocol (store_kv) is a prefix cache, so no dual cache here: block-causal attention
# already makes Spiffy exact without one.


class SDARAdapter(_Adapter):
    @torch.no_grad()
    def __call__(self, ids, visible, position_ids, context=None) -> torch.Tensor:
        if context is not None:
            raise SpecdiffError("SDAR has no dual cache in specdiff; decode without it (block-causal is exact)")
        ids, visible, position_ids = self._inputs(ids, visible, position_ids)
        return self.hf_model(input_ids=ids, attention_mask=visible[:, None], position_ids=position_ids,
                             use_cache=False).logits

    def context(self, ids, visible, position_ids, keep):
        raise SpecdiffError("SDAR has no dual cache in specdiff; decode without it (block-causal is exact)")


# --- loading -----------------------------------------------------------------------------------


def _kind(config: dict, folder: Path) -> str:
    model_type = str(config.get("model_type", ""))
    if model_type.lower() in ("llada", "dream", "sdar"):
        return model_type.lower()
    if "mask_token_id" in config or config.get("specdiff_dllm"):
        return "specdiff"
    raise SpecdiffError(f"{folder}: model_type {model_type!r} is not a masked-diffusion LM specdiff can load "
                        f"(LLaDA, Dream, SDAR, or a model whose config.json has mask_token_id)")


def _auto_class(config: dict, folder: Path, kind: str, prefer: str) -> str:
    """The Auto* name whose auto_map entry to load, after checking its module is in the folder."""
    auto_map = config.get("auto_map") or {}
    name = next((a for a in (prefer, "AutoModel", "AutoModelForCausalLM") if a in auto_map), None)
    if name is None:
        raise SpecdiffError(f"{folder}: a {kind} config.json needs auto_map.{prefer} naming its modeling code")
    for ref in (auto_map[name], auto_map.get("AutoConfig", "")):
        module = ref.split("--")[-1].rsplit(".", 1)[0]
        if module and not (folder / f"{module}.py").is_file():
            raise SpecdiffError(f"{folder}: auto_map names {module}.py, which is not in the folder")
    return name


def _load_tokenizer(folder: Path, kind: str):
    """specdiff's own folders: the `tokenizers` file the trainer copied (no special tokens added);
    the others: their Hugging Face tokenizer, else tokenizer.json."""
    own = kind == "specdiff" and (folder / "tokenizer.json").is_file()
    try:
        if (folder / "tokenizer_config.json").is_file() and not own:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:
        raise SpecdiffError(f"cannot load tokenizer from {folder}: {type(e).__name__}: {first_line(e)}") from None
    return None


def _mask_id(config: dict, tokenizer, kind: str, folder: Path) -> int:
    if isinstance(config.get("mask_token_id"), int):
        return config["mask_token_id"]
    if kind == "sdar" and getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)  # SDAR's generate takes the tokenizer's mask token
    hint = {"llada": " (stock LLaDA uses 126336)", "dream": " (stock Dream uses 151666)",
            "sdar": " and its tokenizer has no mask_token (stock SDAR uses 151669)"}.get(kind, "")
    raise SpecdiffError(f"{folder}: config.json has no integer mask_token_id{hint}")


def load_dllm(path: str | Path, device: str = "cpu", dtype: torch.dtype | str = torch.float32) -> DLLMBundle:
    """A masked-diffusion LM from a local folder (config.json, weights, tokenizer) -> DLLMBundle.

    Raises SpecdiffError with one line for anything wrong with the folder."""
    from transformers import AutoModel, AutoModelForCausalLM

    folder, config = read_model_folder(path, "dLLM")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise SpecdiffError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    kind = _kind(config, folder)
    tokenizer = _load_tokenizer(folder, kind)
    mask_id = _mask_id(config, tokenizer, kind, folder)
    try:
        if kind == "specdiff":
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
        else:
            auto = _auto_class(config, folder, kind, "AutoModelForCausalLM" if kind == "sdar" else "AutoModel")
            loader = AutoModelForCausalLM if auto == "AutoModelForCausalLM" else AutoModel
            hf = loader.from_pretrained(folder, dtype=dtype, trust_remote_code=True)
    except SpecdiffError:
        raise
    except Exception as e:  # corrupt or unsupported checkpoints: one line, no traceback
        raise SpecdiffError(f"cannot load {kind} model from {folder}: {type(e).__name__}: {first_line(e)}") from None
    hf = hf.to(device).eval()
    if kind == "specdiff" and not 0 <= mask_id < hf.get_output_embeddings().weight.shape[0]:
        raise SpecdiffError(f"{folder}: mask_token_id {mask_id} is not a row of the model's vocabulary")
    adapter = {"specdiff": MaskedDiffusionModel, "llada": LLaDAAdapter, "dream": DreamAdapter, "sdar": SDARAdapter}
    model = adapter[kind](hf)
    return DLLMBundle(model=model, mask_id=mask_id, tokenizer=tokenizer, kind=kind, logit_shift=kind == "dream",
                      supports_block_causal=True, supports_dual_cache=kind != "sdar",
                      native_block_causal=kind == "sdar", config=config, path=folder)
