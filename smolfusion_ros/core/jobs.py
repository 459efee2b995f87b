"""A chat job: one request on its way through the generation worker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

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
    scene_text: str = ""  # the scene description that went into the prompt
    knowledge_ids: tuple[str, ...] = ()  # knowledge chunks that went into the prompt


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
        # Monotonic time after which nobody waits for the answer (None = no deadline).
        self.deadline: float | None = (
            self.submitted_at + request.timeout_s if request.timeout_s > 0 else None
        )
        # Why the job was stopped when it was not its caller's cancel (deadline, shutdown): the
        # result then fails with this error instead of counting as cancelled by the caller.
        self.stop_reason = ""
        self._listeners = list(listeners or [])
        self._done = threading.Event()
        self._done_callbacks: list[Callable[[ChatJob], None]] = []
        self._lock = threading.Lock()
        self.result: ChatResult | None = None
        # Set by the engine for a visual turn before it enters the LLM queue: what the vision
        # model answered (or why it could not), and whether that answer is real.
        self.vision_text: str | None = None
        self.vision_used = False

    def cancel(self, reason: str = "") -> None:
        """Ask the worker to stop this answer; takes effect before the next token.

        With a reason (the deadline passed, the node is shutting down) the job ends with
        success=false and that error, not as cancelled; a caller's earlier cancel wins.
        """
        if reason and not self.cancel_event.is_set():
            self.stop_reason = reason
        self.cancel_event.set()

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def deadline_error(self) -> str:
        return (
            f"deadline passed: the caller's timeout_s={self.request.timeout_s:g} s ran out "
            "before the answer was done; the work was stopped"
        )

    def expire(self) -> None:
        """Stop the job because nobody waits for it any more."""
        self.cancel(self.deadline_error())

    def expire_if_due(self) -> bool:
        """Stop the job if its deadline has passed; True when it has (the worker checks this
        before it starts a job and between tokens)."""
        if not self.deadline_passed():
            return False
        self.expire()
        return True

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
        if self.stop_reason and not result.success:
            result = replace(result, error=self.stop_reason, cancelled=False)
        with self._lock:
            self.result = result
            self._done.set()
            callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception as exc:
                on_error(exc)
