"""Verifiers: pure functions from (tree, target logits, sampling settings) to a `VerifyResult`."""

from specdiff.verify.walk import verify_walk

__all__ = ["verify_walk"]
