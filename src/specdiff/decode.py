"""The decode loop: one loop for every method.

    prefill -> [ propose -> target forward over the tree -> verify -> commit -> update ]*

Every round emits at least one token (the bonus), so AR is the same loop with a root-only tree.
The prompt's last token is the first round's root: prefill commits the tokens before it, and every
new token comes out of a verification round (so AR's tau is exactly 1). With
`DecodeConfig.overlap`, AR runs the same forwards and draws overlapped (each step launched before
the last one's draw is read, since its tree is that draw alone); a drafted round queues the next
draft from the path the device finds before the round is read (where the method and drafter can),
and is handed out once the next round is queued.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Generator, Iterator, Sequence

import numpy as np
import torch

from specdiff.config import DecodeConfig, SamplingConfig
from specdiff.methods.base import DecodeState, Proposer
from specdiff.errors import SpecdiffError
from specdiff.native import Native
from specdiff.sampling import NoiseCache, draw_tree
from specdiff.target.hf_causal import HFTarget
from specdiff.types import DraftTree, GenerationResult, RoundChunk, TargetOutput, VerifyResult
from specdiff.verify import verify_walk
from specdiff.verify.walk import device_depth, device_path, walk_read, walk_row

# (tree, logits [N, V], root position, sampling, the decoder's noise cache) -> VerifyResult; pure
Verifier = Callable[[DraftTree, torch.Tensor, int, SamplingConfig, NoiseCache], VerifyResult]


class SpeculativeDecoder:
    def __init__(self, target: HFTarget, proposer: Proposer, cfg: DecodeConfig, eos_ids: Sequence[int] = (),
                 verifier: Verifier | None = None, native: Native | None = None):
        """verifier: None for `verify_walk`, with `native` its C walk (None: the Python walk)."""
        cfg.validate()
        self._own_verifier = verifier is None
        if verifier is None:
            verifier = functools.partial(verify_walk, native=native)
        self.target, self.proposer, self.cfg, self.verifier, self.native = target, proposer, cfg, verifier, native
        self.noise = NoiseCache()  # T>0: the sampling noise of the positions this decoder draws at
        self.eos_ids = set(eos_ids) if cfg.stop_at_eos else set()
        self._readback_row: _Readback | None = None
        target.set_taps(proposer.tap_layers)

    def _readback(self) -> "_Readback":
        """The decoder's pinned read row, made once (a pinned allocation per decode costs host time)."""
        if self._readback_row is None:
            self._readback_row = _Readback(self.target.device)
        return self._readback_row

    @property
    def _overlaps(self) -> bool:
        """AR with the loop's own draw (a verifier passed in, e.g. a test's, keeps its rounds)."""
        return self.cfg.overlap and getattr(self.proposer, "chains_draws", False) and self._own_verifier

    def _sync(self) -> None:
        if self.target.device.type == "cuda":
            torch.cuda.synchronize(self.target.device)

    def check_prompt(self, n_prompt: int) -> None:
        limit = self.target.max_positions
        if n_prompt == 0:
            raise SpecdiffError("the prompt is empty")
        if n_prompt + self.cfg.max_new_tokens > limit:
            raise SpecdiffError(
                f"prompt of {n_prompt} tokens plus --max-new-tokens {self.cfg.max_new_tokens} "
                f"exceeds the target's context of {limit} tokens"
            )
        window, slots = self.target.window, self._max_len(n_prompt)
        if window is not None and slots > window:
            # past its window such a model attends to fewer keys than a full-attention forward,
            # which is what the engines compute
            raise SpecdiffError(
                f"prompt of {n_prompt} tokens, --max-new-tokens {self.cfg.max_new_tokens} and one draft tree need "
                f"{slots} positions, past the target's sliding window of {window}, which specdiff does not model"
            )

    def _max_len(self, n_prompt: int) -> int:
        """Cache slots a decode needs: the prompt, the output and one tree past the committed end."""
        return n_prompt + self.cfg.max_new_tokens + self.proposer.max_nodes

    def prepare(self, max_prompt_len: int) -> None:
        """Allocate the caches and capture the CUDA graphs (graph engine) that prompts of up to
        `max_prompt_len` tokens will use, so that a timed decode never pays for either."""
        max_len = self._max_len(max_prompt_len)
        if hasattr(self.target, "prepare"):
            self.target.prepare(max_len, self.proposer.max_nodes)
        for d in self.proposer.drafters:
            if hasattr(d, "prepare"):
                d.prepare(max_len)

    def stream(self, prompt_ids: Sequence[int]) -> Iterator[RoundChunk]:
        """Decode after `prompt_ids`, yielding each round's tokens as soon as they are committed.
        Closing the iterator ends the decode at that round boundary (a client that left)."""
        yield from self._rounds(prompt_ids)

    def generate(self, prompt_ids: Sequence[int],
                 on_tokens: Callable[[list[int]], None] | None = None) -> GenerationResult:
        """Decode after `prompt_ids` to the end; `on_tokens` (optional) sees each round's new
        tokens as they are committed (progress)."""
        chunks: list[RoundChunk] = []
        rounds = self._rounds(prompt_ids)
        while True:
            try:
                chunk = next(rounds)
            except StopIteration as done:
                prefill_s, decode_s = done.value
                break
            chunks.append(chunk)
            if on_tokens is not None:
                on_tokens(chunk.tokens)
        # the loop's own clock: it ends after the device has finished, not at the last round's yield
        return dataclasses.replace(GenerationResult.from_rounds(chunks), prefill_s=prefill_s, decode_s=decode_s)

    @torch.inference_mode()
    def _rounds(self, prompt_ids: Sequence[int]) -> Generator[RoundChunk, None, tuple[float, float]]:
        """The loop: yields each round, returns (prefill seconds, decode seconds)."""
        cfg, target, proposer = self.cfg, self.target, self.proposer
        prompt = [int(t) for t in prompt_ids]
        self.check_prompt(len(prompt))
        max_new = cfg.max_new_tokens
        max_len = self._max_len(len(prompt))
        target.reset(max_len)

        # 1. prefill: commit everything before the first root
        self._sync()
        t0 = time.perf_counter()
        if len(prompt) > 1:
            pre = target.prefill(prompt[:-1])
        else:
            empty = torch.empty(0, len(proposer.tap_layers) * target.hidden_size, device=target.device)
            pre = TargetOutput(logits=torch.empty(0, target.vocab_size, device=target.device), features=empty)
        state = DecodeState(tokens=list(prompt), max_depth=max_new - 1)
        proposer.begin(state, pre, max_len)
        self._sync()
        t1 = time.perf_counter()

        if self._overlaps:
            yield from self._overlapped_steps(state, t1, t1 - t0)
            self._sync()  # a step launched past an end-of-text is computed, then dropped
            return t1 - t0, time.perf_counter() - t1

        emitted_total, round_index, t_round = 0, 0, t1

        def launch(accepted: Sequence[int] | None) -> tuple[DraftTree, TargetOutput]:
            """Queues a round's draft and target forward; the last round's accepted path is
            committed once the drafter's work is queued, so that the commit's host work does not
            hold the device idle."""
            state.max_depth = max_new - emitted_total - 1  # a round emits at most max_depth + 1 tokens
            tree = proposer.propose(state)  # 2. propose
            if accepted is not None:
                target.commit(accepted)  # 5. (of the last round) keep the accepted path's KV
            return tree, target.forward(tree)  # 3. one target forward over the whole tree

        tree, out = launch(None)
        drafts_ahead = cfg.overlap and self._own_verifier and getattr(proposer, "drafts_ahead", False)
        readback = self._readback() if drafts_ahead else None
        while True:
            if drafts_ahead and self._ahead_fits(tree, out, max_new - emitted_total):
                result = self._verify_drafting_ahead(tree, out, state.start, readback)  # 4. and 6.
            else:
                result = self.verifier(tree, out.logits, state.start, cfg.sampling, self.noise)  # 4. verify
                proposer.update(result, out)  # 6. drafter learns what was committed
            # the loop itself ends the output at max_new_tokens and at the first end-of-text,
            # whatever a proposer drafted past them
            emitted = result.tokens[: max_new - emitted_total]
            stop = None
            for j, tok in enumerate(emitted):
                if tok in self.eos_ids:
                    emitted, stop = emitted[: j + 1], "eos"
                    break
            emitted_total += len(emitted)
            state.tokens.extend(emitted)
            if stop is None and emitted_total >= max_new:
                stop = "length"
            # overlap: the round is handed out once the next one is queued, so the consumer's
            # work runs while the device drafts and verifies
            queued = launch(result.accepted) if stop is None and cfg.overlap else None
            now = time.perf_counter()
            yield RoundChunk(tokens=emitted, round=round_index, tree_nodes=tree.num_nodes,
                             candidate_rows=tree.candidate_rows or tree.num_nodes, round_ms=1000 * (now - t_round),
                             stop_reason=stop, prefill_ms=1000 * (t1 - t0) if round_index == 0 else 0.0)
            t_round = now
            round_index += 1
            if stop is not None:
                target.commit(result.accepted)
                break
            tree, out = queued or launch(result.accepted)
        self._sync()
        return t1 - t0, time.perf_counter() - t1

    def _ahead_fits(self, tree: DraftTree, out: TargetOutput, left: int) -> bool:
        """Whether the next round's draft can be queued before this round is read: the forward
        gave the tree's ancestors and features on the device, and every outcome of this round
        (at most its depth + 1 tokens) leaves the next round a full block to draft."""
        depth = device_depth(tree)
        return (depth is not None and out.ancestors is not None and out.features is not None
                and left - (depth + 1) - 1 >= self.proposer.num_slots)

    def _verify_drafting_ahead(self, tree: DraftTree, out: TargetOutput, start: int,
                               readback: "_Readback") -> VerifyResult:
        """`verify_walk`, with the next round's draft queued between the draws and their read: the
        device finds the accepted path itself (`device_path`) and the drafter takes it in, so the
        read waits for the draws alone and the host's work after it runs while the device drafts.
        The host's walk decides the tokens; the device's path must agree with it."""
        draws = draw_tree(out.logits, start + 1, tree.depths, self.cfg.sampling, self.noise, tree.depth_bound)
        path = device_path(tree, draws, out.ancestors)
        readback.send(walk_row(tree, draws, path.count))
        self.proposer.draft_ahead(path, out)
        row = readback.receive()
        result = walk_read(tree, row[:-1].copy(), self.native)
        if len(result.accepted) != int(row[-1]):
            raise SpecdiffError(f"the device found a path of {int(row[-1])} nodes where the walk accepted "
                                f"{len(result.accepted)}: the queued draft would take the wrong context")
        self.proposer.took(result)
        return result

    def _overlapped_steps(self, state: DecodeState, t_round: float, prefill_s: float) -> Iterator[RoundChunk]:
        """AR (`DecodeConfig.overlap`): step k + 1's forward is launched on step k's draw, still on
        the device, before that draw is read; the read then waits for step k's draw alone, and the
        host's work of a step (the read, the stop checks, the yield, the next launch) runs while
        the device computes. The same forward and draw per token as `_rounds`, so the same tokens.
        A step past an end-of-text is launched before the end is known: computed, then dropped."""
        cfg, target, max_new = self.cfg, self.target, self.cfg.max_new_tokens
        readback = self._readback()
        parents, depths = torch.tensor([-1]), torch.tensor([0])  # a root-only tree's, on the host

        def launch(tree: DraftTree) -> torch.Tensor:  # -> [1] the root's next token, on the device
            start = target.length  # the root's position: every slot before it is committed
            out = target.forward(tree)
            drawn = draw_tree(out.logits, start + 1, tree.depths, cfg.sampling, self.noise)
            target.commit(_ROOT_ONLY)  # AR keeps its root whatever it draws
            return drawn

        pending = launch(DraftTree.chain(state.root, []))
        emitted_total, round_index = 0, 0
        while True:
            readback.send(pending)
            if emitted_total + 1 < max_new:  # the next step, on the draw not yet read
                pending = launch(DraftTree(pending, parents, depths, drafted=True))
            token = int(readback.receive()[0])
            emitted_total += 1
            state.tokens.append(token)
            stop = "eos" if token in self.eos_ids else "length" if emitted_total >= max_new else None
            now = time.perf_counter()
            yield RoundChunk(tokens=[token], round=round_index, tree_nodes=1, candidate_rows=1,
                             round_ms=1000 * (now - t_round), stop_reason=stop,
                             prefill_ms=1000 * prefill_s if round_index == 0 else 0.0)
            t_round = now
            round_index += 1
            if stop is not None:
                return


_ROOT_ONLY = (0,)


class _Readback:
    """A row of int64 from the device to the host without waiting for work queued after it: a
    non-blocking copy into pinned memory and an event, where `.item()` or `.cpu()` would wait for
    the whole stream (on a CPU: a plain read)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._grow(1)
        self.event = torch.cuda.Event() if self.cuda else None
        self.n = 0

    def _grow(self, size: int) -> None:
        self.host = torch.zeros(size, dtype=torch.long, pin_memory=self.cuda)
        self.host_np = self.host.numpy()  # a view made once: each .numpy() costs host time

    def send(self, row: torch.Tensor) -> None:
        self.n = row.shape[0]
        if self.n > self.host.shape[0]:
            self._grow(max(self.n, 2 * self.host.shape[0]))
        self.host[: self.n].copy_(row, non_blocking=self.cuda)
        if self.cuda:
            self.event.record()

    def receive(self) -> np.ndarray:
        """The row sent last, as a view of the pinned buffer (the next send overwrites it)."""
        if self.cuda:
            self.event.synchronize()
        return self.host_np[: self.n]

