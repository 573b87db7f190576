"""The DFlash block-diffusion drafter, native (no trust_remote_code), in the public folder format.

Architecture (DFlash paper; z-lab/dflash): Qwen3 decoder layers with no embedding or LM head of
their own (the target's are borrowed, frozen). Hidden states of several target layers are
concatenated and fused once per committed token, `ctx = hidden_norm(fc(cat(h_l)))`, then injected
into every layer as extra keys/values: each layer projects ctx with its own k_proj/v_proj (+k_norm,
RoPE at the tokens' positions). Queries come only from the block [root, MASK x (B-1)] at positions
start..start+B-1, which attends to all context and to the whole block (no causal mask). Slot k of
the block predicts the token at start+k.

The context K/V of every committed token is kept in a static per-layer cache, so each round only
fuses the tokens committed since the last one.

Folder format: config.json (Qwen3 fields + `block_size`, `num_target_layers`,
`dflash_config: {mask_token_id, target_layer_ids}`, or those at top level) and model.safetensors
with `fc.weight`, `hidden_norm.weight`, `norm.weight`, `layers.{i}.…` (or the newer
`encoder.fc.weight` / `encoder.output_norm_enc.weight` names for the fusion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding

from specdiff.attention import cascade_attention
from specdiff.errors import SpecdiffError
from specdiff.ops import apply_rope, rms_norm
from specdiff.types import DraftProposal

# Newer DFlash checkpoints name the fusion weights differently; both load.
KEY_ALIASES = {"encoder.fc.weight": "fc.weight", "encoder.output_norm_enc.weight": "hidden_norm.weight"}


def default_target_layer_ids(num_target_layers: int, num_features: int) -> list[int]:
    """DFlash's rule: spread `num_features` taps over layers 1 .. L-3 (one tap: the middle)."""
    if num_features == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    return [round(1 + i * span / (num_features - 1)) for i in range(num_features)]


@dataclass
class DFlashSpec:
    """The DFlash-specific part of a drafter config (the rest is a plain Qwen3Config)."""

    block_size: int
    mask_token_id: int
    target_layer_ids: list[int]
    num_target_layers: int | None


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., heads, T, hd]; cos, sin: [..., T, hd] (one row per position, shared by heads)."""
    return apply_rope(x, cos.unsqueeze(-3), sin.unsqueeze(-3))


class DFlashAttention(nn.Module):
    """Leading batch dims are optional everywhere: inference runs [T, H], training [B, T, H]."""

    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.num_heads, self.num_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        bias = bool(getattr(cfg, "attention_bias", False))
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.unflatten(-1, (n, self.head_dim)).transpose(-3, -2)  # [..., T, n*hd] -> [..., n, T, hd]

    def kv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h: [..., T, H] -> k, v: [..., kv_heads, T, hd] (k normed, then rotated)."""
        k = rms_norm(self.k_norm, self._heads(self.k_proj(h), self.num_kv))
        return _rope(k, cos, sin), self._heads(self.v_proj(h), self.num_kv)

    def q(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return _rope(rms_norm(self.q_norm, self._heads(self.q_proj(h), self.num_heads)), cos, sin)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q: [..., heads, Tq, hd]; k, v: [..., kv_heads, Tk, hd]; mask: bool, broadcast to
        [..., heads, Tq, Tk], or None (all visible) -> [..., Tq, H]."""
        groups = self.num_heads // self.num_kv
        k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """Attention output [..., heads, T, hd] -> [..., T, H] through o_proj."""
        return self.o_proj(out.transpose(-3, -2).flatten(-2))


class DFlashLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.self_attn = DFlashAttention(cfg)
        self.mlp = Qwen3MLP(cfg)
        self.input_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)


class DFlashDrafter(nn.Module):
    """Weights of a DFlash drafter plus its context cache. Embedding and head come from the target."""

    def __init__(self, cfg: Qwen3Config, spec: DFlashSpec):
        super().__init__()
        self.config, self.spec = cfg, spec
        h = cfg.hidden_size
        self.layers = nn.ModuleList(DFlashLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.fc = nn.Linear(len(spec.target_layer_ids) * h, h, bias=False)
        self.hidden_norm = Qwen3RMSNorm(h, eps=cfg.rms_norm_eps)
        self.norm = Qwen3RMSNorm(h, eps=cfg.rms_norm_eps)
        self.rotary = Qwen3RotaryEmbedding(cfg)
        self._io: tuple[nn.Module, nn.Module] | None = None  # (target embed, target head): not ours
        self.ctx_k: torch.Tensor | None = None  # [layers, kv_heads, max_len, hd]
        self.ctx_v: torch.Tensor | None = None
        self.ctx_len = 0

    # -- binding to a target -----------------------------------------------------------------
    def bind(self, embed_tokens: nn.Module, lm_head: nn.Module) -> None:
        self._io = (embed_tokens, lm_head)

    @property
    def block_size(self) -> int:
        return self.spec.block_size

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., T] positions -> cos, sin: [..., T, hd] in the drafter's dtype."""
        dtype = self.fc.weight.dtype
        flat = positions.reshape(-1, positions.shape[-1])
        cos, sin = self.rotary(self.fc.weight[:1], flat)
        return cos.view(*positions.shape, -1).to(dtype), sin.view(*positions.shape, -1).to(dtype)

    # -- context cache -----------------------------------------------------------------------
    def reset(self, max_len: int) -> None:
        p = self.fc.weight
        a = self.layers[0].self_attn
        shape = (len(self.layers), a.num_kv, max_len, a.head_dim)
        if self.ctx_k is None or self.ctx_k.shape[2] < max_len:
            self.ctx_k = torch.zeros(shape, dtype=p.dtype, device=p.device)
            self.ctx_v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.ctx_len = 0

    @torch.inference_mode()
    def extend_context(self, features: torch.Tensor) -> None:
        """Fuse target features [n, T*H] of the next n committed tokens into every layer's K/V."""
        n = features.shape[0]
        if n == 0:
            return
        self.fuse(features, torch.arange(self.ctx_len, self.ctx_len + n, device=features.device))
        self.ctx_len += n

    def fuse(self, features: torch.Tensor, slots: torch.Tensor) -> None:
        """Target features [n, T*H] -> every layer's context K/V at cache slots [n] (= positions)."""
        ctx = rms_norm(self.hidden_norm, self.fc(features.to(self.fc.weight.dtype)))  # [n, H]
        cos, sin = self.rope(slots)
        for i, layer in enumerate(self.layers):
            k, v = layer.self_attn.kv(ctx, cos, sin)  # [kv_heads, n, hd]
            self.ctx_k[i].index_copy_(1, slots, k)
            self.ctx_v[i].index_copy_(1, slots, v)

    @torch.inference_mode()
    def draft(self, root: int, num_slots: int) -> torch.Tensor:
        """Draft `num_slots` tokens after `root` (at position ctx_len) -> logits [num_slots, V].

        The whole block is always drafted (the masks see each other, so a shorter block would
        give other marginals) and the first `num_slots` slots are returned."""
        block = torch.full((self.block_size,), self.spec.mask_token_id, dtype=torch.long, device=self.fc.weight.device)
        block[0] = root
        return self.draft_block(block)[:num_slots]

    def propose(self, root: int, num_slots: int) -> DraftProposal:
        """One drafting step as the proposers take it: the logits alone (the eager drafter takes
        no top prefixes or candidates: `enable_prefix_search` and `enable_candidates` give 0)."""
        return DraftProposal(self.draft(root, num_slots))

    def enable_prefix_search(self, width: int) -> int:
        return 0

    def enable_candidates(self, k: int) -> int:
        return 0

    @torch.inference_mode()
    def draft_block(self, block: torch.Tensor) -> torch.Tensor:
        """One block [Bk] (root, then tokens or MASK) at positions ctx_len.. -> logits [Bk-1, V] for
        slots 1..Bk-1. The block sees all context and itself, both directions."""
        return self.run_blocks(block, self._block_positions(block.shape[-1]), self.ctx_len)

    @torch.inference_mode()
    def draft_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """K blocks in one pass (D²SD's VP branches): rows [K, Bk], each at positions ctx_len..,
        -> logits [K, Bk-1, V]; equal to `draft_block` on each row."""
        rows = rows.to(self.fc.weight.device)
        return self.run_blocks(rows, self._block_positions(rows.shape[-1]), self.ctx_len)

    def _block_positions(self, bk: int) -> torch.Tensor:
        return torch.arange(self.ctx_len, self.ctx_len + bk, device=self.fc.weight.device)

    def run_blocks(self, ids: torch.Tensor, positions: torch.Tensor, span: int,
                   seen: torch.Tensor | None = None) -> torch.Tensor:
        """The drafting forward. ids: one block [Bk] or K rows [K, Bk], at `positions` [Bk]; every
        query reads context slots [0, span), those where `seen` [span] is True (None: all), and its
        own block, both directions -> logits [..., Bk-1, V] for slots 1..Bk-1.

        One block: one attention over [context ; block] per layer (the plain path). Rows: cascade
        attention, all K*Bk queries read the context once, each row its own block keys (never
        another row's), the two parts merged by log-sum-exp. Shapes depend on `span` only, so the
        graph engine runs this with a dynamic context length in `seen`."""
        embed, head = self._io
        bk = ids.shape[-1]
        x = embed(ids).to(self.fc.weight.dtype)  # [..., Bk, H]
        cos, sin = self.rope(positions)  # [Bk, hd], shared by the rows
        if ids.dim() == 1 and seen is not None:
            seen = torch.cat([seen, torch.ones(bk, dtype=torch.bool, device=seen.device)])[None, None]
        for i, layer in enumerate(self.layers):
            h = rms_norm(layer.input_layernorm, x)
            attn = layer.self_attn
            kb, vb = attn.kv(h, cos, sin)  # [..., kv_heads, Bk, hd]
            q, k_ctx, v_ctx = attn.q(h, cos, sin), self.ctx_k[i, :, :span], self.ctx_v[i, :, :span]
            if ids.dim() == 1:
                x = x + attn.attend(q, torch.cat([k_ctx, kb], dim=1), torch.cat([v_ctx, vb], dim=1), seen)
            else:
                x = x + attn.merge_heads(cascade_attention(q, k_ctx, v_ctx, kb, vb, ctx_mask=seen))
            x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
        return head(rms_norm(self.norm, x[..., 1:, :]).to(head.weight.dtype))

    def forward_blocks(self, features: torch.Tensor, block_ids: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Training forward: many blocks per sequence in one pass (DFlash's block attention mask).

        features: [B, T, F] target taps of the clean sequence; anchors: [B, A] positions;
        block_ids: [B, A, Bk] = [token at anchor, MASK x (Bk-1)]. Block b sits at positions
        anchor_b .. anchor_b + Bk - 1, sees the context strictly before its anchor and its own
        block (both directions), never other blocks. Returns hidden states [B, A, Bk, H].
        """
        embed, _ = self._io
        b, t, _ = features.shape
        a, bk = block_ids.shape[1:]
        dev = features.device
        ctx = rms_norm(self.hidden_norm, self.fc(features))  # [B, T, H]
        x = embed(block_ids).flatten(1, 2).to(ctx.dtype)  # [B, A*Bk, H]
        block_pos = anchors[:, :, None] + torch.arange(bk, device=dev)  # [B, A, Bk]
        pos = torch.cat([torch.arange(t, device=dev).expand(b, t), block_pos.flatten(1)], dim=1)
        cos, sin = self.rope(pos)  # [B, T + A*Bk, hd]
        q_cos, q_sin = cos[:, t:], sin[:, t:]
        sees_ctx = torch.arange(t, device=dev)[None, None, :] < anchors[:, :, None]  # [B, A, T]
        block_of = torch.arange(a, device=dev).repeat_interleave(bk)  # [A*Bk]
        sees_block = block_of[:, None] == block_of[None, :]  # [A*Bk, A*Bk]
        mask = torch.cat(
            [sees_ctx.repeat_interleave(bk, dim=1), sees_block.expand(b, -1, -1)], dim=2
        )[:, None]  # [B, 1, A*Bk, T + A*Bk]
        for layer in self.layers:
            attn = layer.self_attn
            h = rms_norm(layer.input_layernorm, x)
            k, v = attn.kv(torch.cat([ctx, h], dim=1), cos, sin)
            x = x + attn.attend(attn.q(h, q_cos, q_sin), k, v, mask)
            x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
        return rms_norm(self.norm, x).view(b, a, bk, -1)


# -- folder format --------------------------------------------------------------------------------


def read_config(folder: Path) -> tuple[Qwen3Config, DFlashSpec]:
    path = folder / "config.json"
    if not path.is_file():
        raise SpecdiffError(f"drafter folder has no config.json: {folder}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecdiffError(f"drafter config.json is not valid JSON: {path} ({e})") from None
    nested = raw.get("dflash_config") or {}

    def pick(name, default=None):
        return nested.get(name, raw.get(name, default))

    for need in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if need not in raw:
            raise SpecdiffError(f"drafter config.json lacks {need!r}: {path}")
    mask_id = pick("mask_token_id")
    if mask_id is None:
        raise SpecdiffError(f"drafter config.json has no mask_token_id: {path}")
    num_target_layers = pick("num_target_layers")
    layer_ids = pick("target_layer_ids")
    if layer_ids is None:
        if num_target_layers is None:
            raise SpecdiffError(f"drafter config.json has neither target_layer_ids nor num_target_layers: {path}")
        layer_ids = default_target_layer_ids(int(num_target_layers), int(raw["num_hidden_layers"]))
    fields = {k: v for k, v in raw.items() if k not in ("dflash_config", "architectures", "auto_map")}
    fields["model_type"] = "qwen3"
    try:
        cfg = Qwen3Config(**{k: v for k, v in fields.items() if k != "model_type"})
    except Exception as e:  # HF validates configs strictly; report it as the user's problem
        raise SpecdiffError(f"drafter config.json is invalid ({path}): {str(e).strip().splitlines()[-1]}") from None
    spec = DFlashSpec(
        block_size=int(pick("block_size", 16)),
        mask_token_id=int(mask_id),
        target_layer_ids=[int(i) for i in layer_ids],
        num_target_layers=None if num_target_layers is None else int(num_target_layers),
    )
    return cfg, spec


def load_drafter(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DFlashDrafter:
    folder = Path(path)
    if not folder.is_dir():
        raise SpecdiffError(f"drafter folder not found: {folder}")
    cfg, spec = read_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SpecdiffError(f"drafter folder has no .safetensors weights: {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as e:  # safetensors raises several types on bad files
            raise SpecdiffError(f"corrupt drafter weights {f}: {e}") from None
    state = {KEY_ALIASES.get(k, k): v for k, v in state.items()}
    model = DFlashDrafter(cfg, spec)
    expected = model.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown:
        raise SpecdiffError(f"drafter has weights this DFlash version does not know ({unknown[0]}, ...): {folder}")
    if missing:
        raise SpecdiffError(f"drafter weights are missing {missing[0]} ({len(missing)} tensors): {folder}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise SpecdiffError(f"drafter weight {k} has shape {list(v.shape)}, config says {list(expected[k].shape)}")
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()


def save_drafter(model: DFlashDrafter, path: str | Path, extra: dict | None = None,
                 dtype: torch.dtype | None = None) -> None:
    """Write the public DFlash folder format (nested `dflash_config`), plus our own `extra` keys."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    for k in ("architectures", "auto_map", "transformers_version"):
        cfg.pop(k, None)
    cfg.update(
        architectures=["DFlashDraftModel"],
        auto_map={"AutoModel": "dflash.DFlashDraftModel"},
        model_type="qwen3",
        block_size=model.spec.block_size,
        dflash_config={"mask_token_id": model.spec.mask_token_id, "target_layer_ids": model.spec.target_layer_ids},
    )
    if model.spec.num_target_layers is not None:
        cfg["num_target_layers"] = model.spec.num_target_layers
    if extra:
        cfg["specdiff"] = extra
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    cfg["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def check_fits(drafter: DFlashDrafter, target_hidden: int, target_vocab: int, target_layers: int) -> None:
    """Refuse a drafter that cannot run on this target (exit 2 with the reason)."""
    cfg, spec = drafter.config, drafter.spec
    if cfg.hidden_size != target_hidden:
        raise SpecdiffError(f"drafter hidden size {cfg.hidden_size} does not match the target's {target_hidden}")
    if cfg.vocab_size != target_vocab:
        raise SpecdiffError(f"drafter vocabulary {cfg.vocab_size} does not match the target's {target_vocab}")
    if not 0 <= spec.mask_token_id < target_vocab:
        raise SpecdiffError(f"drafter mask_token_id {spec.mask_token_id} is outside the target vocabulary ({target_vocab})")
    if spec.num_target_layers is not None and spec.num_target_layers != target_layers:
        raise SpecdiffError(f"drafter was trained for a {spec.num_target_layers}-layer target; this one has {target_layers}")
    bad = [i for i in spec.target_layer_ids if not 0 <= i < target_layers]
    if bad:
        raise SpecdiffError(f"drafter taps target layer {bad[0]}, but the target has {target_layers} layers")


def check_pair(drafter: DFlashDrafter, vp_drafter: DFlashDrafter) -> None:
    """Refuse a VP drafter that cannot share a round with `drafter` (D²SD): both read the same
    tapped features and draft the same block."""
    a, b = drafter.spec, vp_drafter.spec
    if a.target_layer_ids != b.target_layer_ids:
        raise SpecdiffError(f"VP drafter taps target layers {b.target_layer_ids}, the DFlash drafter {a.target_layer_ids}; "
                            "D2SD needs the same taps")
    if a.block_size != b.block_size:
        raise SpecdiffError(f"VP drafter block size {b.block_size} differs from the DFlash drafter's {a.block_size}")
