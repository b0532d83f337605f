"""Token ids -> text deltas for streaming, with stop strings.

Decoding tokens one at a time is wrong twice over: sentencepiece drops the space of a word's
first piece when it starts a decode call, and byte-fallback tokens (`<0xE4>`) only make a
character once all its bytes are there. `IncrementalDetokenizer` decodes a small window that
starts at a token boundary already turned into text and emits only what the new tokens added,
holding back while the text ends in an incomplete character. `TextStream` adds stop strings:
text that could be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

from collections.abc import Sequence

_INCOMPLETE = "\ufffd"  # what decoders produce for an unfinished UTF-8 sequence


class IncrementalDetokenizer:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start: a token boundary whose text is already out
        self._read = 0  # tokens before this are in the emitted text

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith(_INCOMPLETE):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character becomes U+FFFD, as decode would)."""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):]


class TextStream:
    """Deltas of an answer: leading whitespace dropped, cut before the first stop string."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop = tuple(s for s in stop if s)
        self._text = ""  # all text decoded so far (after the leading-whitespace strip)
        self._emitted = 0  # characters of _text already handed out
        self.stopped = False

    @property
    def text(self) -> str:
        """The text handed out so far."""
        return self._text[: self._emitted]

    def push(self, token_id: int) -> str:
        """Feed one generated token; return the new safe text. Sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        return self._add(self.detokenizer.push(token_id), final=False)

    def finish(self) -> str:
        """End of generation: release held-back text (unless a stop string already cut it)."""
        if self.stopped:
            return ""
        return self._add(self.detokenizer.flush(), final=True)

    def _add(self, piece: str, final: bool) -> str:
        if not self._text:
            piece = piece.lstrip()
        self._text += piece
        cut = min((i for s in self.stop if (i := self._text.find(s, self._emitted)) >= 0), default=-1)
        if cut >= 0:
            # Nothing before _emitted can start a stop string (it would have been held back).
            self.stopped = True
            return self._release(cut)
        if final:
            return self._release(len(self._text))
        return self._release(len(self._text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self._text) - self._emitted), hold, -1):
                if self._text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def _release(self, end: int) -> str:
        end = max(end, self._emitted)
        out = self._text[self._emitted:end]
        self._emitted = end
        return out
