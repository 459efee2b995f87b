"""Conversation sessions held in memory: persona and a bounded window of recent turns."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TurnRecord:
    role: str  # "user" | "assistant"
    text: str
    source: str
    stamp: float
    latency_s: float = 0.0


@dataclass
class Session:
    session_id: str
    persona: str
    turns: deque = field(default_factory=deque)
    last_active: float = field(default_factory=time.time)


class SessionStore:
    """Thread-safe, bounded in both sessions (least recently used evicted) and turns per session."""

    def __init__(self, max_sessions: int = 256, max_turns: int = 64) -> None:
        self._max_sessions = max_sessions
        self._max_turns = max_turns
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def _touch(self, session_id: str, persona: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = Session(session_id, persona, deque(maxlen=self._max_turns))
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

    def history(self, session_id: str) -> list[TurnRecord]:
        with self._lock:
            session = self._sessions.get(session_id)
            return list(session.turns) if session else []

    def append(self, session_id: str, persona: str, *turns: TurnRecord) -> None:
        with self._lock:
            self._touch(session_id, persona).turns.extend(turns)

    def clear(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def session_ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)
