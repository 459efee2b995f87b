"""The LLM back-end protocol: load once, then stream a chat answer token by token."""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
