"""Exact numerics' GEMMs (`--numerics exact`): a row's result depends on that row alone, whatever
rows share its forward. `tree_linear` at one setting per weight shape where the card lists the
shape and the load's probe passed the weight (a weight read once per forward), else the streaming
kernel in fixed 16-row blocks with settings by the weight's shape alone."""

from __future__ import annotations

import copy
import functools

import torch

from specdiff.kernels import gemm, tree_gemm
from specdiff.kernels.elementwise import silu_mul
from specdiff.kernels.tree_gemm import TreeSetting


def _invariant_setting(weight: torch.Tensor) -> tuple[int, int, int, int]:
    """The streaming kernel's settings for `weight` whatever the row count: its shape alone."""
    n, k = weight.shape
    return (32, 128, 4, 5) if n * k <= gemm.SQUARE_8B else (64, 128, 4, 3)


# Exact numerics' GEMM as `tree_linear`, per card: {card name: {(rows, K): (block_n, block_k,
# splits, warps, stages)}}, one setting per weight shape for every row count. `tree_linear` reads a
# weight tile once for all of a forward's rows, where the streaming kernel's 16-row blocks read it
# once per block; its K order is fixed by block_k and the splits, so a row's bits do not depend on
# the rows beside it, provided the card's MMA sums a row the same whatever the tile's width. A card
# is listed where `scripts/gpu_invariance.py` found that so (every row of 1 to 257-row calls equal
# to the row alone, at every setting it tried) and the setting faster; other cards and shapes keep
# the streaming kernel. A listed weight runs in `tree_linear` only once `probe_invariance` has
# checked it on this device.
MEASURED_INVARIANT_SETTINGS: dict[str, dict[tuple[int, int], TreeSetting]] = {
    # Qwen3-8B: at 1 / 17 / 65 rows, us against the streaming kernel's 16-row blocks: qkv 19.1 /
    # 19.8 / 23.3 against 22.0 / 23.1 / 30.1, o 13.9 / 14.6 / 16.9 against 14.0 / 14.7 / 31.9,
    # gate/up 68.2 / 69.5 / 75.4 against 69.0 / 87.5 / 132.4, down 36.8 / 38.0 / 41.3 against 52.1
    # / 52.8 / 67.4, the LM head 406 / 411 / 429 against 406 / 450 / 850. The 8B rounds in exact
    # numerics: ar 7.13 -> 6.33 ms, ddtree@64 13.55 -> 9.26 (fast: 5.97, 8.80;
    # invariant_gemm_h100/call2)
    "NVIDIA H100 80GB HBM3": {
        (6144, 4096): (64, 256, 1, 4, 3), (4096, 4096): (64, 128, 2, 4, 3), (24576, 4096): (64, 128, 1, 4, 3),
        (4096, 12288): (64, 256, 2, 4, 3), (151936, 4096): (128, 128, 1, 4, 3),
    },
}
INVARIANT_SETTINGS = copy.deepcopy(MEASURED_INVARIANT_SETTINGS)  # what runs (`scripts/ab.py` may change it)

# Past `tree_gemm.TREE_DOT_ROWS` rows (a tree of 128 or 256 nodes), launch choices that leave a
# row's sums alone, per card: {card name: {(rows, K): launch}}, a launch either ("tree",
# block_n, warps, stages, group_rows): `tree_linear`, the rows on the MMA's narrow side; or ("rows", block_m,
# block_n, warps, stages): the streaming kernel in block_m-row blocks, the rows on its wide side,
# for a setting without a K split. Block_k and the splits stay `INVARIANT_SETTINGS`' (they fix
# the K order); a wider tile, more warps or wider row blocks only change how often the weight is
# read and how well the MMA is fed. Listed where `scripts/gpu_invariance.py --wide` found every
# row of a 257-row call equal to the row alone and the launch faster; the probe checks it on the
# device like the setting itself.
WideLaunch = tuple  # ("tree", block_n, warps, stages, group_rows) | ("rows", block_m, block_n, warps, stages)
MEASURED_WIDE_LAUNCH: dict[str, dict[tuple[int, int], WideLaunch]] = {
    # Qwen3-8B: at 129 / 257 rows, us against the table's own launch: o 24.6 / 38.6 against 28.0 /
    # 41.9, gate/up 98.0 / 167.4 against 124.0 / 199.7, the LM head 630.5 / 947.1 against 636.5 /
    # 1013.2; qkv and down (block_k 256) fit no wider tile. The 8B forward of 257 nodes in exact
    # numerics 19.09 -> 17.77 ms (wide_rows_h100/call2)
    "NVIDIA H100 80GB HBM3": {
        (4096, 4096): ("tree", 128, 8, 3, 128), (24576, 4096): ("tree", 128, 8, 3, 128),
        (151936, 4096): ("tree", 128, 8, 3, 128),
    },
}
WIDE_LAUNCH = copy.deepcopy(MEASURED_WIDE_LAUNCH)  # what runs (`scripts/ab.py` may change it)
# (card, weight shape, setting, wide launch) -> whether `probe_invariance` found a row's bits its
# own there
INVARIANCE_VERDICTS: dict[tuple, bool] = {}


def _listed_invariant(x: torch.Tensor, shape: tuple[int, int]) -> TreeSetting | None:
    """The card's setting for a weight of `shape` multiplying tensors like x, None where none."""
    return gemm._card_table(INVARIANT_SETTINGS, x.device).get(shape) if gemm.tree_tables_apply(x) else None


def _wide_launch(x: torch.Tensor, shape: tuple[int, int]) -> WideLaunch | None:
    """The card's launch for `shape` past `tree_gemm.TREE_DOT_ROWS` rows, None where none."""
    return gemm._card_table(WIDE_LAUNCH, x.device).get(shape)


def _verdict_key(x: torch.Tensor, shape: tuple[int, int], setting: TreeSetting) -> tuple:
    return gemm._card_key(x.device), shape, setting, _wide_launch(x, shape)


def _tree_run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, setting: TreeSetting
              ) -> torch.Tensor:
    """`tree_linear` at the table's setting, through the wide launch past TREE_DOT_ROWS rows."""
    wide = _wide_launch(x, tuple(weight.shape)) if x.shape[0] > tree_gemm.TREE_DOT_ROWS else None
    if wide is None or not wide_launch_fits(setting, wide, x.element_size(), tree_gemm._shared_memory(x.device)):
        return tree_gemm.tree_linear_at(x, weight, bias, setting)
    kind, *launch = wide
    if kind == "rows":  # without a K split (`wide_launch_fits`), which the streaming kernel lacks
        bm, bn, warps, stages = launch
        return gemm.decode_gemm(x, weight, bias, settings=(bn, setting[1], warps, stages), block_m=bm)
    bn, warps, stages, group = launch
    return tree_gemm.tree_linear(x, weight, bias, block_n=bn, block_k=setting[1], splits=setting[2], num_warps=warps,
                            num_stages=stages, group_rows=group)


def wide_launch_fits(setting: TreeSetting, wide: WideLaunch, itemsize: int = 2, shared: int = 227 * 1024) -> bool:
    """Whether a wide launch can run a setting: a known kind, the streaming kernel only without a
    K split, and its pipelined tiles within `shared` bytes at the setting's block_k."""
    kind, *launch = wide
    if kind == "rows":
        bm, bn, _, stages = launch
        return setting[2] == 1 and tree_gemm.tiles_fit(bm, bn, setting[1], stages, itemsize, shared)
    if kind == "tree":
        bn, _, stages, group = launch
        return tree_gemm.tiles_fit(group, bn, setting[1], stages, itemsize, shared)
    return False


def probe_invariance(weights: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Checks each weight whose shape the card lists in `INVARIANT_SETTINGS`, once per setting:
    `tree_linear` at that setting over 145 rows (row groups and a narrower tail group, at the wide
    launch where the card lists one) against ten rows computed alone and the 17 and 65-row calls
    (on a GPU a changed order of the sums flips about one bf16 output in a thousand at K = 4096,
    so a real weight's thousands of outputs show it). Records the verdicts `invariant_linear`
    reads -> the shapes refused (a row's bits changed with the rows beside it: they keep the
    streaming kernel). Not graph-capturable: run it where the model loads."""
    refused = []
    for w in weights:
        shape, setting = tuple(w.shape), _listed_invariant(w, tuple(w.shape))
        key = _verdict_key(w, shape, setting)
        if setting is None or key in INVARIANCE_VERDICTS:
            continue
        run = functools.partial(_tree_run, weight=w, bias=None, setting=setting)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(145, w.shape[1], generator=g).to(w.device, w.dtype)
        full = run(x)
        ok = (all(torch.equal(full[i : i + 1], run(x[i : i + 1])) for i in (0, 1, 15, 16, 17, 63, 64, 96, 128, 144))
              and torch.equal(full[:17], run(x[:17])) and torch.equal(full[:65], run(x[:65])))
        INVARIANCE_VERDICTS[key] = ok
        if not ok:
            refused.append(shape)
    return refused


def invariant_tree_setting(x: torch.Tensor, weight: torch.Tensor) -> TreeSetting | None:
    """The card's `tree_linear` setting for exact numerics' GEMM of `weight` where
    `probe_invariance` passed it, else None."""
    shape = tuple(weight.shape)
    setting = _listed_invariant(x, shape)
    return setting if setting is not None and INVARIANCE_VERDICTS.get(_verdict_key(x, shape, setting)) else None


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` whose row results depend on that row alone (`--numerics exact`): `tree_linear`
    with the card's one setting for the weight's shape (`INVARIANT_SETTINGS`), else `skinny_linear`
    at any row count with settings chosen by the weight's shape alone."""
    tree = invariant_tree_setting(x, weight)
    if tree is not None:
        return _tree_run(x, weight, bias, tree)
    return gemm.decode_gemm(x, weight, bias, settings=_invariant_setting(weight))


def invariant_swiglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`swiglu` for exact numerics: SiLU-multiply in the epilogue of a GEMM whose settings come
    from the weight's shape alone, its tile as wide as `invariant_linear`'s (half gate rows, half
    up rows), so a row's result depends on that row alone; `invariant_linear` then `silu_mul`
    where `SWIGLU_EPILOGUE` is off or the card runs this weight in `tree_linear`."""
    if not gemm.SWIGLU_EPILOGUE or invariant_tree_setting(x, weight) is not None:
        return silu_mul(invariant_linear(x, weight, bias))
    bn, bk, warps, stages = _invariant_setting(weight)
    return gemm.decode_gemm(x, weight, bias, swiglu=True, settings=(bn // 2, bk, warps, stages))
