"""specdiff: lossless speculative decoding with diffusion drafters.

One decode loop (`decode.SpeculativeDecoder`), many proposers (`drafters`), one tree type
(`types.DraftTree`), one verifier (`verify.walk`). Public names are re-exported here.
"""

from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.errors import SpecdiffError
from specdiff.types import DraftTree, GenerationResult, TargetOutput, VerifyResult

__all__ = [
    "DecodeConfig",
    "DraftTree",
    "GenerationResult",
    "SamplingConfig",
    "SpecdiffError",
    "TargetOutput",
    "VerifyResult",
]
