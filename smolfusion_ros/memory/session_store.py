"""A SessionStore backed by the SQLite memory: conversations survive restarts and crashes.

Drop-in for core.sessions.SessionStore (same methods), so the chat engine needs no change.
The file may be shared with a memory_node in another process (WAL allows it).
"""

from __future__ import annotations

from smolfusion_ros.core.sessions import TurnRecord
from smolfusion_ros.memory.store import MemoryStore


class PersistentSessionStore:
    def __init__(self, store: MemoryStore, max_turns: int = 64) -> None:
        self.store = store
        self._max_turns = max_turns

    def persona_of(self, session_id: str) -> str:
        return self.store.session_persona(session_id)

    def history(self, session_id: str) -> list[TurnRecord]:
        return [
            TurnRecord(t.role, t.text, t.source, t.stamp, t.latency_s)
            for t in self.store.history(session_id, max_turns=self._max_turns)
        ]

    def append(self, session_id: str, persona: str, *turns: TurnRecord) -> None:
        for turn in turns:
            self.store.append_turn(
                session_id,
                turn.role,
                turn.text,
                source=turn.source,
                stamp=turn.stamp,
                latency_s=turn.latency_s,
                persona=persona,
            )

    def clear(self, session_id: str) -> bool:
        return self.store.clear_session(session_id) > 0

    def session_ids(self) -> list[str]:
        return [s.session_id for s in self.store.list_sessions(limit=1_000_000)]
