"""Triton's interpreter, made cheaper for the suite without changing what it computes.

The interpreter patches `triton.language` before a kernel's programs run and restores it after.
It also patches the language again on every call of a `@triton.jit` device function inside a
kernel (each `_round`, each `tl.zeros`), walking the language's modules with `inspect` each
time, and never restores those inner patches. A second patch of the same function's modules
finds them patched already, so only the first call per function changes anything; the rest cost
about a third of an interpreted forward. `patch_device_calls_once` skips the repeats, and does
nothing where the interpreter's code is not the shape it expects.

It also hands `tl.sort` of integer keys to numpy: interpreted, Triton's bitonic network is a few
hundred ops a sort, each run in Python (the device search's beams sort once a depth), and integers
sort to one order whatever the algorithm. Floats keep the network (0.0 and -0.0 tie, and numpy
orders NaN its own way)."""

from __future__ import annotations

import inspect


def patch_device_calls_once() -> bool:
    """Skip the language patch on a device function's second and later calls, and sort integer
    keys by numpy (the module's docstring says why). True if applied."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    cls = getattr(interpreter, "InterpretedFunction", None)
    call = getattr(cls, "__call__", None)
    if call is None:
        return False
    if getattr(call, "_patched_once", False):
        return True
    try:
        source = inspect.getsource(call)
    except (OSError, TypeError):
        return False
    if "_patch_lang(self.fn)" not in source or not hasattr(cls, "rewrite"):
        return False  # another interpreter: leave it as it is
    seen: set = set()

    def __call__(self, *args, **kwargs):
        if _is_sort(self.fn) and (fast := _integer_sort(*args, **kwargs)) is not None:
            return fast
        if self.fn not in seen:  # the first call patches the function's modules, as before
            seen.add(self.fn)
            return call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e

    __call__._patched_once = True
    cls.__call__ = __call__
    return True


def _is_sort(fn) -> bool:
    return getattr(fn, "__name__", "") == "sort_impl" and getattr(fn, "__module__", "") == "triton.language.standard"


def _integer_sort(x, k=None, dim=None, descending=0):
    """`sort_impl(x, dim=dim, descending=descending)` of an integer tensor along its last axis,
    by numpy; None where that is not the call (a top-k, another axis, another dtype)."""
    import numpy as np
    from triton import language as tl
    from triton.runtime import interpreter

    unwrap = tl.core._unwrap_if_constexpr
    k, dim, descending = unwrap(k), unwrap(dim), unwrap(descending)
    handle = getattr(x, "handle", None)
    data = getattr(handle, "data", None)
    if k is not None or not isinstance(data, np.ndarray) or data.ndim == 0 or dim not in (None, data.ndim - 1):
        return None
    if not np.issubdtype(data.dtype, np.integer):
        return None
    out = np.sort(data, axis=-1)
    if descending:
        out = np.ascontiguousarray(np.flip(out, axis=-1))
    return tl.core.tensor(interpreter.TensorHandle(out, handle.dtype), x.type)
