"""The DFlash drafter's graph step made of fused kernels (`specdiff.kernels`), as the target's is.

At a large target's width the drafter is a few full-size layers over one 16-token block; its
eager step ran about 75 kernels per layer (separate q/k/v and gate/up GEMMs, K/V concatenated and
expanded for GQA), twice the time its weights take to read. Here a layer is the target's fused
layer: QKV and gate/up weights fused at load (the modules keep views), the block's K/V written
into the context cache just past the context, and the block attending to the context and to
itself through `tree_attention` with an all-visible tree block. Context fusion projects the new
tokens' features through every layer's K/V rows at once (a stacked copy of them) and stores every
layer's K/V in one kernel.

Same contract as `DFlashDrafter.fuse` and `run_blocks` for one block (tested equal); D²SD's
branch rows keep the eager path.
"""

from __future__ import annotations

import torch

from specdiff import kernels
from specdiff.drafters.dflash import DFlashDrafter
from specdiff.ops import RopeTable, embed_rows
from specdiff.target.fused import SWIGLU, fuse_linears, fuse_norms, norm_params


def why_not(drafter: DFlashDrafter) -> str | None:
    """Why the fused step cannot run `drafter`, or None."""
    why = kernels.runnable(drafter.fc.weight.device)
    if why is not None:
        return why
    d = drafter.layers[0].self_attn.head_dim
    if d < 16 or d & (d - 1):
        return f"the fused kernels need a power-of-two head size >= 16 (the drafter's is {d})"
    if getattr(drafter.config, "hidden_act", "silu") not in SWIGLU:
        return f"the fused drafter needs a SiLU MLP (the drafter's is {drafter.config.hidden_act})"
    return None


class FusedDrafterStep:
    def __init__(self, drafter: DFlashDrafter, glue: bool = False):
        """glue: the block's layers through `kernels.decode_gemm` (`--kernels glued`)."""
        self.drafter, self.glue = drafter, glue
        attn0 = drafter.layers[0].self_attn
        self.num_heads, self.head_dim = attn0.num_heads, attn0.head_dim
        self.q_rows = self.num_heads * self.head_dim
        self.layers = []
        # every layer's q and k norm weights in one [L, 2, D] tensor, the modules' weights its views
        norms = [n for layer in drafter.layers for n in (layer.self_attn.q_norm, layer.self_attn.k_norm)]
        self.ctx_norms = fuse_norms(norms).view(len(drafter.layers), 2, -1)
        for i, layer in enumerate(drafter.layers):
            a, m = layer.self_attn, layer.mlp
            self.layers.append(dict(
                qkv=fuse_linears([a.q_proj, a.k_proj, a.v_proj]), qk_norm=self.ctx_norms[i],
                qk_eps=norm_params(a.q_norm)[1],
                o_proj=a.o_proj, gate_up=fuse_linears([m.gate_proj, m.up_proj]), down=m.down_proj,
                input_norm=norm_params(layer.input_layernorm), post_norm=norm_params(layer.post_attention_layernorm)))
        self.hidden_norm, self.final_norm = norm_params(drafter.hidden_norm), norm_params(drafter.norm)
        # context fusion projects the same rows through every layer's K/V weights: one GEMM over a
        # copy of them stacked (the block's QKV keeps its own), and one store for every layer
        self.ctx_kv: torch.Tensor | None = None  # [L * 2 Hkv D, H]
        self.ctx_kv_bias: torch.Tensor | None = None
        self._stack_kv()
        bk = drafter.spec.block_size
        self.block_sees_block = torch.ones(bk, bk, dtype=torch.bool, device=drafter.fc.weight.device)
        self.block_cols = torch.arange(bk, device=drafter.fc.weight.device)
        self.rope = RopeTable(drafter.rotary)

    def _kv_versions(self) -> tuple[int, ...]:
        return tuple(t._version for f in self.layers for t in f["qkv"] if t is not None)

    @torch.no_grad()
    def _stack_kv(self) -> None:
        """The one copy this step reads: every layer's K/V rows stacked."""
        kv = [f["qkv"] for f in self.layers]
        weight = torch.cat([w[self.q_rows :] for w, _ in kv])
        bias = None if kv[0][1] is None else torch.cat([b[self.q_rows :] for _, b in kv])
        if self.ctx_kv is None:
            self.ctx_kv, self.ctx_kv_bias = weight, bias
        else:  # in place: captured graphs read these buffers
            self.ctx_kv.copy_(weight)
            if bias is not None:
                self.ctx_kv_bias.copy_(bias)
        self._stacked_at = self._kv_versions()

    def refresh(self) -> None:
        """Stack the K/V weights again where the drafter's changed in place since (a
        `load_state_dict` after the step was built): a graph would otherwise fuse with the old ones.
        A host check of the weights' version counters; call before each step."""
        if self._kv_versions() != self._stacked_at:
            self._stack_kv()

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, D] of positions [N], which are also context slots: below the context
        buffer's length, which the table covers (built again with a new buffer, whose graphs
        the caller captures again)."""
        d = self.drafter
        self.rope.build(d.ctx_k.shape[2], d.fc.weight)
        return self.rope(positions, d.fc.weight, d.ctx_k.shape[2])

    def fuse(self, features: torch.Tensor, slots: torch.Tensor) -> None:
        """`DFlashDrafter.fuse`: target features [n, T*H] -> every layer's context K/V at `slots` [n]."""
        d = self.drafter
        self.refresh()
        ctx = kernels.add_rms_norm(kernels.linear(features.to(d.fc.weight.dtype), d.fc.weight), None, *self.hidden_norm)
        cos, sin = self._rope(slots)
        kv = kernels.linear(ctx, self.ctx_kv, self.ctx_kv_bias)  # [n, L * 2 Hkv D]
        kernels.kv_rope_store_layers(kv, cos, sin, self.ctx_norms, self.layers[0]["qk_eps"], d.ctx_k, d.ctx_v, slots)

    def run_block(self, ids: torch.Tensor, length: torch.Tensor, span: int) -> torch.Tensor:
        """`DFlashDrafter.run_blocks` for one block: ids [Bk] at positions length.. (length [1] on
        the device: the context's end), reading context slots [0, length) and the block ->
        logits [Bk-1, V]. The block's K/V go to slots [length, length + Bk), past the context,
        which the next fusion overwrites; `span` >= length + Bk bounds what the attention reads."""
        d = self.drafter
        embed, head = d._io
        bk = ids.shape[0]
        positions = length + self.block_cols[:bk]
        x = embed_rows(embed, ids).to(d.fc.weight.dtype).contiguous()  # [Bk, H], the residual stream
        cos, sin = self._rope(positions)
        if self.glue and bk <= kernels.SKINNY_ROWS and head.weight.dtype == x.dtype:
            return self._glued_layers(x, cos, sin, positions, length, span)
        h = kernels.add_rms_norm(x, None, *self.layers[0]["input_norm"])
        for i, f in enumerate(self.layers):
            q = kernels.qkv_rope_store(kernels.linear(h, *f["qkv"]), cos, sin, f["qk_norm"], f["qk_eps"], d.ctx_k[i],
                                       d.ctx_v[i], positions, self.num_heads)
            a = kernels.tree_attention(q, d.ctx_k[i], d.ctx_v[i], length, self.block_sees_block, span,
                                       self.head_dim ** -0.5).view(bk, -1)
            o = f["o_proj"]
            h = kernels.add_rms_norm(x, kernels.linear(a, o.weight, o.bias), *f["post_norm"])
            down = f["down"]
            delta = kernels.linear(kernels.swiglu(h, *f["gate_up"]), down.weight, down.bias)
            nxt = self.layers[i + 1]["input_norm"] if i + 1 < len(self.layers) else self.final_norm
            h = kernels.add_rms_norm(x, delta, *nxt)
        return kernels.linear(h[1:].to(head.weight.dtype), head.weight, getattr(head, "bias", None))

    def _glued_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                      length: torch.Tensor, span: int) -> torch.Tensor:
        """`run_block`'s layers with the glue inside the GEMMs (`kernels.decode_gemm`), as the
        target's `FusedForward` runs a few rows: x [Bk, H] (updated) -> logits [Bk-1, V]."""
        d, gemm = self.drafter, kernels.decode_gemm
        head = d._io[1]
        bk = x.shape[0]
        for i, f in enumerate(self.layers):
            q = kernels.qkv_rope_store(gemm(x, *f["qkv"], norm=f["input_norm"]), cos, sin, f["qk_norm"], f["qk_eps"],
                                       d.ctx_k[i], d.ctx_v[i], positions, self.num_heads)
            a = kernels.tree_attention(q, d.ctx_k[i], d.ctx_v[i], length, self.block_sees_block, span,
                                       self.head_dim ** -0.5)
            o, down = f["o_proj"], f["down"]
            gemm(a.view(bk, -1), o.weight, o.bias, residual=x)
            gemm(gemm(x, *f["gate_up"], norm=f["post_norm"], swiglu=True), down.weight, down.bias, residual=x)
        return gemm(x[1:], head.weight, getattr(head, "bias", None), norm=self.final_norm)
