"""User-facing errors: anything the caller got wrong (bad path, bad option, incompatible models).

The CLI turns a `SpecdiffError` into one line on stderr and exit status 2; every other exception
is a bug in specdiff and keeps its traceback.
"""


class SpecdiffError(Exception):
    """A problem with the user's input, reported as one clear line (exit status 2)."""
