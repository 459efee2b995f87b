"""The SessionStore the chat engine uses, on the SQLite memory: conversations survive restarts.

The file may be shared with a memory_node in another process (WAL allows it).
"""

from __future__ import annotations

from smolfusion_ros.memory.store import MemoryStore, StoredTurn
from smolfusion_ros.turns import TurnRecord


def _record(turn: StoredTurn) -> TurnRecord:
    return TurnRecord(turn.role, turn.text, turn.source, turn.stamp, turn.latency_s, turn.turn_id)


class PersistentSessionStore:
    def __init__(self, store: MemoryStore, window_turns: int = 12) -> None:
        self.store = store
        self.window_turns = self._window = window_turns

    def persona_of(self, session_id: str) -> str:
        return self.store.session_persona(session_id)

    def history(self, session_id: str, max_turns: int = 0) -> list[TurnRecord]:
        turns = self.store.history(session_id, max_turns=max_turns or self._window)
        return [_record(t) for t in turns]

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

    def summary(self, session_id: str) -> tuple[str, int]:
        return self.store.summary(session_id)

    def turns_to_fold(self, session_id: str, keep: int = 0) -> list[TurnRecord]:
        _text, up_to = self.store.summary(session_id)
        keep = keep or self._window
        if keep <= 0:
            return []
        turns = self.store.turns_before_window(session_id, up_to, keep)
        return [_record(t) for t in turns]

    def set_summary(self, session_id: str, text: str, up_to_turn_id: int) -> None:
        self.store.set_summary(session_id, text, up_to_turn_id)

    def clear(self, session_id: str) -> bool:
        return self.store.clear_session(session_id) > 0
