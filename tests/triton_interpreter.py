"""Triton's interpreter, made cheaper for the suite without changing what it computes.

The interpreter patches `triton.language` before a kernel's programs run and restores it after.
It also patches the language again on every call of a `@triton.jit` device function inside a
kernel (each `_round`, each `tl.zeros`), walking the language's modules with `inspect` each
time, and never restores those inner patches. A second patch of the same function's modules
finds them patched already, so only the first call per function changes anything; the rest cost
about a third of an interpreted forward. `patch_device_calls_once` skips the repeats, and does
nothing where the interpreter's code is not the shape it expects."""

from __future__ import annotations

import inspect


def patch_device_calls_once() -> bool:
    """Skip the language patch on a device function's second and later calls. True if applied."""
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
