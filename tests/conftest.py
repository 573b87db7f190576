"""Shared fixtures: tiny random targets (Qwen3, Llama), DFlash drafters, and oracle proposers."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run under its interpreter, on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from triton_interpreter import patch_device_calls_once

    patch_device_calls_once()

from specdiff import native
from specdiff.methods.base import DecodeState
from specdiff.models.tiny import tiny_drafter, tiny_target
from specdiff.methods.ddtree import build_ddtree
from specdiff.methods.dflash import build_chain
from specdiff.types import DraftProposal, DraftTree, TargetOutput, VerifyResult

from oracle_drafters import NextLogits

# under pytest-xdist (`-n auto`) the workers share the cores instead of each taking them all
torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(autouse=True)
def tree_inputs_by_reference(request, monkeypatch):
    """Under the interpreter, graph-engine decodes build a round's inputs with
    `tree_inputs_reference`: the kernel's row walks cost a chain's decode most of its time there
    (19 ms a row). The kernel is checked against the reference directly (test_kernels) and inside
    decodes marked `tree_inputs_kernel`; on a GPU every decode runs it."""
    if os.environ.get("TRITON_INTERPRET") == "1" and not request.node.get_closest_marker("tree_inputs_kernel"):
        from specdiff.kernels import tree_inputs_reference
        from specdiff.target import graphed

        monkeypatch.setattr(graphed, "tree_inputs", tree_inputs_reference)


@pytest.fixture(scope="session", params=["qwen3", "llama"])
def target_model(request):
    return tiny_target(request.param, seed=0)


@pytest.fixture(params=["native", "python"])
def tree_search(request, monkeypatch):
    """Run a tree test with the C best-first search and with the Python heap (as on a machine
    without a C compiler): the backend to pass (None for Python), also what `native.load()`
    gives a decoder the test builds."""
    if request.param == "python":
        monkeypatch.setattr(native, "load", lambda: None)
    elif native.load() is None:
        pytest.skip("no C compiler")
    return native.load()


@pytest.fixture(scope="session")
def qwen3_model():
    return tiny_target("qwen3", seed=0)


class OracleProposer:
    """A test drafter that often agrees with the target: its per-slot marginals come from the
    target's own greedy rollout (plain HF forwards, no cache), optionally perturbed with Gaussian
    noise so that some slots' argmax is wrong and the right token sits lower in the top-K.

    It exercises long accepted paths and acceptance through non-first branches with the real tree
    builders, which a random DFlash drafter never does."""

    tap_layers: tuple[int, ...] = ()
    drafters: tuple = ()

    def __init__(self, model, tree: str = "chain", budget: int = 32, slots: int = 7, noise: float = 0.0, seed: int = 0):
        self.model, self.tree, self.budget, self.slots, self.noise = model, tree, budget, slots, noise
        self.name = f"oracle-{tree}"
        self.native = native.load()  # the tree search a built decoder's proposer has
        self.max_nodes = 1 + (slots if tree == "chain" else budget)
        self.gen = torch.Generator().manual_seed(seed)
        self.next_logits = NextLogits(model)

    def begin(self, state, prefill, max_len):
        pass

    @torch.inference_mode()
    def propose(self, state: DecodeState) -> DraftTree:
        depth = min(self.slots, state.max_depth)
        if depth <= 0:
            return DraftTree.chain(state.root, [])
        ids = list(state.tokens)
        rows = []
        for _ in range(depth):
            logits = self.next_logits(ids)
            rows.append(logits)
            ids.append(int(logits.argmax()))
        logits = torch.stack(rows)
        if self.noise:
            logits = logits + self.noise * torch.randn(logits.shape, generator=self.gen)
        proposal = DraftProposal(logits, source="oracle")
        if self.tree == "chain":
            return build_chain(state.root, proposal, depth)
        return build_ddtree(state.root, proposal, self.budget, depth, self.native)

    def update(self, result: VerifyResult, out: TargetOutput) -> None:
        pass


@pytest.fixture
def make_drafter():
    return tiny_drafter
