"""The token loop over llama-cpp-python's streamed completions, shared by the llama.cpp LLM
and VLM back ends.

`Llama.create_completion(..., stream=True)` and `create_chat_completion(..., stream=True)`
return generators: each `next()` evaluates the token sampled last (one decode step) and samples
the next one, so the loop decides how much work llama.cpp does after a cancel. What each back
end does before the loop (the LLM's prompt cache, sessions and abortable prompt evaluation; the
VLM's image embedding through the mmproj chat handler) stays in the back end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any


def chunk_text(chunk: Mapping[str, Any]) -> str:
    """The text of one streamed chunk: create_completion's `text`, or create_chat_completion's
    delta `content` ("" for the chat stream's role-only first chunk and its closing chunk)."""
    choice = chunk["choices"][0]
    if "text" in choice:
        return choice["text"] or ""
    return choice["delta"].get("content") or ""


class TokenStream:
    """Iterate the text pieces of one streamed llama-cpp-python completion until it ends or
    `cancel` is set, and leave llama.cpp in a state the next call can build on.

    `cancel` is checked before asking for the next chunk (a cancel set while the caller handled
    the last piece costs no further decode step) and again when a chunk arrives (a cancel set by
    another thread during that decode step: its token is dropped). So once `cancel` is set, at
    most the decode step already running completes and no piece is yielded after it.

    An exception listed in `interrupted_by`, raised from inside llama.cpp's evaluation (the LLM
    back end's preempted prompt chunks), ends the stream as cancelled too. Any other exception
    propagates (the back end turns it into its own error).

    The stream is closed however the loop ends (finished, cancelled, interrupted, an error, or
    the caller closing this iterator; `with TokenStream(...)` or `close()` also covers a caller
    that stops iterating because its own code raised): closing the generator ends
    llama-cpp-python's sampling loop at once, and its `eval()` keeps `n_tokens` and the KV
    cache consistent after every step, so the tokens evaluated so far stay a valid prefix for
    the next completion.
    """

    def __init__(
        self,
        chunks: Iterator[Mapping[str, Any]],
        cancel: threading.Event,
        *,
        interrupted_by: tuple[type[BaseException], ...] = (),
        on_first_chunk: Callable[[], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._cancel = cancel
        self._interrupted_by = interrupted_by
        # Called when the first chunk arrives: the prompt is then evaluated and the first
        # token sampled (the LLM back end stops counting prompt tokens there).
        self._on_first_chunk = on_first_chunk
        self.cancelled = False
        self.chunks = 0  # chunks received (about one per sampled token, plus the chat role one)
        self.pieces = 0  # non-empty pieces yielded
        self.finish_reason: str | None = None  # "stop" or "length" once llama.cpp ended it

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                if self._cancel.is_set():
                    self.cancelled = True
                    return
                try:
                    chunk = next(self._chunks)
                except StopIteration:
                    return
                except self._interrupted_by:
                    self.cancelled = True
                    return
                self.chunks += 1
                if self.chunks == 1 and self._on_first_chunk is not None:
                    self._on_first_chunk()
                if self._cancel.is_set():
                    self.cancelled = True
                    return
                self.finish_reason = chunk["choices"][0].get("finish_reason") or None
                piece = chunk_text(chunk)
                if piece:
                    self.pieces += 1
                    yield piece
        finally:
            self.close()

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End llama-cpp-python's generator (idempotent; a no-op once it has finished)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
