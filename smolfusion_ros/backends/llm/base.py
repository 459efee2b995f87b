"""The LLM back-end protocol: load once, then stream a chat answer token by token."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypedDict


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    seed: int = -1  # -1: random
    # Background work (summaries, speculative prefill): evaluate the prompt in small steps and
    # check `cancel` between them, so a waiting person is delayed by about one decode step,
    # not by a whole prompt evaluation.
    preemptible: bool = False


class Interrupt(threading.Event):
    """A cancel event that also runs registered hooks the moment it is set.

    A back end that is inside one long C call (llama.cpp evaluating a chunk of a prompt)
    cannot poll an Event; it registers a hook that stops the call from the setting thread
    (llama.cpp's abort callback). Hooks must be quick and must not block: they run under a
    lock, so that none runs after `hooked()` has returned.
    """

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[Callable[[], None]] = []
        self._hooks_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._hooks_lock:
            for hook in self._hooks:
                hook()

    @contextmanager
    def hooked(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run `hook` when the event is set while the block runs (at once if it is set)."""
        with self._hooks_lock:
            self._hooks.append(hook)
            if self.is_set():
                hook()
        try:
            yield
        finally:
            with self._hooks_lock:
                self._hooks.remove(hook)


class LLMBackendError(RuntimeError):
    """A back end could not load or run; the message is meant for the operator."""


class LLMBackend(Protocol):
    """What the core needs from a language model.

    Implementations are used from one worker thread at a time (the core serialises
    generation), so they need not be thread-safe. `stream_chat` must check `cancel`
    between tokens and stop promptly when it is set.
    """

    name: str

    def load(self) -> None:
        """Load weights; may take seconds. Raises LLMBackendError with a clear message."""

    @property
    def context_size(self) -> int:
        """Tokens the prompt and the answer must fit in together."""

    @property
    def model_name(self) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(
        self,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        cancel: threading.Event,
    ) -> Iterator[str]:
        """Yield the answer as text deltas (one per token) until done or cancelled."""

    def close(self) -> None: ...


class SessionAwareBackend(Protocol):
    """Optional back-end hooks for keeping each conversation's prompt state (KV cache).

    The core calls `use_session` before every generation with the conversation it belongs
    to ("" for work outside any conversation, such as a summary), `prefill` to evaluate a
    prompt without answering, and reads `prompt_tokens_evaluated` after a generation. A back
    end without these (a remote server) is used as is: the core checks with hasattr.
    """

    prompt_tokens_evaluated: int

    def use_session(self, session_id: str) -> None:
        """Make `session_id`'s saved state current (saving the current one first)."""

    def prefill(
        self, messages: list[ChatMessage], settings: GenerationSettings, cancel: threading.Event
    ) -> int:
        """Evaluate the prompt `messages` would get, answer nothing; returns tokens evaluated."""

    # Optional (checked with hasattr): a session's state built under another name first.
    # The chat engine evaluates a session's next prompt prefix (after its summary changed)
    # under a side name while the session's current state keeps serving its questions, then
    # hands that state over in one step.
    keeps_sessions: bool  # True when saved states survive use_session (a memory budget > 0)

    def move_session(self, source: str, target: str) -> bool:
        """`source`'s state (active or saved) becomes `target`'s; `target`'s own is dropped.
        False (nothing changed) when `source` has no state."""
