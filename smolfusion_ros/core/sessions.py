"""Conversation sessions: persona, recent turns (the prompt window) and a running summary.

Two implementations share the SessionStore protocol: InMemorySessionStore here, and
memory.session_store.PersistentSessionStore on SQLite. Turns older than the window are
folded into the summary by the chat engine in the background, so long conversations keep
their context within the model's context size.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

# TurnRecord lives in a leaf module so memory/ can build turns without importing core/;
# re-exported here because core/ code and callers import it from this module.
from smolfusion_ros.turns import TurnRecord


class SessionStore(Protocol):
    window_turns: int

    def persona_of(self, session_id: str) -> str: ...

    def history(self, session_id: str, max_turns: int = 0) -> list[TurnRecord]:
        """The newest turns (at most `max_turns`, 0 = the window), oldest first."""

    def append(self, session_id: str, persona: str, *turns: TurnRecord) -> None: ...

    def summary(self, session_id: str) -> tuple[str, int]:
        """(summary text, id of the last turn it covers); ("", 0) when there is none."""

    def turns_to_fold(self, session_id: str, keep: int = 0) -> list[TurnRecord]:
        """Turns the summary does not cover yet, except the newest `keep` (0 = the window),
        oldest first."""

    def set_summary(self, session_id: str, text: str, up_to_turn_id: int) -> None: ...

    def clear(self, session_id: str) -> bool: ...


@dataclass
class _Session:
    persona: str
    turns: deque
    summary: str = ""
    summary_up_to: int = 0
    last_active: float = field(default_factory=time.time)


class InMemorySessionStore:
    """Thread-safe, bounded in sessions (least recently used evicted) and turns per session."""

    def __init__(
        self, max_sessions: int = 256, max_turns: int = 64, window_turns: int = 12
    ) -> None:
        self._max_sessions = max_sessions
        self._max_turns = max(max_turns, window_turns)
        self.window_turns = self._window = window_turns
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _touch(self, session_id: str, persona: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = _Session(persona, deque(maxlen=self._max_turns))
            self._sessions[session_id] = session
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        elif persona:
            session.persona = persona
        self._sessions.move_to_end(session_id)
        session.last_active = time.time()
        return session

    def persona_of(self, session_id: str) -> str:
        with self._lock:
            session = self._sessions.get(session_id)
            return session.persona if session else ""

    def history(self, session_id: str, max_turns: int = 0) -> list[TurnRecord]:
        with self._lock:
            session = self._sessions.get(session_id)
            return list(session.turns)[-(max_turns or self._window) :] if session else []

    def append(self, session_id: str, persona: str, *turns: TurnRecord) -> None:
        with self._lock:
            session = self._touch(session_id, persona)
            session.turns.extend(
                dataclasses.replace(turn, turn_id=next(self._ids)) for turn in turns
            )

    def summary(self, session_id: str) -> tuple[str, int]:
        with self._lock:
            session = self._sessions.get(session_id)
            return (session.summary, session.summary_up_to) if session else ("", 0)

    def turns_to_fold(self, session_id: str, keep: int = 0) -> list[TurnRecord]:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return []
            unsummarised = [t for t in session.turns if t.turn_id > session.summary_up_to]
            return unsummarised[: max(0, len(unsummarised) - (keep or self._window))]

    def set_summary(self, session_id: str, text: str, up_to_turn_id: int) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                session.summary, session.summary_up_to = text, up_to_turn_id

    def clear(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def session_ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)


@dataclass(frozen=True)
class WindowPlan:
    """Which turns a prompt carries, and how many of the oldest are due for the summary."""

    shown: list[TurnRecord]
    fold: int  # the oldest `fold` unsummarised turns should be folded into the summary now
    hidden: int = 0  # unsummarised turns older than `shown` (folding lagged behind)


def plan_window(
    unsummarised: list[TurnRecord], window: int, block: int, summaries: bool
) -> WindowPlan:
    """Slide the prompt's history window in blocks, so its start (the prompt's prefix after
    the system message) changes once per `block` turns instead of on every turn.

    `unsummarised`: the session's turns that the summary does not cover, oldest first.
    With summaries, the prompt carries all of them; once more than `window` are waiting,
    the oldest `block` are due for folding, and when the summary lands they leave the
    prompt together with the summary's change: one prefix change per block. If folding
    lags (requests kept the engine busy), the window still slides, in whole blocks, once
    more than `window + block` turns wait. Without summaries the window slides in blocks
    of `block` and keeps between `window - block + 1` and `window` turns.
    """
    block = max(1, min(block, window))
    count = len(unsummarised)
    limit = window + block if summaries else window
    hidden = 0
    if count > limit:
        hidden = min(count, math.ceil((count - window) / block) * block)
    fold = 0
    if summaries and count > window:
        fold = max(hidden, block)
    return WindowPlan(list(unsummarised[hidden:]), fold, hidden)
