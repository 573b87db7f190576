"""Text as a decode streams it: incremental detokenization and stop strings.

`SpeculativeDecoder.stream` yields token ids per round. `TextStreamer` turns them into text
deltas that never end inside a character: a byte-level tokenizer may split one UTF-8 character
over several tokens, and decoding a prefix of them gives U+FFFD, so text is held back until the
bytes complete. Decoding runs over a short window (from the last emitted boundary), not the
whole output, and deltas are differences of decodes of the same window, so a tokenizer that
merges a token with its neighbour (a leading space, a byte fallback) is handled.

`stream_text` adds stop strings: the decode ends at the exact token that completes the first stop
string, and the text ends before it (the OpenAI API's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Sequence

from specdiff.types import RoundChunk

REPLACEMENT = "\ufffd"


class TextStreamer:
    """Token ids in, text deltas out; the concatenated deltas are the decode of all ids."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: ids before it are settled text
        self.read = 0  # ids up to here have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def push(self, ids: Sequence[int]) -> str:
        """Add ids -> the text they complete ("" while a character is still partial)."""
        self.ids.extend(int(i) for i in ids)
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith(REPLACEMENT):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before) :]

    def flush(self) -> str:
        """What is left at the end (a partial character included, as U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return now[len(before) :]

    @property
    def text(self) -> str:
        return self._decode(self.ids)


@dataclass(frozen=True)
class TextChunk:
    """A piece of a streamed completion: its text delta, the tokens it came from (cut at a stop
    string), the round's stats, and on the last chunk why the completion ended ("stop": a stop
    string, "eos", "length")."""

    text: str
    tokens: list[int]
    round: RoundChunk
    finish_reason: str | None = None


def stream_text(decoder, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()) -> Iterator[TextChunk]:
    """`decoder.stream` as text, ended at the first stop string: the tokens end with the one that
    completes it, the text just before it."""
    stops = [s for s in stop if s]
    hold = max((len(s) for s in stops), default=1) - 1  # text that may still become a stop string
    streamer = TextStreamer(tokenizer)
    pending = ""  # decoded, not yet sent: could be the start of a stop string
    rounds = decoder.stream(prompt_ids)
    try:
        for chunk in rounds:
            tokens, text, finish = chunk.tokens, "", chunk.stop_reason
            for j, tok in enumerate(chunk.tokens):
                text += streamer.push([tok])
                hit = first_stop(pending + text, stops)
                if hit is not None:  # this token completes a stop string: end here
                    tokens, finish = chunk.tokens[: j + 1], "stop"
                    yield TextChunk((pending + text)[:hit], tokens, replace(chunk, tokens=tokens), finish)
                    return
            if finish is not None:
                text += streamer.flush()
                yield TextChunk(pending + text, tokens, chunk, finish)
                return
            pending += text
            cut = max(0, len(pending) - hold) if stops else len(pending)
            yield TextChunk(pending[:cut], tokens, chunk)
            pending = pending[cut:]
    finally:
        rounds.close()  # a consumer that stops early ends the decode at this round


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None
