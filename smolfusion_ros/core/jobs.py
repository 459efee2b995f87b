"""A chat job: one request on its way through the generation worker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from smolfusion_ros.core.requests import ChatRequest


@dataclass(frozen=True)
class ChatResult:
    success: bool
    error: str = ""
    reply: str = ""
    source: str = "llm"
    request_id: str = ""
    session_id: str = ""
    persona: str = ""
    scene_used: bool = False
    cancelled: bool = False
    ttft_s: float = 0.0
    latency_s: float = 0.0
    tokens: int = 0


# (job, delta text, answer so far, token count)
TokenListener = Callable[["ChatJob", str, str, int], None]


class ChatJob:
    """Created by the engine; the caller waits on it, listens to its tokens or cancels it."""

    def __init__(self, request: ChatRequest, listeners: list[TokenListener] | None = None) -> None:
        self.request = request
        self.request_id = uuid.uuid4().hex[:12]
        self.submitted_at = time.monotonic()
        self.submitted_wall = time.time()
        self.cancel_event = threading.Event()
        self._listeners = list(listeners or [])
        self._done = threading.Event()
        self._done_callbacks: list[Callable[[ChatJob], None]] = []
        self._lock = threading.Lock()
        self.result: ChatResult | None = None

    def cancel(self) -> None:
        """Ask the worker to stop this answer; takes effect before the next token."""
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> ChatResult | None:
        self._done.wait(timeout)
        return self.result

    def add_done_callback(self, callback: Callable[[ChatJob], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._done_callbacks.append(callback)
                return
        callback(self)

    # Called by the engine's worker thread only.
    def emit(self, delta: str, partial: str, tokens: int, on_error: Callable[[Exception], None]):
        for listener in self._listeners:
            try:
                listener(self, delta, partial, tokens)
            except Exception as exc:  # a broken listener must not kill generation
                on_error(exc)

    def finish(self, result: ChatResult, on_error: Callable[[Exception], None]) -> None:
        with self._lock:
            self.result = result
            self._done.set()
            callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception as exc:
                on_error(exc)
