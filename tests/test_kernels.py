"""The fused decoding kernels against their PyTorch references (under Triton's interpreter on a
CPU): norms, the QKV split with RoPE and cache writes, SwiGLU, and tree attention over a cache."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from specdiff import kernels
from specdiff.types import DraftTree

triton = pytest.importorskip("triton", reason="the kernels need Triton (its interpreter runs them on a CPU)")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    scale = b.float().abs().max().clamp_min(1.0)
    err = float((a.float() - b.float()).abs().max() / scale)
    assert err <= TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("add,rows", [(True, 1), (True, 4), (False, 16)])
def test_add_rms_norm(dtype, add, rows, monkeypatch):
    """5 rows at 1, 4 (the last program's rows partly masked) and 16 rows a program."""
    from specdiff.kernels import elementwise

    monkeypatch.setattr(elementwise, "_rows_per_program", lambda: rows)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 96, generator=g).to(DEVICE, dtype)
    d = torch.randn(5, 96, generator=g).to(DEVICE, dtype) if add else None
    w = (1 + 0.1 * torch.randn(96, generator=g)).to(DEVICE, dtype)
    x_ref = x.clone()
    want = kernels.add_rms_norm_reference(x_ref, d, w, 1e-6)
    got = kernels.add_rms_norm(x, d, w, 1e-6)
    close(got, want, dtype)
    assert torch.equal(x, x_ref)  # the residual add rounds once, as the eager add does


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm,block", [(True, 4), (True, 16), (False, 128)])
def test_qkv_rope_store(dtype, norm, block, monkeypatch):
    """Head rows in blocks of 4 (two per token), 16 (a block spans two tokens) and 128 (every token
    in one, the rest masked) against the reference; slots not written stay zero."""
    from specdiff.kernels import elementwise

    monkeypatch.setattr(elementwise, "_head_rows", lambda: block)
    g = torch.Generator().manual_seed(1)
    n, hq, hkv, d, slots_total = 3, 4, 2, 16, 10
    qkv = torch.randn(n, (hq + 2 * hkv) * d, generator=g).to(DEVICE, dtype)
    angle = torch.rand(n, d // 2, generator=g) * 6
    cos = torch.cat([angle.cos(), angle.cos()], -1).to(DEVICE, dtype)
    sin = torch.cat([angle.sin(), angle.sin()], -1).to(DEVICE, dtype)
    nw = (1 + 0.1 * torch.randn(2, d, generator=g)).to(DEVICE, dtype) if norm else None
    slots = torch.tensor([7, 2, 5], device=DEVICE)
    caches = [torch.zeros(hkv, slots_total, d, dtype=dtype, device=DEVICE) for _ in range(4)]
    want = kernels.qkv_rope_store_reference(qkv, cos, sin, nw, 1e-6, caches[0], caches[1], slots, hq)
    got = kernels.qkv_rope_store(qkv, cos, sin, nw, 1e-6, caches[2], caches[3], slots, hq)
    close(got, want, dtype)
    close(caches[2], caches[0], dtype)
    assert torch.equal(caches[3], caches[1])  # V is copied, not computed
    untouched = [s for s in range(slots_total) if s not in slots.tolist()]
    assert not caches[2][:, untouched].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [8, 128])
def test_kv_rope_store_layers(dtype, block, monkeypatch):
    """Every layer's K/V of a context fusion stored in one launch, as one `qkv_rope_store` per
    layer would (each layer's own k norm, its own cache), slots elsewhere untouched; head rows in
    blocks spanning two tokens or all of them."""
    from specdiff.kernels import elementwise

    monkeypatch.setattr(elementwise, "_head_rows", lambda: block)
    g = torch.Generator().manual_seed(3)
    n, layers, hkv, d, slots_total = 3, 3, 2, 16, 9
    kv = torch.randn(n, layers * 2 * hkv * d, generator=g).to(DEVICE, dtype)
    angle = torch.rand(n, d // 2, generator=g) * 6
    cos = torch.cat([angle.cos(), angle.cos()], -1).to(DEVICE, dtype)
    sin = torch.cat([angle.sin(), angle.sin()], -1).to(DEVICE, dtype)
    nw = (1 + 0.1 * torch.randn(layers, 2, d, generator=g)).to(DEVICE, dtype)
    slots = torch.tensor([6, 1, 4], device=DEVICE)
    caches = [torch.zeros(layers, hkv, slots_total, d, dtype=dtype, device=DEVICE) for _ in range(4)]
    kernels.kv_rope_store_layers_reference(kv, cos, sin, nw, 1e-6, caches[0], caches[1], slots)
    kernels.kv_rope_store_layers(kv, cos, sin, nw, 1e-6, caches[2], caches[3], slots)
    close(caches[2], caches[0], dtype)
    assert torch.equal(caches[3], caches[1])  # V is copied, not computed
    assert caches[0][1].abs().sum() > 0 and not torch.equal(caches[0][1], caches[0][0])  # each layer its own
    untouched = [s for s in range(slots_total) if s not in slots.tolist()]
    assert not caches[2][:, :, untouched].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 16])
def test_silu_mul(dtype, rows, monkeypatch):
    from specdiff.kernels import elementwise

    monkeypatch.setattr(elementwise, "_rows_per_program", lambda: rows)
    g = torch.Generator().manual_seed(2)
    gu = (3 * torch.randn(4, 2 * 80, generator=g)).to(DEVICE, dtype)
    close(kernels.silu_mul(gu), kernels.silu_mul_reference(gu), dtype)


def random_tree(n: int, g: torch.Generator) -> DraftTree:
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    return DraftTree.from_lists(list(range(n)), parents)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,hq,hkv,start,splits", [
    (1, 4, 2, 37, None),  # one AR row, GQA 2
    (1, 2, 2, 130, 3),    # keys split three ways
    (9, 4, 1, 70, 2),     # a tree, GQA 4, a split inside the tree
    (20, 2, 2, 0, None),  # a tree with no committed slots (prefill-like)
    (40, 4, 2, 5, 1),     # rows over several row blocks
])
def test_tree_attention(dtype, n, hq, hkv, start, splits):
    g = torch.Generator().manual_seed(n + start)
    d, alloc = 16, 256
    q = torch.randn(n, hq, d, generator=g).to(DEVICE, dtype)
    k = torch.randn(hkv, alloc, d, generator=g).to(DEVICE, dtype)
    v = torch.randn(hkv, alloc, d, generator=g).to(DEVICE, dtype)
    anc = random_tree(n, g).ancestor_mask().to(DEVICE)
    span = min(alloc, start + n + 17)  # more slots than the tree ends at: the kernel must not read them
    k[:, start + n :] = float("nan")
    v[:, start + n :] = float("nan")
    st = torch.tensor([start], device=DEVICE)
    want = kernels.tree_attention_reference(q, k.nan_to_num(), v.nan_to_num(), st, anc, span, d ** -0.5)
    got = kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5, splits=splits)
    assert not got.isnan().any()
    close(got, want, dtype)


def test_key_splits_share_the_keys_a_tree_sees_not_its_span():
    """A tree whose keys fill a sixth of its span bucket: each of the 3 splits gets some of them
    (each row's running sum > 0 in every split) where splitting the span would give the first
    split them all; merged, the reference's output."""
    g = torch.Generator().manual_seed(11)
    n, hq, hkv, d, start, span = 10, 4, 2, 16, 150, 1024
    q = torch.randn(n, hq, d, generator=g).to(DEVICE)
    k, v = (torch.randn(hkv, span, d, generator=g).to(DEVICE) for _ in range(2))
    anc = random_tree(n, g).ancestor_mask().to(DEVICE)
    st = torch.tensor([start], device=DEVICE)
    split = kernels.tree_attention(q, k, v, st, anc, span, d ** -0.5, splits=3, defer_merge=True)
    assert split.splits == 3 and (split.ml[..., 1] > 0).all()
    close(split.merge(), kernels.tree_attention_reference(q, k, v, st, anc, span, d ** -0.5), torch.float32)


def test_launch_settings_pick_a_trees_launch(monkeypatch):
    """`attention.LAUNCH_SETTINGS` sets the launch of trees whose node count it covers (4 splits
    here, seen in the unmerged result) and leaves other trees to the rule; either way the output
    is the reference's."""
    from specdiff.kernels import attention

    monkeypatch.setattr(attention, "LAUNCH_SETTINGS", {(5, 12): (16, 4, 2, 4)})
    g = torch.Generator().manual_seed(5)
    hq, hkv, d, start = 4, 2, 16, 150
    k, v = (torch.randn(hkv, 256, d, generator=g).to(DEVICE) for _ in range(2))
    st = torch.tensor([start], device=DEVICE)
    for n, splits in [(9, 4), (4, None), (13, None)]:
        q = torch.randn(n, hq, d, generator=g).to(DEVICE)
        anc = random_tree(n, g).ancestor_mask().to(DEVICE)
        got = kernels.tree_attention(q, k, v, st, anc, 256, d ** -0.5, defer_merge=True)
        assert (got.splits if isinstance(got, kernels.SplitAttention) else None) == splits, n
        got = got.merge() if splits else got
        close(got, kernels.tree_attention_reference(q, k, v, st, anc, 256, d ** -0.5), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 5, 20])
def test_split_keys_left_unmerged_merge_to_the_reference(dtype, n):
    """Attention left in key splits (`defer_merge`, a `SplitAttention`) merges to the reference
    attention and to the merged call's output, bit for bit; 20 rows span two row blocks (GQA 2,
    4 splits)."""
    g = torch.Generator().manual_seed(n + 3)
    hq, hkv, d, start = 4, 2, 16, 150
    q = torch.randn(n, hq, d, generator=g).to(DEVICE, dtype)
    k, v = (torch.randn(hkv, 256, d, generator=g).to(DEVICE, dtype) for _ in range(2))
    anc = random_tree(n, g).ancestor_mask().to(DEVICE)
    st = torch.tensor([start], device=DEVICE)
    att = kernels.tree_attention_reference(q, k, v, st, anc, 256, d ** -0.5)
    split = kernels.tree_attention(q, k, v, st, anc, 256, d ** -0.5, splits=4, block_m=16, defer_merge=True)
    assert isinstance(split, kernels.SplitAttention) and split.splits == 4 and split.group == 2
    close(split.merge(), att, dtype)
    assert torch.equal(kernels.tree_attention(q, k, v, st, anc, 256, d ** -0.5, splits=4, block_m=16), split.out)


@pytest.mark.parametrize("n,start,leak", [(1, 37, False), (9, 70, False), (20, 0, False), (9, 70, True)])
def test_flexattentions_tree_attention_is_the_references(n, start, leak):
    """FlexAttention with the visibility rule as its mask_mod gives the reference's rows (fp32,
    GQA 2, slots past the tree holding large values it must not weigh; it multiplies them by a
    zero weight, so unlike the Triton kernel a NaN there would reach the output); a mask that lets
    one row see a slot outside its path (planted) changes that row."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    g = torch.Generator().manual_seed(n + start)
    hq, hkv, d, alloc = 4, 2, 16, 256
    q = torch.randn(n, hq, d, generator=g).to(DEVICE)
    k, v = (torch.randn(hkv, alloc, d, generator=g).to(DEVICE) for _ in range(2))
    anc = random_tree(n, g).ancestor_mask().to(DEVICE)
    span = start + n + 17
    st = torch.tensor([start], device=DEVICE)
    want = kernels.tree_attention_reference(q, k, v, st, anc, span, d ** -0.5)
    k[:, start + n :], v[:, start + n :] = 1e4, 1e4
    seen = anc.clone()
    if leak:
        seen[n - 1] = True  # the last row also sees every tree slot
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention (a CPU) warns that it is not compiled
        got = kernels.tree_attention_flex(q, k, v, st, seen, span, d ** -0.5)
    if leak and not anc[n - 1].all():
        assert (got[n - 1] - want[n - 1]).abs().max() > 1e-3
        close(got[: n - 1], want[: n - 1], torch.float32)
    else:
        close(got, want, torch.float32)


@pytest.mark.parametrize("block_m,splits", [(32, None), (32, 2)])
def test_tree_attention_in_32_row_blocks(block_m, splits):
    """The row block `attention_launch` gives trees of 113-224 nodes at Qwen3-8B's heads, partly
    filled, with and without a key split."""
    g = torch.Generator().manual_seed(3)
    n, hq, hkv, start, d = 40, 4, 2, 70, 16
    q = torch.randn(n, hq, d, generator=g).to(DEVICE)
    k, v = (torch.randn(hkv, 256, d, generator=g).to(DEVICE) for _ in range(2))
    anc = random_tree(n, g).ancestor_mask().to(DEVICE)
    st = torch.tensor([start], device=DEVICE)
    want = kernels.tree_attention_reference(q, k, v, st, anc, 128, d ** -0.5)
    got = kernels.tree_attention(q, k, v, st, anc, 128, d ** -0.5, splits=splits, block_m=block_m)
    close(got, want, torch.float32)


@pytest.mark.parametrize("nodes,block_m,splits,warps", [
    (1, 16, range(2, 9), 8), (16, 16, (4, 8), 8), (64, 16, (1,), 8), (256, 64, (1,), 8), (65, 32, (1,), 8),
    (96, 32, (1,), 8), (128, 32, (1,), 8), (257, 32, (1,), 4)])
def test_attention_launch_gives_the_measured_best_settings(nodes, block_m, splits, warps):
    """At Qwen3-8B's heads (32 query, 8 KV) on an H100's 132 SMs over 512 slots, the launch rule
    gives the settings `scripts/gpu_attention.py` measured best at 1, 16, 64 and 256 nodes
    (docs/benchmarks/fused_h100/attention_settings.txt; at 16 nodes 4 and 8 splits tied within
    0.1 us) and at 257 (`docs/benchmarks/attention_h100/`: 32-row blocks of 4 warps, 40 us, where
    128 rows took 93), and at 65 one within 1.5 us of the best (the 16-row blocks of 64 nodes
    there are 136 programs, a second wave: 26 us against 18)."""
    from specdiff.kernels.attention import attention_launch

    got = attention_launch(nodes * 4, 8, 512, 132)
    assert got[0] == block_m and got[1] in splits and got[2] == warps, got


def test_tree_attention_catches_a_wrong_mask():
    """The comparison can fail: a row that also sees a sibling gives another output."""
    g = torch.Generator().manual_seed(5)
    n, d = 6, 16
    q, k, v = (torch.randn(*s, generator=g).to(DEVICE) for s in ((n, 2, d), (2, 64, d), (2, 64, d)))
    tree = DraftTree.from_lists(list(range(n)), [-1, 0, 0, 1, 2, 3])
    anc = tree.ancestor_mask().to(DEVICE)
    st = torch.tensor([10], device=DEVICE)
    leaked = anc.clone()
    leaked[3, 2] = True  # node 3 (under 1) sees node 2 (its parent's sibling)
    want = kernels.tree_attention_reference(q, k, v, st, anc, 20, d ** -0.5)
    got = kernels.tree_attention(q, k, v, st, leaked, 20, d ** -0.5)
    assert (got[3] - want[3]).abs().max() > 1e-3
    close(torch.cat([got[:3], got[4:]]), torch.cat([want[:3], want[4:]]), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,bias", [(1, 40, 96, False), (5, 64, 300, True), (16, 33, 64, False)])
def test_skinny_linear(dtype, m, n, k, bias):
    g = torch.Generator().manual_seed(m + n)
    x = torch.randn(m, k, generator=g).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if bias else None
    close(kernels.skinny_linear(x, w, b, block_n=16, block_k=64), torch.nn.functional.linear(x, w, b), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,splits,bias", [(65, 48, 96, 1, True), (40, 33, 80, 3, False), (17, 64, 64, 2, True),
                                              (64, 16, 64, 1, False), (130, 20, 160, 4, True)])
def test_tree_linear(dtype, m, n, k, splits, bias):
    """A tree's rows as two dots (65: 64 + 16; 40: 32 + 16; 64: one) or past 80 in groups (130: two
    of 128), the K range split with a ragged last slice (80 over 3 slices of 32) and a weight
    not a whole number of tiles, against `F.linear`; the split sums give the same bits on a second
    call."""
    g = torch.Generator().manual_seed(m + splits)
    x = torch.randn(m, k, generator=g).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if bias else None
    got = kernels.tree_linear(x, w, b, block_n=16, block_k=32, splits=splits)
    close(got, torch.nn.functional.linear(x, w, b), dtype)
    assert torch.equal(got, kernels.tree_linear(x, w, b, block_n=16, block_k=32, splits=splits))


def test_tree_linear_row_groups_leave_each_rows_sums_alone(monkeypatch):
    """257 rows in groups of 64, 128 or 256, with 2 or 3 pipeline stages, and the widest group that
    fits by default, the last row in a 16-row tail group (or, with TREE_TAIL off, a whole group): a
    row's sums run in the same order, so the same bits (fp32 under the interpreter)."""
    from specdiff.kernels import tree_gemm

    g = torch.Generator().manual_seed(3)
    x = torch.randn(257, 96, generator=g).to(DEVICE)
    w = (torch.randn(40, 96, generator=g) / 10).to(DEVICE)
    real, launches = tree_gemm._tree_gemm_kernel, []
    spy = type("Spy", (), {"__getitem__": lambda self, grid: lambda *a, **kw: (
        launches.append((grid[0], kw["ROWS_A"], kw["ROWS_T"])), real[grid](*a, **kw))[1]})
    monkeypatch.setattr(tree_gemm, "_tree_gemm_kernel", spy())
    ref = kernels.tree_linear(x, w, block_n=16, block_k=32, splits=2, group_rows=64)
    close(ref, torch.nn.functional.linear(x, w), torch.float32)
    for tail, group, stages in ((True, None, 3), (True, 128, 3), (True, 256, 2), (False, 128, 3)):
        monkeypatch.setattr(tree_gemm, "TREE_TAIL", tail)
        got = kernels.tree_linear(x, w, block_n=16, block_k=32, splits=2, group_rows=group, num_stages=stages)
        assert torch.equal(got, ref), (tail, group, stages)
    assert launches[0] == (5, 64, 16) and launches[2:] == [(3, 128, 16), (2, 256, 16), (3, 128, 0)], launches


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,splits,bias", [(65, 3, True), (17, 2, False), (130, 4, True)])
def test_tree_linear_split_fixup_gives_the_second_launchs_bits(dtype, m, splits, bias, monkeypatch):
    """Under TREE_SPLIT_FIXUP a tile's last split adds the slices in split order inside the same
    launch: the bits of the two-launch sum (two dots and row groups alike), and every tile's
    counter back at zero for the next call."""
    from specdiff.kernels import tree_gemm

    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, 160, generator=g).to(DEVICE, dtype)
    w = (torch.randn(40, 160, generator=g) / 12).to(DEVICE, dtype)
    b = torch.randn(40, generator=g).to(DEVICE, dtype) if bias else None
    monkeypatch.setattr(tree_gemm, "TREE_SPLIT_FIXUP", False)
    two_launches = kernels.tree_linear(x, w, b, block_n=16, block_k=32, splits=splits)
    monkeypatch.setattr(tree_gemm, "TREE_SPLIT_FIXUP", True)
    no_launch = type("NoLaunch", (), {"__getitem__": lambda self, grid: pytest.fail("a second launch")})
    monkeypatch.setattr(tree_gemm, "_split_sum_kernel", no_launch())
    for _ in range(2):  # the counters reset: a second call sums the same way
        assert torch.equal(kernels.tree_linear(x, w, b, block_n=16, block_k=32, splits=splits), two_launches)
    assert int(tree_gemm._COUNTERS[x.device][-1].abs().sum()) == 0


def test_linear_runs_a_trees_rows_where_the_table_names_the_weight(monkeypatch):
    """`linear` takes `tree_linear` with the measured setting for a tree's rows of a listed weight
    (in bf16 on a GPU, the dtype the table was measured in) and cuBLAS elsewhere: past the largest
    measured rows, and fp32 on a GPU, whose tiles may not fit shared memory."""
    from specdiff.kernels import gemm, tree_gemm

    if DEVICE.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("linear runs F.linear off a GPU without Triton's interpreter")
    card = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "interpreter"
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    monkeypatch.setattr(gemm, "TREE_GEMM_SETTINGS", {card: {(48, 64): {96: (16, 32, 2, 4, 2)}}})
    calls = []
    real = tree_gemm.tree_linear
    monkeypatch.setattr(tree_gemm, "tree_linear", lambda *a, **kw: (calls.append(kw), real(*a, **kw))[1])
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(48, 64, generator=g) / 8).to(DEVICE, dtype)
    for m in (65, 97):
        x = torch.randn(m, 64, generator=g).to(DEVICE, dtype)
        close(gemm.linear(x, w), torch.nn.functional.linear(x, w), dtype)
    assert calls == [dict(block_n=16, block_k=32, splits=2, num_warps=4, num_stages=2)]
    if DEVICE.type == "cuda":
        gemm.linear(torch.randn(65, 64, generator=g).to(DEVICE), w.float())
        assert len(calls) == 1


def test_tree_gemm_settings_take_the_next_measured_rows(monkeypatch):
    from specdiff.kernels import gemm

    a, b = (64, 64, 128, 4, 3), (128, 64, 128, 8, 3)
    cpu = torch.device("cpu")
    monkeypatch.setattr(gemm, "TREE_GEMM_SETTINGS", {"interpreter": {(96, 64): {128: b, 64: a, 256: None}}})
    assert [gemm.tree_gemm_settings(cpu, 96, 64, m) for m in (17, 64, 65, 128, 200, 257)] == [a, a, b, b, None, None]
    assert gemm.tree_gemm_settings(cpu, 64, 96, 17) is None  # a shape not measured: cuBLAS
    monkeypatch.setattr(gemm, "_card_name", lambda index: "NVIDIA H200 SXM 141GB")
    monkeypatch.setattr(gemm, "TREE_GEMM_SETTINGS", gemm.MEASURED_TREE_SETTINGS)
    h200, down = torch.device("cuda", 0), gemm.MEASURED_TREE_SETTINGS["NVIDIA H100 80GB HBM3"][(4096, 12288)]
    assert gemm.tree_gemm_settings(h200, 4096, 12288, 40) == down[65]  # the H100's table, by prefix
    monkeypatch.setattr(gemm, "_card_name", lambda index: "NVIDIA A100-SXM4-80GB")
    assert gemm.tree_gemm_settings(h200, 4096, 12288, 40) is None  # a card not listed: cuBLAS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,glue,bias", [(1, "norm", False), (5, "swiglu", True), (16, "residual", True),
                                         (20, "norm+swiglu", False), (3, "none", False)])
def test_decode_gemm_equals_the_separate_kernels(dtype, m, glue, bias):
    """The GEMM with a layer's glue inside: the norm in its prologue, SiLU-multiply or the
    residual add in its epilogue, each against the eager ops it replaces; 20 rows span two row
    blocks."""
    g = torch.Generator().manual_seed(m)
    k, rows = 80, 48
    x = torch.randn(m, k, generator=g).to(DEVICE, dtype)
    w = (torch.randn(rows, k, generator=g) / k ** 0.5).to(DEVICE, dtype)
    b = torch.randn(rows, generator=g).to(DEVICE, dtype) if bias else None
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(DEVICE, dtype)
    norm = (nw, 1e-6) if "norm" in glue else None
    h = kernels.rms_norm_reference(x, nw, 1e-6) if norm else x
    want = torch.nn.functional.linear(h, w, b)
    if "swiglu" in glue:
        want = kernels.silu_mul_reference(want)
    residual = None
    if glue == "residual":
        residual = torch.randn(m, rows, generator=g).to(DEVICE, dtype)
        want = residual.clone().add_(want)
    got = kernels.decode_gemm(x, w, b, norm=norm, swiglu="swiglu" in glue, residual=residual,
                              settings=(16, 32, 4, 2))
    assert got.shape == want.shape
    if residual is not None:
        assert got.data_ptr() == residual.data_ptr()  # added in place
    close(got, want, dtype)


@pytest.mark.parametrize("m,epilogue,streamed", [(1, True, True), (16, True, True), (17, True, True),
                                                 (4, False, True), (4, True, False), (40, True, True)])
def test_swiglu_runs_in_the_gate_up_gemms_epilogue_where_that_gemm_streams(monkeypatch, m, epilogue, streamed):
    """`swiglu` gives SiLU(gate) * up of the fused gate/up projection: one GEMM with the product in
    its epilogue for up to 16 rows of a weight `linear` streams, else the GEMM then `silu_mul` (a tree's rows, `SWIGLU_EPILOGUE` off, or where cuBLAS would
    take the weight); the same values either way (bf16)."""
    from specdiff.kernels import gemm

    monkeypatch.setattr(gemm, "SWIGLU_EPILOGUE", epilogue)
    monkeypatch.setattr(gemm, "SKINNY_MIN_WEIGHT", 0 if streamed else 1 << 40)
    launches = []
    real = gemm.decode_gemm
    monkeypatch.setattr(gemm, "decode_gemm", lambda *a, **kw: (launches.append(kw.get("swiglu", False)), real(*a, **kw))[1])
    g = torch.Generator().manual_seed(m)
    k, inter = 64, 48
    x = torch.randn(m, k, generator=g).to(DEVICE, torch.bfloat16)
    w = (torch.randn(2 * inter, k, generator=g) / k ** 0.5).to(DEVICE, torch.bfloat16)
    b = torch.randn(2 * inter, generator=g).to(DEVICE, torch.bfloat16)
    want = kernels.silu_mul_reference(torch.nn.functional.linear(x, w, b))
    got = kernels.swiglu(x, w, b)
    assert got.shape == (m, inter)
    close(got, want, torch.bfloat16)
    assert (True in launches) == (epilogue and streamed and m <= 16), launches


def test_exact_gemms_in_tree_linear_compute_a_row_as_it_would_alone(monkeypatch):
    """Where the card lists a weight in `INVARIANT_SETTINGS`, exact numerics' GEMMs run
    `tree_linear` with that one setting at every row count (its K split included), past 80 rows
    at the card's wide launch where it lists one (a wider `tree_linear`, or the streaming kernel
    in wider row blocks for a setting without a split), SiLU-multiply then as its own kernel; a row's
    bits are those it gets alone, from 1 to 97 rows (in fp32 on the interpreter, where a changed
    order of the sums shows in every row)."""
    from specdiff.kernels import exact_gemm, gemm, tree_gemm

    if DEVICE.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the exact GEMMs need a GPU or Triton's interpreter")
    card = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "interpreter"
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    monkeypatch.setattr(exact_gemm, "INVARIANT_SETTINGS", {card: {(48, 256): (32, 32, 4, 4, 2), (96, 256): (32, 64, 1, 4, 2)}})
    monkeypatch.setattr(exact_gemm, "WIDE_LAUNCH", {card: {(48, 256): ("tree", 64, 8, 3, 32),
                                                          (96, 256): ("rows", 32, 64, 4, 2)}})
    monkeypatch.setattr(exact_gemm, "INVARIANCE_VERDICTS", {})
    g = torch.Generator().manual_seed(5)
    x = torch.randn(97, 256, generator=g).to(DEVICE, dtype)
    w = (torch.randn(48, 256, generator=g) / 16).to(DEVICE, dtype)
    gate_up = (torch.randn(96, 256, generator=g) / 16).to(DEVICE, dtype)
    assert exact_gemm.invariant_tree_setting(x, w) is None  # listed, not yet probed: the streaming kernel
    assert exact_gemm.probe_invariance([w, gate_up, w.T.contiguous()]) == []
    calls, row_blocks = [], []
    real, streamed = tree_gemm.tree_linear, gemm.decode_gemm
    monkeypatch.setattr(tree_gemm, "tree_linear", lambda x, *a, **kw: (
        calls.append((x.shape[0] > 80, kw["splits"], kw["block_n"])), real(x, *a, **kw))[1])
    monkeypatch.setattr(gemm, "decode_gemm", lambda x, *a, **kw: (
        row_blocks.append((x.shape[0], kw.get("block_m"))), streamed(x, *a, **kw))[1])
    for fn, weight, ref in [(exact_gemm.invariant_linear, w, torch.nn.functional.linear(x, w)),
                            (exact_gemm.invariant_swiglu, gate_up,
                             kernels.silu_mul_reference(torch.nn.functional.linear(x, gate_up)))]:
        alone = {i: fn(x[i : i + 1], weight) for i in (0, 15, 16, 40, 64, 81, 96)}
        for m in (16, 17, 65, 97):
            got = fn(x[:m], weight)
            close(got, ref[:m], dtype)
            for i in (i for i in alone if i < m):
                assert torch.equal(got[i : i + 1], alone[i]), (fn.__name__, m, i)
    assert set(calls) == {(False, 4, 32), (True, 4, 64), (False, 1, 32)}
    assert set(row_blocks) == {(97, 32)}  # gate/up past 80 rows: the streaming kernel's 32-row blocks
    calls.clear()
    exact_gemm.invariant_linear(x, w.T.contiguous())  # a shape the card does not list: the streaming kernel
    assert calls == []


def test_every_wide_launch_widens_a_listed_setting_within_shared_memory():
    """A card's exact launch past 80 rows is for a weight shape its `INVARIANT_SETTINGS` lists
    (else it would never run), of a known kind, the streaming kernel only for a setting without a
    K split, and its tiles fit the 227 KB a Hopper program may take at the setting's block_k (a
    bf16 tile that does not fit fails at launch, not at load); the check refuses each of those."""
    from specdiff.kernels import exact_gemm

    for card, table in exact_gemm.MEASURED_WIDE_LAUNCH.items():
        for shape, wide in table.items():
            assert exact_gemm.wide_launch_fits(exact_gemm.MEASURED_INVARIANT_SETTINGS[card][shape], wide), (card, shape)
    fits = exact_gemm.wide_launch_fits
    assert fits((64, 128, 1, 4, 3), ("rows", 128, 128, 8, 3)) and fits((64, 128, 2, 4, 3), ("tree", 128, 8, 3, 128))
    assert not fits((64, 128, 2, 4, 3), ("rows", 128, 128, 8, 3))  # a split the streaming kernel lacks
    assert not fits((64, 256, 1, 4, 3), ("tree", 64, 4, 3, 128))  # 288 KB of tiles
    assert not fits((64, 128, 1, 4, 3), ("wide", 128, 8, 3, 128))


@pytest.mark.parametrize("planted", ["one row", "wide launch"])
def test_the_invariance_probe_refuses_a_gemm_whose_rows_change_with_the_rows_beside_them(planted, monkeypatch):
    """A listed weight whose `tree_linear` sums K differently for a single row, or past 80 rows at
    the card's wide launch (as a split chosen by the row count would), is refused at the probe:
    exact GEMMs keep the streaming kernel for it, and the run's switches name it."""
    from specdiff.kernels import exact_gemm, tree_gemm

    if DEVICE.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the exact GEMMs need a GPU or Triton's interpreter")
    card = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "interpreter"
    # on a GPU, bf16 at a real weight's size (a changed order of the sums flips about one output in
    # a thousand there); under the interpreter, fp32, where it changes nearly every output
    (n, k), dtype, setting = (((4096, 4096), torch.bfloat16, (64, 128, 1, 4, 3)) if DEVICE.type == "cuda"
                              else ((48, 256), torch.float32, (16, 32, 1, 4, 2)))
    monkeypatch.setattr(exact_gemm, "INVARIANT_SETTINGS", {card: {(n, k): setting}})
    monkeypatch.setattr(exact_gemm, "WIDE_LAUNCH", {card: {(n, k): ("tree", setting[0], 4, 2, 64)}})
    monkeypatch.setattr(exact_gemm, "INVARIANCE_VERDICTS", {})
    real = tree_gemm.tree_linear
    split_at = (lambda m: m == 1) if planted == "one row" else (lambda m: m > 80)
    monkeypatch.setattr(tree_gemm, "tree_linear", lambda x, weight, bias=None, **kw: real(
        x, weight, bias, **{**kw, "splits": 4 if split_at(x.shape[0]) else kw["splits"]}))
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(DEVICE, dtype)
    assert exact_gemm.probe_invariance([w]) == [(n, k)]
    assert exact_gemm.invariant_tree_setting(torch.randn(3, k).to(DEVICE, dtype), w) is None
    assert kernels.switches(DEVICE)["invariant_refused"] == f"{n}x{k}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_kernels_compute_a_row_as_it_would_alone(dtype):
    """The exact op set: the GEMM (plain, and with SiLU-multiply in its epilogue) at any row count
    and the position-ordered attention give a row bitwise what they give it alone (and agree with
    the references to rounding)."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(37, 64, generator=g).to(DEVICE, dtype)
    w = (torch.randn(48, 64, generator=g) / 8).to(DEVICE, dtype)
    all_rows = kernels.invariant_linear(x, w)
    close(all_rows, torch.nn.functional.linear(x, w), dtype)
    assert all(torch.equal(all_rows[i], kernels.invariant_linear(x[i : i + 1], w)[0]) for i in (0, 17, 36))
    # SiLU-multiply in the epilogue of a gate/up GEMM ([2 x 24, 64]) by the weight's shape alone
    gated = kernels.invariant_swiglu(x, w)
    close(gated, kernels.silu_mul_reference(torch.nn.functional.linear(x, w)), dtype)
    assert all(torch.equal(gated[i], kernels.invariant_swiglu(x[i : i + 1], w)[0]) for i in (0, 17, 36))

    n, hq, hkv, d, start = 12, 4, 2, 16, 70
    tree = random_tree(n, g)
    q = torch.randn(n, hq, d, generator=g).to(DEVICE, dtype)
    k = torch.randn(hkv, 128, d, generator=g).to(DEVICE, dtype)
    v = torch.randn(hkv, 128, d, generator=g).to(DEVICE, dtype)
    st = torch.tensor([start], device=DEVICE)
    anc = tree.ancestor_mask().to(DEVICE)
    got = kernels.position_attention(q, k, v, st, anc, start + n, d ** -0.5)
    close(got, kernels.tree_attention_reference(q, k, v, st, anc, start + n, d ** -0.5), dtype)
    leaf = n - 1  # the same query alone on its path, laid out as AR steps: slots start .. start + depth
    path = torch.nonzero(anc[leaf]).flatten()
    k_ar, v_ar = k.clone(), v.clone()
    k_ar[:, start : start + len(path)] = k[:, start + path]
    v_ar[:, start : start + len(path)] = v[:, start + path]
    chain = torch.ones(len(path), len(path), dtype=torch.bool, device=DEVICE).tril()
    q_ar = torch.zeros(len(path), hq, d, dtype=dtype, device=DEVICE)
    q_ar[-1] = q[leaf]
    alone = kernels.position_attention(q_ar, k_ar, v_ar, st, chain, start + len(path), d ** -0.5)
    assert torch.equal(alone[-1], got[leaf])


@pytest.mark.parametrize("n,nb", [(1, 1), (2, 4), (17, 24), (65, 96), (30, 32)])
def test_tree_inputs_build_a_resident_trees_target_inputs(n, nb):
    """A tree left on the device becomes the graph engine's packed row (ids, positions, start) and
    ancestor block: the kernel and its reference equal what the host builds from the same tree,
    padding rows at the root's position seeing themselves only."""
    g = torch.Generator().manual_seed(n)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    tree = DraftTree.from_lists(torch.randint(0, 500, (n,), generator=g).tolist(), parents)
    start = 37
    want_anc = torch.eye(nb, dtype=torch.bool)
    want_anc[:n, :n] = tree.ancestor_mask()
    pad = torch.zeros(nb - n, dtype=torch.long)
    want_packed = torch.cat([tree.tokens, pad, tree.depths + start, pad + start, torch.tensor([start])])
    for fn in (kernels.tree_inputs, kernels.tree_inputs_reference):
        packed = torch.full((2 * nb + 1,), -5, dtype=torch.long, device=DEVICE)
        anc = torch.zeros(nb, nb, dtype=torch.bool, device=DEVICE)
        fn(tree.tokens.to(DEVICE), tree.parents.to(DEVICE), tree.depths.to(DEVICE), start, packed, anc)
        assert torch.equal(anc.cpu(), want_anc), fn
        assert torch.equal(packed.cpu(), want_packed), fn


@pytest.mark.parametrize("n,chain", [(1, False), (9, True), (16, True), (40, False), (65, False), (257, False)])
def test_accepted_path_is_the_walks_path(n, chain):
    """The kernel's path (nodes, count, bonus) is the host walk's, for trees and drafted chains
    where the draws follow a path to every depth, stop at the root, or stop midway; its reference
    (the ancestor test) gives the same. A kernel that stops one step early fails the deep cases."""
    from specdiff.verify.walk import DevicePath, device_path, device_path_reference, walk_read, walk_row

    g = torch.Generator().manual_seed(n)
    if chain:
        parents = list(range(-1, n - 1))
    else:  # parents first; a node's children hold distinct tokens
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    tokens = [0] * n
    for i in range(1, n):
        tokens[i] = 10 * i + 3  # distinct everywhere
    resident = not chain
    base = DraftTree.from_lists(tokens, parents)
    depth = base.max_depth
    tree = DraftTree(base.tokens.to(DEVICE), base.parents.to(DEVICE) if resident else base.parents,
                     base.depths.to(DEVICE) if resident else base.depths, drafted=chain, resident=resident,
                     depth_bound=depth + 2 if resident else None)
    deepest = int(torch.argmax(base.depths))
    line = [deepest]
    while parents[line[-1]] >= 0:
        line.append(parents[line[-1]])
    line.reverse()  # root .. deepest
    anc = base.ancestor_mask().to(DEVICE)
    for cut in sorted({0, len(line) // 2, len(line) - 1}):
        draws = torch.randint(5000, 6000, (n,), generator=g)  # no node holds these
        for a, b in zip(line[:cut], line[1 : cut + 1]):
            draws[a] = tokens[b]
        draws = draws.to(DEVICE)
        want = walk_read(tree, walk_row(tree, draws).cpu().numpy())
        assert want.accepted == line[: cut + 1]
        for fn in (device_path, device_path_reference):
            p: DevicePath = fn(tree, draws, anc)
            count = int(p.count)
            assert p.nodes.shape[0] == (tree.depth_bound if resident else n - 1) + 1, fn
            assert p.nodes[:count].tolist() == want.accepted, (fn, cut)
            assert p.nodes[count:].eq(0).all(), fn
            assert int(p.bonus) == want.tokens[-1], fn


# Compiles the forward kernels for sm_90 with no GPU (Triton's own ptxas), in a process of its own:
# this one runs Triton's interpreter, whose kernels do not compile. Prints each kernel's PTX.
_HOPPER_PTX = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from specdiff.kernels import attention, elementwise, gemm, tree_gemm
bf, f32, i32 = "*bf16", "*fp32", "i32"
tree_args = dict(x_ptr=bf, w_ptr=bf, b_ptr=bf, y_ptr=f32, out_ptr=bf, cnt_ptr="*i32", M=i32, N=i32, K=i32, K_SPLIT=i32)
tree_launch = dict(BIAS=False, BLOCK_N=64, BLOCK_K=64, PRECISION="tf32", INTERPRETED=False)
cases = {
    "gemm": (gemm._decode_gemm_kernel,
             dict(x_ptr=bf, nw_ptr=bf, w_ptr=bf, b_ptr=bf, y_ptr=bf, M=i32, N=i32, K=i32, eps="fp32"),
             dict(NORM=True, BIAS=False, RESIDUAL=True, SWIGLU=False, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
                  PRECISION="tf32", INTERPRETED=False, PREFETCH=2)),
    "norm": (elementwise._add_rms_norm_kernel,
             dict(x_ptr=bf, d_ptr=bf, w_ptr=bf, out_ptr=bf, N=i32, H=i32, eps="fp32"), dict(ADD=True, ROWS=1, BLOCK=1024)),
    "silu": (elementwise._silu_mul_kernel, dict(gu_ptr=bf, out_ptr=bf, N=i32, I=i32), dict(ROWS=1, BLOCK=1024)),
    "combine": (attention._combine_kernel, dict(part_ptr=f32, ml_ptr=f32, out_ptr=bf, N=i32, HQ=i32, HKV=i32, SPLITS=i32),
                dict(G=4, D=128, SPLITS_P2=8)),
    "attention": (attention._tree_attention_kernel,
                  dict(q_ptr=bf, k_ptr=bf, v_ptr=bf, start_ptr="*i64", anc_ptr="*u8", out_ptr=bf, part_ptr=f32,
                       ml_ptr=f32, N=i32, HQ=i32, HKV=i32, cache_sh=i32, cache_ss=i32, scale="fp32"),
                  dict(G=4, D=128, BLOCK_M=16, BLOCK_N=64, DIRECT=False, PRECISION="tf32", INTERPRETED=False)),
    "qkv": (elementwise._qkv_rope_store_kernel,
            dict(qkv_ptr=bf, cos_ptr=f32, sin_ptr=f32, nw_ptr=bf, q_ptr=bf, kc_ptr=bf, vc_ptr=bf, slot_ptr="*i64",
                 N=i32, HQ=i32, HKV=i32, cache_sh=i32, cache_ss=i32, eps="fp32", ROW=i32, nw_sl=i32, cache_sl=i32),
            dict(NORM=True, D=128, BLOCK_H=8)),
    # a tree's two dots (65 rows: 64 + 16), then row groups of 128 with a 16-row tail and the split's fix-up
    "tree": (tree_gemm._tree_gemm_kernel, tree_args,
             dict(ROWS_A=64, ROWS_B=16, ROWS_T=0, PARTIAL=False, SPLITS=1, FIXUP=False, **tree_launch)),
    "tree_tail": (tree_gemm._tree_gemm_kernel, tree_args,
                  dict(ROWS_A=128, ROWS_B=0, ROWS_T=16, PARTIAL=True, SPLITS=2, FIXUP=True, **tree_launch)),
}
out = {}
for name, (fn, signature, constexprs) in cases.items():
    for on in (False, True) if not name.startswith("tree") else (True,):  # the tree's: the wait's place
        c = {**constexprs, "PDL": on}
        src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in c}}, constexprs=c)
        opts = {"launch_pdl": True} if on else {}
        out[f"{name} {on}"] = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]
json.dump(out, sys.stdout)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="compiles for Hopper on a machine without a GPU")
def test_a_kernel_launched_dependently_waits_before_it_reads_or_writes_memory():
    """Compiled for Hopper with PDL on, every forward kernel's PTX waits for the kernel before it
    (`griddepcontrol.wait`) before its first global load or store, and releases the next one;
    the GEMM's L2 prefetches of its weight come before the wait. With PDL off: no wait. The
    tree's GEMM compiles with its two dots and with row groups, a narrow tail group and the
    split's fix-up (on the CPU its kernel only ever runs interpreted)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _HOPPER_PTX], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ptx = json.loads(run.stdout)
    for name in ("gemm", "norm", "silu", "combine", "attention", "qkv", "tree", "tree_tail"):
        assert "griddepcontrol" not in ptx.get(f"{name} False", ""), name
        on = ptx[f"{name} True"]
        wait = on.index("griddepcontrol.wait")
        memory = [i for i in (on.find(op) for op in ("ld.global", "st.global", "atom.global")) if i >= 0]
        assert wait < min(memory), name
        assert "griddepcontrol.launch_dependents" in on, name
    assert 0 <= ptx["gemm True"].find("prefetch.global.L2") < ptx["gemm True"].index("griddepcontrol.wait")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="programmatic dependent launch runs on a GPU")
@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_chain_of_kernels_launched_dependently_gives_the_plain_launches_bits(monkeypatch, prefetch):
    """A layer's kernels, each reading what the one before wrote, captured in a CUDA graph with
    programmatic dependent launch (where the GPU has it; the GEMMs prefetching `prefetch` weight
    tiles before their wait) and without: the same bits, replay after replay. A kernel that read
    its input before the wait would race the one before it."""
    from specdiff.kernels import common, gemm

    monkeypatch.setattr(gemm, "PREFETCH_TILES", prefetch)

    g = torch.Generator(device="cuda").manual_seed(0)
    h, n, hkv, hq, d = 1024, 8, 2, 8, 64
    x0 = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, generator=g)
    w_qkv = torch.randn((hq + 2 * hkv) * d, h, device="cuda", dtype=torch.bfloat16, generator=g) * 0.03
    w_o = torch.randn(h, hq * d, device="cuda", dtype=torch.bfloat16, generator=g) * 0.03
    w_gu = torch.randn(2 * 2048, h, device="cuda", dtype=torch.bfloat16, generator=g) * 0.03
    w_d = torch.randn(h, 2048, device="cuda", dtype=torch.bfloat16, generator=g) * 0.03
    nw = torch.ones(h, device="cuda", dtype=torch.bfloat16)
    k_cache = torch.randn(hkv, 256, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v_cache = torch.randn(hkv, 256, d, device="cuda", dtype=torch.bfloat16, generator=g)
    start = torch.tensor([200], device="cuda")
    anc = torch.ones(n, n, device="cuda", dtype=torch.bool).tril()
    cos, sin = torch.ones(n, d, device="cuda"), torch.zeros(n, d, device="cuda")
    slots = start + torch.arange(n, device="cuda")

    def layers(x):
        for _ in range(4):
            y = kernels.add_rms_norm(x, None, nw, 1e-6)
            q = kernels.qkv_rope_store(kernels.skinny_linear(y, w_qkv), cos, sin, None, 1e-6, k_cache, v_cache,
                                       slots, hq)
            a = kernels.tree_attention(q, k_cache, v_cache, start, anc, 256, d ** -0.5)
            x = x + kernels.skinny_linear(a.reshape(n, -1), w_o)
            up = kernels.skinny_linear(kernels.add_rms_norm(x, None, nw, 1e-6), w_gu)
            x = x + kernels.skinny_linear(kernels.silu_mul(up), w_d)
        return x

    outs = {}
    for on in (False, True):
        monkeypatch.setattr(common, "PDL", on)
        x = x0.clone()
        layers(x)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layers(x)
        got = []
        for _ in range(3):
            graph.replay()
            got.append(out.clone())
        torch.cuda.synchronize()
        outs[on] = got
    print("PDL on this GPU:", common.pdl(torch.device("cuda")))
    for a, b in zip(outs[False], outs[True]):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts the kernel's compiled variants on a GPU")
def test_tree_inputs_compiles_once_per_bucket():
    """Every round launches `tree_inputs` with its tree's size and position: one bucket's launches
    (sizes 1, 16 and 17, positions a multiple of 16 or not) share one compiled kernel, the one
    `GraphedTarget.prepare` builds, so no decode round pays for a compile."""
    from specdiff.kernels import tree as tree_kernels

    nb = 48
    packed = torch.zeros(2 * nb + 1, dtype=torch.long, device="cuda")
    anc = torch.zeros(nb, nb, dtype=torch.bool, device="cuda")
    cache = tree_kernels._tree_inputs_kernel.device_caches[torch.cuda.current_device()][0]
    before = len(cache)
    for n, start in ((1, 16), (16, 37), (17, 48), (33, 1)):
        ids = torch.arange(n, device="cuda")
        kernels.tree_inputs(ids, ids - 1, ids, start, packed, anc)
    assert len(cache) - before <= 1, len(cache) - before


def test_a_runs_kernel_switches_are_named_in_its_report(monkeypatch):
    """Launch choices set away from their defaults (as `scripts/ab.py` sets them) are listed in
    the report's environment line; at the defaults nothing is (dependent launches are on by
    default and simply launch plainly where no Hopper GPU runs them)."""
    from specdiff.bench.tables import environment_line
    from specdiff.kernels import common, gemm

    env = {"device": "cpu", "torch": "t", "transformers": "x"}
    assert kernels.switches(torch.device("cpu")) == {}
    assert "switches" not in environment_line({**env, "kernel_switches": {}})
    monkeypatch.setattr(common, "PDL", False)
    monkeypatch.setattr(gemm, "PREFETCH_TILES", 4)
    monkeypatch.setattr(gemm, "SKINNY_MIN_WEIGHT", 0)
    got = kernels.switches(torch.device("cpu"))
    assert got == {"pdl": False, "prefetch_tiles": 4, "skinny_min_weight": 0}
    line = environment_line({**env, "kernel_switches": got})
    assert line.endswith("kernel switches: pdl=False, prefetch_tiles=4, skinny_min_weight=0")


def test_a_cards_streaming_settings_go_by_its_longest_listed_name(monkeypatch):
    """`gemm.STREAM_SETTINGS` applies the table of the longest card name that prefixes the GPU's
    own, for the shapes it lists, each row count taking the smallest measured count at or above
    it; a card, shape or row count it does not cover keeps `linear`'s defaults (None)."""
    from specdiff.kernels import gemm

    monkeypatch.setattr(gemm, "STREAM_SETTINGS", {"NVIDIA H": {(8, 4): {16: (16, 64, 4, 3)}},
                                                  "NVIDIA H200": {(8, 4): {1: (32, 128, 4, 7), 4: "cublas"}}})
    for name, want in (("NVIDIA H200 NVL", [(32, 128, 4, 7), "cublas", None]),
                       ("NVIDIA H100 80GB HBM3", [(16, 64, 4, 3)] * 3), ("NVIDIA A100-SXM4-80GB", [None] * 3)):
        monkeypatch.setattr(gemm, "_card_name", lambda index, name=name: name)
        assert [gemm.stream_settings(torch.device("cuda", 0), 8, 4, m) for m in (1, 3, 16)] == want
        assert gemm.stream_settings(torch.device("cuda", 0), 8, 8, 1) is None
    assert kernels.switches(torch.device("cpu")) == {"stream_settings": "NVIDIA H,NVIDIA H200"}


tl = triton.language


@triton.jit
def _sort_kernel(x_ptr, out_ptr, N: tl.constexpr, DESC: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(out_ptr + offs, tl.sort(tl.load(x_ptr + offs), descending=DESC))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="a shortcut of Triton's interpreter")
def test_the_interpreters_integer_sort_gives_the_networks_order(monkeypatch):
    """`tests/triton_interpreter.py` hands `tl.sort` of integers to numpy: the same order as Triton's
    bitonic network (run with the shortcut off) and torch's, duplicates and negatives included,
    both directions; floats keep the network."""
    import triton_interpreter

    g = torch.Generator().manual_seed(0)
    keys = torch.randint(-50, 50, (64,), generator=g, dtype=torch.int64)
    floats = torch.randn(64, generator=g)
    used = []
    real = triton_interpreter._integer_sort
    monkeypatch.setattr(triton_interpreter, "_integer_sort", lambda *a, **kw: (used.append(1), real(*a, **kw))[1])
    for x in (keys, floats):
        for desc in (False, True):
            out = torch.empty_like(x)
            _sort_kernel[(1,)](x, out, N=64, DESC=desc)
            assert torch.equal(out, torch.sort(x, descending=desc).values), (x.dtype, desc)
            if x.dtype == torch.int64:
                network = torch.empty_like(x)
                with monkeypatch.context() as m:
                    m.setattr(triton_interpreter, "_integer_sort", lambda *a, **kw: None)
                    _sort_kernel[(1,)](x, network, N=64, DESC=desc)
                assert torch.equal(out, network), desc
    assert used, "the shortcut never ran"
