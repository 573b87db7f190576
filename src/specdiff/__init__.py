"""specdiff: lossless speculative decoding with diffusion drafters.

One decode loop (`decode.SpeculativeDecoder`), many proposers (`drafters`), one tree type
(`types.DraftTree`), one verifier (`verify.walk`). Public names are re-exported here, loaded on
first use: importing the package (as `specdiff --help` does) loads neither torch nor transformers.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("specdiff")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "DecodeConfig": "specdiff.config",
    "SamplingConfig": "specdiff.config",
    "SpecdiffError": "specdiff.errors",
    "DraftTree": "specdiff.types",
    "GenerationResult": "specdiff.types",
    "TargetOutput": "specdiff.types",
    "VerifyResult": "specdiff.types",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'specdiff' has no attribute {name!r}")
