"""The fast-path target: the HF model's own weights run by a minimal static-cache forward.

Hugging Face's forward spends most of a small model's time in Python (mask preparation, output
recording, kwargs plumbing). This adapter keeps the HF modules (so weights, norms, MLPs and RoPE
are exactly the model's) but runs the decoder loop itself over one preallocated K/V buffer
[layers, 1, kv_heads, max_len, head_dim]: every shape of a forward depends only on N, the mask is
planned once per round, and commit is one gather for all layers. That makes a forward
graph-capturable per tree-size bucket. Supports the Llama family layout (Llama, Mistral, Qwen2,
Qwen3 and its MoE: q/k/v/o projections, optional per-head q/k norms, pre-norm MLP); tested equal
to `HFTarget`.

It must never return other tokens than the model's own forward. A model whose config asks for
what this forward does not compute (sliding windows, soft-capped logits, scaled embeddings) is
refused, and at load a probe prompt runs through both forwards: logits that differ beyond
rounding refuse the model with one line (`check_probe`), whatever the reason.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from specdiff import invariant
from specdiff.attention import cascade_attention
from specdiff.errors import SpecdiffError
from specdiff.native import Native
from specdiff.ops import apply_rope, device_index, rms_norm
from specdiff.target.fused import auto_numerics, make_exact, make_fused
from specdiff.target.hf_causal import PROBE_TOKENS, PROBE_TOLERANCE, HFTarget
from specdiff.target.tree_plan import TreePlan
from specdiff.types import TargetOutput


# Config fields whose computation this forward lacks, when they are set: field -> what it is
UNMODELLED = {
    "attn_logit_softcapping": "soft-capped attention logits",
    "final_logit_softcapping": "soft-capped output logits",
    "use_sliding_window": "sliding-window attention",
    "sliding_window_pattern": "sliding-window attention",
    "keep_window_size": "dynamic-mask attention",  # Doge: a learned per-key bias, top-k keys past the size
}


def check_config(cfg) -> None:
    """Refuse (one line) a config that asks for computation the static forward does not do."""
    for name, what in UNMODELLED.items():
        if getattr(cfg, name, None):
            raise SpecdiffError(f"the static and graph engines do not model {what} ({name}); use --engine hf")
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
        raise SpecdiffError("the static and graph engines do not model sliding-window attention; use --engine hf")
    if getattr(cfg, "model_type", "").startswith("gemma"):  # embeddings scaled by sqrt(H), (1 + w) norms
        raise SpecdiffError(f"the static and graph engines do not model {cfg.model_type} (scaled embeddings, "
                            "offset norms); use --engine hf")


class StaticTarget(HFTarget):
    """`kernels`: "triton" runs the forward as fused kernels (`target.fused`), "torch" as the HF
    modules' own ops, "auto" the first on a CUDA GPU where Triton runs. `numerics="exact"` runs
    the fused forward with batch-invariant ops instead (`specdiff.invariant`). `attention="cascade"` (torch
    kernels) splits each layer's attention into the committed slots [0, start)
    (no mask) and the tree block [start, start + N) (ancestor mask), merged by log-sum-exp
    (`specdiff.attention`); "masked" (default) is one masked attention over the whole cache."""

    ATTENTION = ("masked", "cascade")
    engine = "static"

    def __init__(self, model: torch.nn.Module, tap_layers: Sequence[int] = (), attention: str = "masked",
                 check: bool = True, native: Native | None = None, kernels: str = "auto", numerics: str = "auto"):
        if attention not in self.ATTENTION:
            raise SpecdiffError(f"unknown attention {attention!r}; choose one of {', '.join(self.ATTENTION)}")
        self.attention = attention
        super().__init__(model, tap_layers, native=native, check=False)  # its own probe below
        check_config(self.config)
        attn = getattr(self.layers[0], "self_attn", None)
        if attn is None:
            raise SpecdiffError(f"the {self.engine} engine needs Llama-style layers ({type(self.layers[0]).__name__} "
                                "has no self_attn); use --engine hf")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, name):
                raise SpecdiffError(f"the {self.engine} engine needs Llama-style attention ({type(attn).__name__} has "
                                    f"no {name}); use --engine hf")
        cfg = self.config
        self.decoder = model.get_decoder()
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.num_kv = int(cfg.num_key_value_heads)
        self.k = self.v = None  # [layers, 1, kv_heads, max_len, head_dim]
        graphs = getattr(self, "use_graphs", False)  # the graph engine sets it before this runs
        if numerics == "auto":
            numerics = auto_numerics(self, kernels, graphs)
        if numerics == "exact":  # every op computes each row alone: bitwise the same in any forward
            self.fused = make_exact(self, kernels, graphs)
        else:
            self.fused = make_fused(self, kernels) if attention == "masked" else None
        self.numerics = numerics
        if self.fused is not None:
            self.kernels_ran = ("invariant" if self.fused.ops is invariant.OPS else
                                "glued" if self.fused.glue else "triton")
        if check:
            self.check_probe()

    def check_probe(self) -> None:
        """Refuse (one line) a model whose logits this forward does not reproduce: a probe prompt of
        PROBE_TOKENS tokens through the model's own forward and through `decode_layers`."""
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.vocab_size, (1, PROBE_TOKENS), generator=g).to(self.device)
        with torch.inference_mode():
            ref = self.model(input_ids=ids).logits[0].float()  # [N, V]
            StaticTarget.reset(self, PROBE_TOKENS)  # a probe-sized cache, dropped below
            mask = torch.full((PROBE_TOKENS, PROBE_TOKENS), float("-inf"), device=self.device).triu(1)
            slots = torch.arange(PROBE_TOKENS, device=self.device)
            try:
                if self.fused is not None:
                    causal = torch.ones(PROBE_TOKENS, PROBE_TOKENS, dtype=torch.bool, device=self.device).tril()
                    got, _ = self.fused(ids, slots[None], slots, slots[:1], causal, PROBE_TOKENS)
                else:
                    got, _ = self.decode_layers(ids, slots[None], slots, mask.to(self.dtype)[None, None])
            except Exception as e:  # an architecture this forward cannot run at all
                raise SpecdiffError(f"the {self.engine} engine cannot run {type(self.model).__name__} "
                                    f"({type(e).__name__}); use --engine hf") from None
            finally:
                self.k = self.v = None
                self.max_len = 0
        err = float((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        if not err <= PROBE_TOLERANCE[self.dtype]:
            raise SpecdiffError(f"the {self.engine} engine does not reproduce {type(self.model).__name__}'s logits "
                                f"(probe error {err:.2g} of their scale); use --engine hf")

    def set_taps(self, layer_ids: Sequence[int]) -> None:
        # taps are read inside `run`: no hooks needed
        for i in layer_ids:
            if not 0 <= i < self.num_layers:
                raise SpecdiffError(f"tapped layer {i} does not exist: the target has {self.num_layers} layers")
        self.tap_layers = tuple(layer_ids)

    def reset(self, max_len: int) -> None:
        if self.k is None or self.max_len < max_len:
            shape = (self.num_layers, 1, self.num_kv, max_len, self.head_dim)
            self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.max_len = max_len
            if self.fused is not None:
                self.fused.rope.build(self.max_len, self.k)
        self.length = 0

    @torch.inference_mode()
    def run(self, plan: TreePlan) -> TargetOutput:
        slots = torch.arange(plan.start, plan.start + plan.num_nodes, device=self.device)
        if self.fused is not None:
            start_t = torch.tensor([plan.start], device=self.device)
            logits, features = self.fused(plan.input_ids, plan.position_ids, slots, start_t, plan.ancestors,
                                          plan.start + plan.num_nodes)
            return TargetOutput(logits=logits, features=features)
        start = plan.start if self.attention == "cascade" else None
        logits, features = self.decode_layers(plan.input_ids, plan.position_ids, slots, plan.mask, start)
        return TargetOutput(logits=logits, features=features)

    def decode_layers(self, input_ids: torch.Tensor, position_ids: torch.Tensor, slots: torch.Tensor,
                      mask: torch.Tensor, cascade_start: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole forward: ids/positions [1, N], cache slots [N], additive mask [1, 1, N, S] over
        the first S cache slots (S <= max_len) -> logits [N, V], taps [N, T*H]. Device tensors only (graph-capturable) unless
        `cascade_start` (the tree's first slot, a host int) asks for cascade attention."""
        n = input_ids.shape[1]
        x = self.decoder.embed_tokens(input_ids)  # [1, N, H]
        cos, sin = self.decoder.rotary_emb(x, position_ids)  # [1, N, hd]
        cos, sin = cos[:, None], sin[:, None]
        taps = {}
        cascade = cascade_start is not None
        if cascade:
            c = cascade_start
            tree_mask = mask[0, 0, :, c : c + n] == 0  # [N, N] ancestors
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = rms_norm(layer.input_layernorm, x)
            q = attn.q_proj(h).view(1, n, -1, self.head_dim)
            k = attn.k_proj(h).view(1, n, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE
                q, k = rms_norm(attn.q_norm, q), rms_norm(attn.k_norm, k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # [1, heads, N, hd]
            v = attn.v_proj(h).view(1, n, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.k[i].index_copy_(2, slots, k)
            self.v[i].index_copy_(2, slots, v)
            if cascade:
                out = cascade_attention(q, self.k[i][0, :, :c], self.v[i][0, :, :c], self.k[i][:, :, c : c + n],
                                        self.v[i][:, :, c : c + n], tree_mask, scale=attn.scaling)
            else:
                span = mask.shape[-1]  # the mask says how many cache slots this forward reads
                out = self._attend(q, self.k[i][:, :, :span], self.v[i][:, :, :span], mask, attn.scaling)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
            x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
            if i in self.tap_layers:
                taps[i] = x[0]
        logits = self.lm_head(rms_norm(self.decoder.norm, x))[0]
        features = torch.cat([taps[i] for i in self.tap_layers], dim=-1) if self.tap_layers else None
        return logits, features

    def _attend(self, q, k, v, mask, scale):
        """q [1, heads, N, hd], k/v [1, kv_heads, S, hd], additive mask [1, 1, N, S]. (Expanding
        K/V to reach CUDA's memory-efficient kernel was measured slower: with few query rows it
        walks all S keys in a handful of blocks; the GEMM-based math path spreads them.)"""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)

    @torch.inference_mode()
    def commit(self, accepted: Sequence[int]) -> None:
        k = len(accepted)
        if list(accepted) != list(range(k)):
            src = device_index(accepted, self.device) + self.length
            self.k[:, :, :, self.length : self.length + k] = self.k.index_select(3, src)
            self.v[:, :, :, self.length : self.length + k] = self.v.index_select(3, src)
        self.length += k
