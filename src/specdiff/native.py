"""The decode loop's per-node host work in C (`native.c`), compiled on first use, loaded with ctypes.

On a GPU host a round's host time is round time, and in Python the tree work grows by about a
microsecond per node: a best-first pop, an ancestor-mask row, a child lookup in the walk. In C
each costs tens of nanoseconds, so a larger tree (caddtree's filled bucket) no longer costs host
time. `load()` gives the backend, a `Native`, or None where there is no C compiler; its owner
(`engine.build_decoder`) hands it to the target, the proposer and the verifier, and each of them
takes None as its Python reference (`ddtree.iter_best_first`, `DraftTree.ancestor_mask`, the
walk's table), which gives the same result. The shared library is cached per source hash under
$SPECDIFF_CACHE (default ~/.cache/specdiff); SPECDIFF_NO_NATIVE=1 turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from specdiff.types import DraftTree, TopPrefixes

SOURCE = Path(__file__).with_name("native.c")
_P, _I = ctypes.c_void_p, ctypes.c_int


def _build() -> ctypes.CDLL | None:
    if os.environ.get("SPECDIFF_NO_NATIVE"):
        return None
    src = SOURCE.read_bytes()
    cache = Path(os.environ.get("SPECDIFF_CACHE", Path.home() / ".cache" / "specdiff"))
    lib = cache / f"native-{hashlib.sha256(src).hexdigest()[:16]}.so"
    if not lib.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build aside, then one rename
                out = Path(tmp) / lib.name
                cmd = [os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-o", str(out), str(SOURCE), "-lm"]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                os.replace(out, lib)
        except (OSError, subprocess.SubprocessError):
            return None  # no compiler, or no writable cache: the Python paths
    dll = ctypes.CDLL(str(lib))
    dll.top_prefixes.argtypes = [_P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _I, ctypes.c_double, ctypes.c_double,
                                 ctypes.c_double, _P]
    dll.top_prefixes.restype = _I
    dll.ancestor_mask.argtypes = [_P, _I, _P, ctypes.c_int64, _I]
    dll.ancestor_mask.restype = None
    dll.walk.argtypes = [_P, _P, _P, _I, _P]
    dll.walk.restype = _I
    return dll


class StepCosts:
    """caddtree's per-round costs for the C choice: the compared sizes (root included), C_v at
    each and the root-alone step, with the arrays' addresses taken once."""

    def __init__(self, sizes: tuple[int, ...], steps: list[float], root_step: float):
        self.sizes, self.steps, self.root_step = sizes, steps, root_step
        self._arrays = (np.array(sizes, dtype=np.int64), np.array(steps, dtype=np.float64))
        self.addresses = tuple(a.ctypes.data for a in self._arrays)


class Native:
    """The loaded library (`load()`): the tree search, caddtree's choice, the ancestor mask and
    the walk, each the same as its Python reference."""

    def __init__(self, lib: ctypes.CDLL):
        self._lib = lib

    def top_prefixes(self, top_logp: torch.Tensor, top_ids: torch.Tensor, width: int, complete: bool) -> TopPrefixes:
        """The first `width` pops of the best-first search over top_logp [L, K] (host float32, rows
        sorted) with tokens top_ids [L, K] (host int64). `complete`: the K candidates are each depth's
        whole vocabulary. `searched` counts the pops that are exact over every candidate (all, unless
        one used a depth's last candidate), so `TopPrefixes.covers` tells when to fetch more."""
        return self._search(top_logp, top_ids, width, complete)[0]

    def caddtree_search(self, top_logp: torch.Tensor, top_ids: torch.Tensor, complete: bool, steps: StepCosts,
                        fixed: float, lam: float = 0.0) -> tuple[TopPrefixes, int | None]:
        """caddtree's search (`caddtree._grow` in C): pops while it compares the value of the sizes in
        `steps` (a round costs fixed + its step; `lam`: see `_grow`) and stops where it peaks. -> the
        pops and the draft nodes to keep, or None when a pop used a depth's last candidate before the
        decision was settled (fetch them all: `complete`)."""
        return self._search(top_logp, top_ids, steps.sizes[-1] - 1, complete, steps, fixed, lam)

    def _search(self, top_logp, top_ids, width, complete, steps: StepCosts | None = None, fixed: float = 0.0,
                lam: float = 0.0):
        if top_logp.dtype != torch.float32 or top_ids.dtype != torch.int64 or not (
                top_logp.is_contiguous() and top_ids.is_contiguous()):
            raise TypeError("top_prefixes: contiguous float32 log-probs and int64 ids on the host")
        depth, k = top_logp.shape
        # one fresh buffer per search (the result outlives the call): the table [3, width + 1]
        # (int64), then log-probs and phi [2, width] (float64), then the exact count
        w1, end = width + 1, 3 * (width + 1) + 2 * width
        buf = np.empty(end + 2, np.int64)  # + the exact count, the decision
        addr = buf.ctypes.data
        logp_at = addr + 8 * 3 * w1
        if steps is None:
            decide = (None, None, 0, 0.0, 0.0, 0.0, None)
        else:
            decide = (*steps.addresses, len(steps.sizes), fixed, steps.root_step, lam, addr + 8 * (end + 1))
        n = self._lib.top_prefixes(top_logp.data_ptr(), top_ids.data_ptr(), depth, k, width, int(complete), addr,
                                   logp_at, addr + 8 * end, *decide)
        if n < 0:
            raise MemoryError("best-first search: out of memory")
        exact = int(buf[end])
        searched = exact if exact < n else width  # all exact: good for `width`
        m = min(n, searched)
        table = buf[: 3 * w1].reshape(3, w1)
        table[:, 0] = (0, -1, 0)  # the root: its token is the tree's
        scores = buf[3 * w1 : end].view(np.float64).reshape(2, width)
        prefixes = TopPrefixes(table[:, : m + 1], scores[1, :m], scores[0, :m], depth, searched)
        if steps is None:
            return prefixes, None
        keep = int(buf[end + 1])
        return prefixes, (None if keep < 0 else keep)

    def tree_mask(self, tree: DraftTree) -> torch.Tensor:
        """`tree.ancestor_mask()` [N, N] bool, in C."""
        n = tree.num_nodes
        mask = np.empty((n, n), dtype=bool)
        self.ancestor_mask(np.ascontiguousarray(tree.parents.numpy()), mask)
        return torch.from_numpy(mask)

    def ancestor_mask(self, parents: np.ndarray, out: np.ndarray) -> None:
        """Write the ancestor mask of `parents` (n, int64, contiguous) into out [size, size] (bool,
        rows contiguous, size >= n): out[i, j] is True where j is i or an ancestor of i; a padding
        row (i >= n) holds only its diagonal."""
        self._lib.ancestor_mask(parents.ctypes.data, parents.shape[0], out.ctypes.data, out.strides[0], out.shape[0])

    def walk(self, parents: np.ndarray, tokens: np.ndarray, draws: np.ndarray) -> list[int]:
        """The walk's accepted nodes, root first (all int64 arrays, contiguous, length n)."""
        accepted = np.empty(parents.shape[0], np.int64)
        count = self._lib.walk(parents.ctypes.data, tokens.ctypes.data, draws.ctypes.data, parents.shape[0],
                               accepted.ctypes.data)
        return accepted[:count].tolist()


@functools.cache  # one compile (or cache lookup) and one dlopen per process
def load() -> Native | None:
    """The C backend, or None where it cannot be built (no compiler, no writable cache) or
    SPECDIFF_NO_NATIVE is set: the callers then take their Python paths."""
    lib = _build()
    return None if lib is None else Native(lib)
