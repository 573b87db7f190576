"""The static forward made of fused kernels: weights fused at load, seven to ten launches per layer.

`StaticTarget`'s eager forward runs each HF module's own kernels (about 35 a layer); at decoding
sizes a large model then spends as long between its GEMMs as in them. `FusedForward` runs the same
layer as four GEMMs (fused QKV, o, fused gate/up, down) and the Triton kernels of
`specdiff.kernels`: the GEMMs with the glue between them (norm with the residual add,
SiLU-multiply, the latter in the gate/up GEMM's epilogue wherever that GEMM streams its weight:
nine launches a layer there). With `--kernels glued`, a forward of a few rows (an AR step, a DFlash block, a
small tree) takes `decode_gemm` instead, which streams each weight once with the glue in its
prologue and epilogue (measured no faster on an H100: docs/results.md). Either way the QKV split
with q/k norms, RoPE and the cache write is one kernel, and tree attention with its merge two.

QKV and gate/up weights are concatenated once, and the modules' own weights become views into the
fused tensors: memory does not grow, and the eager path and the model's own forward read the very
same numbers. An MLP that is not SwiGLU (a mixture of experts, GELU) runs as the model's module.

The ops are a parameter: `kernels.OPS` (the Triton kernels) or `invariant.OPS` (each row computed
alone, bitwise the same in any forward: `--numerics exact`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specdiff import invariant, kernels
from specdiff.errors import SpecdiffError
from specdiff.ops import RopeTable, embed_rows

SWIGLU = ("silu", "swish")


def norm_params(norm: nn.Module) -> tuple[torch.Tensor, float]:
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return norm.weight, float(eps)


@torch.no_grad()
def fuse_norms(norms: list[nn.Module]) -> torch.Tensor:
    """Stack the weights of `norms` and make each module's own weight a view into the result ->
    [len(norms), D]: a kernel reads them together, and a later in-place load reaches it."""
    stacked = torch.stack([n.weight for n in norms])
    for i, n in enumerate(norms):
        n.weight = nn.Parameter(stacked[i], requires_grad=False)
    return stacked


@torch.no_grad()
def fuse_linears(mods: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of `mods` along their outputs and make each module's
    own parameters views into the result -> (weight [sum(out), in], bias [sum(out)] or None)."""
    biased = [m.bias is not None for m in mods]
    if any(biased) and not all(biased):
        raise SpecdiffError("cannot fuse projections where only some have a bias")
    weight = torch.cat([m.weight for m in mods])
    bias = torch.cat([m.bias for m in mods]) if all(biased) else None
    off = 0
    for m in mods:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(weight[off : off + rows], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[off : off + rows], requires_grad=False)
        off += rows
    return weight, bias


@dataclass
class AttentionInputs:
    """What every layer's attention of one forward shares."""
    cos: torch.Tensor  # [N, D]
    sin: torch.Tensor  # [N, D]
    slots: torch.Tensor  # [N] cache slots
    start: torch.Tensor  # [1] the tree's first slot
    ancestors: torch.Tensor  # [N, N] bool
    span: int  # the most cache slots a row sees
    tree: dict  # `ops.tree_index`'s result


@dataclass
class FusedLayer:
    qkv: tuple[torch.Tensor, torch.Tensor | None]  # weight [(Hq + 2 Hkv) D, H], bias
    qk_norm: torch.Tensor | None  # [2, D]: q and k RMSNorm weights (Qwen3), or None
    qk_eps: float
    o_proj: nn.Linear
    post_norm: tuple[torch.Tensor, float]
    gate_up: tuple[torch.Tensor, torch.Tensor | None] | None  # [2 I, H]; None: `mlp` runs as a module
    down: nn.Linear | None
    mlp: nn.Module
    scale: float


def why_not(target) -> str | None:
    """Why the fused forward cannot run `target` (a StaticTarget), or None."""
    why = kernels.runnable(target.device)
    if why is not None:
        return why
    d = target.head_dim
    if d < 16 or d & (d - 1):
        return f"the fused kernels need a power-of-two head size >= 16 (this model's is {d})"
    return None


class FusedForward:
    """The forward of a `StaticTarget` (whose K/V buffers it writes) from fused kernels."""

    def __init__(self, target, ops=kernels.OPS, glue: bool = False):
        """glue: forwards of up to SKINNY_ROWS rows run `_glued_layers` (`--kernels glued`)."""
        self.target, self.ops, self.glue = target, ops, glue and ops.decode_gemm is not None
        cfg = target.config
        self.num_heads = int(cfg.num_attention_heads)
        swiglu = getattr(cfg, "hidden_act", None) in SWIGLU
        self.layers: list[FusedLayer] = []
        for layer in target.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qk_norm, qk_eps = None, 0.0
            if hasattr(attn, "q_norm"):
                qk_eps = norm_params(attn.q_norm)[1]
                qk_norm = fuse_norms([attn.q_norm, attn.k_norm])  # [2, D], the modules' weights its views
            dense = swiglu and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
            self.layers.append(FusedLayer(
                qkv=fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj]),
                qk_norm=qk_norm,
                qk_eps=qk_eps,
                o_proj=attn.o_proj,
                post_norm=norm_params(layer.post_attention_layernorm),
                gate_up=fuse_linears([mlp.gate_proj, mlp.up_proj]) if dense else None,
                down=mlp.down_proj if dense else None,
                mlp=mlp,
                scale=float(attn.scaling),
            ))
        self.input_norms = [norm_params(layer.input_layernorm) for layer in target.layers]
        self.final_norm = norm_params(target.decoder.norm)
        self.rope = RopeTable(target.decoder.rotary_emb)  # its owner sizes it with the K/V buffer

    def gemm_weights(self) -> list[torch.Tensor]:
        """Every weight a forward multiplies by: each layer's fused QKV, o, fused gate/up and down,
        then the LM head."""
        out = []
        for f in self.layers:
            out += [f.qkv[0], f.o_proj.weight] + ([f.gate_up[0], f.down.weight] if f.gate_up is not None else [])
        return out + [self.target.lm_head.weight]

    def _attend(self, i: int, f: FusedLayer, qkv: torch.Tensor, at: AttentionInputs) -> torch.Tensor:
        """Layer i's attention from its fused QKV projection [N, (Hq + 2 Hkv) D] -> [N, Hq D]; its
        K/V go to the cache."""
        t, ops = self.target, self.ops
        k_cache, v_cache = t.k[i, 0], t.v[i, 0]  # [Hkv, S, D]
        q = ops.qkv_rope_store(qkv, at.cos, at.sin, f.qk_norm, f.qk_eps, k_cache, v_cache, at.slots, self.num_heads)
        a = ops.tree_attention(q, k_cache, v_cache, at.start, at.ancestors, at.span, f.scale, **at.tree)
        return a.reshape(qkv.shape[0], -1)  # [N, Hq D]

    def _layers(self, x: torch.Tensor, attend: AttentionInputs, taps: dict) -> torch.Tensor:
        """The layers as GEMMs with the glue between them: x [N, H] (updated) -> logits [N, V]."""
        t, ops = self.target, self.ops
        w, eps = self.input_norms[0]
        h = ops.add_rms_norm(x, None, w, eps)
        for i, f in enumerate(self.layers):
            a = self._attend(i, f, ops.linear(h, *f.qkv), attend)
            h = ops.add_rms_norm(x, ops.linear(a, f.o_proj.weight, f.o_proj.bias), *f.post_norm)
            if f.gate_up is not None:
                d = ops.linear(ops.swiglu(h, *f.gate_up), f.down.weight, f.down.bias)
            else:
                d = f.mlp(h[None])[0]
            w, eps = self.input_norms[i + 1] if i + 1 < len(self.layers) else self.final_norm
            if i in t.tap_layers:  # the layer's output is read before the next norm
                x.add_(d)
                taps[i] = x.clone()
                d = None
            h = ops.add_rms_norm(x, d, w, eps)
        return ops.linear(h, t.lm_head.weight, getattr(t.lm_head, "bias", None))

    def _glued_layers(self, x: torch.Tensor, attend: AttentionInputs, taps: dict) -> torch.Tensor:
        """`_layers` with the glue inside the GEMMs (`kernels.decode_gemm`): each norm in the
        prologue of the GEMM that reads it, SiLU-multiply in gate/up's epilogue, the residual adds
        in o's and down's. Seven launches a layer where `_layers` takes ten."""
        t, ops = self.target, self.ops
        gemm = ops.decode_gemm
        for i, f in enumerate(self.layers):
            a = self._attend(i, f, gemm(x, *f.qkv, norm=self.input_norms[i]), attend)
            gemm(a, f.o_proj.weight, f.o_proj.bias, residual=x)
            if f.gate_up is not None:
                gemm(gemm(x, *f.gate_up, norm=f.post_norm, swiglu=True), f.down.weight, f.down.bias, residual=x)
            else:
                x.add_(f.mlp(ops.add_rms_norm(x, None, *f.post_norm)[None])[0])
            if i in t.tap_layers:
                taps[i] = x.clone()
        return gemm(x, t.lm_head.weight, getattr(t.lm_head, "bias", None), norm=self.final_norm)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, slots: torch.Tensor, start: torch.Tensor,
                 ancestors: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids/positions [1, N]; cache slots [N]; start [1] long (the tree's first slot, on the
        device); ancestors [N, N] bool; span: the most cache slots a row sees (a host int)
        -> logits [N, V], taps [N, T*H]. Device tensors only: graph-capturable."""
        t = self.target
        n = input_ids.shape[1]
        x = embed_rows(t.decoder.embed_tokens, input_ids[0]).contiguous()  # [N, H], the residual stream
        cos, sin = self.rope(position_ids[0], x, span)  # [N, D]
        taps = {}
        ops = self.ops
        # the tree index once: every layer attends over the same tree
        attend = AttentionInputs(cos, sin, slots, start, ancestors, span, ops.tree_index(start, ancestors))
        if self.glue and n <= kernels.SKINNY_ROWS:
            logits = self._glued_layers(x, attend, taps)
        else:
            logits = self._layers(x, attend, taps)
        features = torch.cat([taps[i] for i in t.tap_layers], dim=-1) if t.tap_layers else None
        return logits, features


def make_fused(target, kernels_choice: str) -> FusedForward | None:
    """The fused forward where `kernels_choice` runs Triton (`kernels.use_triton`), else None (eager)."""
    if not kernels.use_triton(kernels_choice, why_not(target), target.device):
        return None
    return FusedForward(target, glue=kernels_choice == "glued")


def swiglu_layers(target) -> bool:
    """Whether every layer's MLP is SwiGLU (the exact mode's fused MLP)."""
    if getattr(target.config, "hidden_act", None) not in SWIGLU:
        return False
    return all(all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) for layer in target.layers)


def auto_numerics(target, kernels_choice: str, graphs: bool) -> str:
    """`--numerics auto`: "exact" where it costs about what fast does, else "fast". Exact GEMMs
    read every weight once per 16 rows of a forward: free while the target's GEMM weights fit in
    the GPU's L2 cache (the re-reads hit it), a multiple of a round where they stream from HBM,
    and per-row attention and fixed-size GEMM calls cost a CPU or an uncaptured forward
    more (measured in docs/results.md)."""
    if not graphs or not swiglu_layers(target):
        return "fast"
    if not kernels.use_triton(kernels_choice, why_not(target), target.device):
        return "fast"
    gemm_bytes = sum(m.weight.numel() * m.weight.element_size() for m in target.model.modules()
                     if isinstance(m, nn.Linear))
    return "exact" if gemm_bytes <= torch.cuda.get_device_properties(target.device).L2_cache_size else "fast"


def make_exact(target, kernels_choice: str = "auto", graphs: bool = False) -> FusedForward:
    """The fused forward with batch-invariant ops (`--numerics exact`): the Triton kernels'
    (`kernels.EXACT_OPS`) where `kernels_choice` would run Triton, else PyTorch's
    (`invariant.OPS`, any device, not graph-capturable: refused when `graphs`)."""
    triton = kernels.use_triton(kernels_choice, why_not(target), target.device)
    if graphs and not triton:
        raise SpecdiffError("--numerics exact on the graph engine needs the Triton kernels (a CUDA GPU with Triton); "
                            "use --engine static")
    if not swiglu_layers(target):
        raise SpecdiffError(f"--numerics exact needs a SwiGLU MLP in every layer ({type(target.model).__name__} has "
                            "another); use --numerics fast")
    if not triton:
        return FusedForward(target, ops=invariant.OPS)
    fused = FusedForward(target, ops=kernels.EXACT_OPS)
    # the weights the card runs in `tree_linear` are checked row by row here, outside any capture
    kernels.probe_invariance(fused.gemm_weights())
    return fused
