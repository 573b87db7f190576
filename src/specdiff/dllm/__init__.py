"""Masked-diffusion LLM decoding (LLaDA semi-AR blocks, Fast-dLLM thresholds) and Spiffy, its
lossless speculative decoder: drafts of future block states verified in one wide forward."""

from specdiff.dllm.adapters import DLLMBundle, load_dllm
from specdiff.dllm.calibration import calibrate, rewind
from specdiff.dllm.config import DLLMConfig
from specdiff.dllm.decoding import DLLMResult, DLLMState, generate_baseline, transition
from specdiff.dllm.model import MaskedDiffusionModel, base_visibility, tiny_mdm
from specdiff.dllm.spiffy import DraftGraph, default_graph, generate_spiffy

__all__ = [
    "DLLMBundle", "DLLMConfig", "DLLMResult", "DLLMState", "DraftGraph", "MaskedDiffusionModel", "base_visibility",
    "calibrate", "default_graph", "generate_baseline", "generate_spiffy", "load_dllm", "rewind", "tiny_mdm", "transition",
]
