"""A streamer for ``generate(streamer=...)``: prints the first row's new text as it is generated,
decoding bytes incrementally (a UTF-8 character split across tokens is printed once complete), and
records when the prompt went in and each token came out."""
from __future__ import annotations

import codecs
import sys
import time


class TextStreamer:
    def __init__(self, tokenizer, stream=None, enabled: bool = True):
        self.tokenizer, self.stream, self.enabled = tokenizer, stream or sys.stdout, enabled
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []
        self.shown = 0
        self.times: list[float] = []

    def put(self, tokens) -> None:
        """tokens (b, P): the prompt (first call), then (b, 1) per step."""
        self.times.append(time.perf_counter())
        if len(self.times) == 1 or not self.enabled:
            return
        self.ids.append(int(tokens[0, -1]))
        self._write(self._new_text())

    def end(self) -> None:
        if self.enabled:
            self._write(self.decoder.decode(b"", final=True) if self._bytewise else self._new_text(final=True))

    @property
    def _bytewise(self) -> bool:
        return self.tokenizer.vocab_size <= 256

    def _new_text(self, final: bool = False) -> str:
        if self._bytewise:
            return self.decoder.decode(self.tokenizer.token_bytes(self.ids[-1:]))
        # subword tokens: decode everything so far, hold back a trailing partial character
        text = self.tokenizer.token_bytes(self.ids).decode("utf-8", errors="replace")
        if text.endswith("\ufffd") and not final:
            return ""
        new, self.shown = text[self.shown:], len(text)
        return new

    def _write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()

    def rates(self, prompt_tokens: int, batch: int) -> tuple[float, float]:
        """(prompt tokens/s, generated tokens/s), counting every row of the batch."""
        if len(self.times) < 2:
            return 0.0, 0.0
        prefill = self.times[1] - self.times[0]
        decode = self.times[-1] - self.times[1]
        steps = len(self.times) - 2
        return prompt_tokens * batch / max(prefill, 1e-9), (steps * batch / decode) if steps else 0.0
