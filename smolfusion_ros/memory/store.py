"""MemoryStore: sessions, turns and summaries in one SQLite file, safe against kill -9.

WAL journal and a commit per turn before `append_turn` returns: a turn that was acknowledged
is on disk, whatever happens to the process afterwards. One connection serialised by a lock
serves every thread of the process; other processes may open the same file (WAL allows
concurrent readers beside one writer, and writers wait on `busy_timeout`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from smolfusion_ros.ids import RequestRejected, validate_session_id
from smolfusion_ros.memory.sqlite import immediate_transaction, open_database

ROLES = ("user", "assistant", "system")
# 2: turns.append_id (exactly-once appends); version-1 files gain the column when opened.
SCHEMA_VERSION = 2
MAX_APPEND_ID_CHARS = 128


# AUTOINCREMENT: turn ids are never reused after a clear, so "turns after id N" (events,
# summaries) stays correct. turns_fts is sqlite-utils' external-content FTS5 layout, which
# Table.search() reads; the statements are run one by one (executescript would commit).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, persona TEXT, created FLOAT,"
    " last_active FLOAT, turn_count INTEGER)",
    "CREATE TABLE IF NOT EXISTS turns (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT,"
    " role TEXT, text TEXT, source TEXT, stamp FLOAT, latency_s FLOAT, persona TEXT,"
    " request_id TEXT, append_id TEXT)",
    "CREATE INDEX IF NOT EXISTS idx_turns_session_id_id ON turns (session_id, id)",
    "CREATE TABLE IF NOT EXISTS summaries (session_id TEXT PRIMARY KEY, text TEXT,"
    " up_to_turn_id INTEGER, updated FLOAT)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS turns_fts USING FTS5 (text, content=[turns])",
    "CREATE TRIGGER IF NOT EXISTS turns_ai AFTER INSERT ON turns BEGIN"
    " INSERT INTO turns_fts (rowid, text) VALUES (new.rowid, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS turns_ad AFTER DELETE ON turns BEGIN"
    " INSERT INTO turns_fts (turns_fts, rowid, text) VALUES('delete', old.rowid, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS turns_au AFTER UPDATE ON turns BEGIN"
    " INSERT INTO turns_fts (turns_fts, rowid, text) VALUES('delete', old.rowid, old.text);"
    " INSERT INTO turns_fts (rowid, text) VALUES (new.rowid, new.text); END",
)
# Run after the column exists (a version-1 file gets it by ALTER TABLE first). NULL, not '',
# marks "no id": a UNIQUE index allows any number of NULLs, so plain appends never collide.
_APPEND_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS idx_turns_append_id ON turns (append_id)"


class MemoryStoreError(RuntimeError):
    """The database cannot be opened or written; the message names the file and the cause."""


def _import_sqlite_utils():
    """sqlite-utils is imported when a store is opened, not when this module is: a robot
    without it gets one configuration error naming the pip package instead of a traceback
    from whichever node imported this module first."""
    try:
        import sqlite_utils
    except ImportError as exc:
        raise MemoryStoreError(
            f"the memory database needs the Python package sqlite-utils ({exc}): "
            "pip install sqlite-utils"
        ) from None
    return sqlite_utils


@dataclass(frozen=True)
class StoredTurn:
    turn_id: int
    session_id: str
    role: str
    text: str
    source: str
    stamp: float
    latency_s: float
    persona: str
    request_id: str
    append_id: str = ""


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    persona: str
    created: float
    last_active: float
    turn_count: int


def _turn(row: dict) -> StoredTurn:
    return StoredTurn(
        turn_id=row["id"],
        session_id=row["session_id"],
        role=row["role"],
        text=row["text"],
        source=row["source"],
        stamp=row["stamp"],
        latency_s=row["latency_s"],
        persona=row["persona"],
        request_id=row["request_id"],
        append_id=row.get("append_id") or "",
    )


class MemoryStore:
    def __init__(
        self, path: str | Path, *, max_turn_chars: int = 8000, synchronous: str = "FULL"
    ) -> None:
        self.path = Path(path).expanduser()
        self.max_turn_chars = max_turn_chars
        self._lock = threading.Lock()
        _import_sqlite_utils()  # a missing sqlite-utils: one error naming the pip package
        try:
            self.db = open_database(self.path, synchronous)
            self._create_schema()
        except (OSError, sqlite3.Error) as exc:
            raise MemoryStoreError(f"cannot open memory database {self.path}: {exc}") from None

    def _create_schema(self) -> None:
        # Under the write lock: fusion_node and memory_node may create a fresh file at once.
        with immediate_transaction(self.db):
            for statement in _SCHEMA:
                self.db.execute(statement)
            # Migration inside the same transaction: a second process opening a version-1
            # file at the same moment waits for the lock and then sees the column.
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(turns)").fetchall()}
            if "append_id" not in columns:
                self.db.execute("ALTER TABLE turns ADD COLUMN append_id TEXT")
            self.db.execute(_APPEND_ID_INDEX)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------------ writes

    def append_turn(
        self,
        session_id: str,
        role: str,
        text: str,
        *,
        source: str = "",
        stamp: float | None = None,
        latency_s: float = 0.0,
        persona: str = "",
        request_id: str = "",
        append_id: str = "",
    ) -> StoredTurn:
        """Store one turn and commit it before returning. Raises RequestRejected on bad input.

        `append_id` makes the append idempotent: a call with an id that is already stored
        writes nothing and returns the turn the first call stored (a client retrying after a
        lost reply, a timeout or a crash of this process gets the same turn_id back). The id
        is stored in the turn's own row, in the same transaction as the turn, so no crash can
        leave a turn without its id. Empty = no id (every call stores a new turn).
        """
        session_id = validate_session_id(session_id)
        if len(append_id) > MAX_APPEND_ID_CHARS:
            raise RequestRejected(
                f"append_id is {len(append_id)} characters long; the limit is {MAX_APPEND_ID_CHARS}"
            )
        if role not in ROLES:
            raise RequestRejected(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not text.strip():
            raise RequestRejected("turn text is empty")
        if len(text) > self.max_turn_chars:
            raise RequestRejected(
                f"turn text is {len(text)} characters long; the limit is {self.max_turn_chars}"
            )
        stamp = time.time() if stamp is None else stamp
        record = {
            "session_id": session_id,
            "role": role,
            "text": text,
            "source": source,
            "stamp": stamp,
            "latency_s": float(latency_s),
            "persona": persona,
            "request_id": request_id,
            "append_id": append_id or None,
        }
        with self._lock:
            try:
                with immediate_transaction(self.db):
                    if append_id:
                        # Under BEGIN IMMEDIATE: no other writer (thread or process) can
                        # insert the same id between this lookup and the insert below.
                        first = self._turn_by_append_id(append_id)
                        if first is not None:
                            return self._check_retry(first, session_id, role, text)
                    turn_id = self.db["turns"].insert(record).last_pk
                    self.db.execute(
                        "INSERT INTO sessions (id, persona, created, last_active, turn_count) "
                        "VALUES (?, ?, ?, ?, 1) ON CONFLICT(id) DO UPDATE SET "
                        "last_active = excluded.last_active, turn_count = turn_count + 1, "
                        "persona = CASE WHEN excluded.persona != '' THEN excluded.persona "
                        "ELSE persona END",
                        [session_id, persona, stamp, stamp],
                    )
            except sqlite3.Error as exc:
                raise MemoryStoreError(f"cannot write to {self.path}: {exc}") from None
        return StoredTurn(turn_id=turn_id, **{**record, "append_id": append_id})

    def _turn_by_append_id(self, append_id: str) -> StoredTurn | None:
        rows = list(self.db.query("SELECT * FROM turns WHERE append_id = ?", [append_id]))
        return _turn(rows[0]) if rows else None

    @staticmethod
    def _check_retry(first: StoredTurn, session_id: str, role: str, text: str) -> StoredTurn:
        """A retry carries the same turn; the same id on a different turn is a client bug
        that would otherwise silently drop the second turn."""
        if (first.session_id, first.role, first.text) != (session_id, role, text):
            raise RequestRejected(
                f"append_id {first.append_id!r} was already used for a different turn "
                f"(turn {first.turn_id} in session {first.session_id!r})"
            )
        return first

    def clear_session(self, session_id: str) -> int:
        """Delete a session's turns and summary; returns the number of turns deleted."""
        session_id = validate_session_id(session_id)
        with self._lock, immediate_transaction(self.db):
            deleted = self.db.execute(
                "DELETE FROM turns WHERE session_id = ?", [session_id]
            ).rowcount
            self.db.execute("DELETE FROM sessions WHERE id = ?", [session_id])
            self.db.execute("DELETE FROM summaries WHERE session_id = ?", [session_id])
        return deleted

    def set_summary(self, session_id: str, text: str, up_to_turn_id: int) -> None:
        session_id = validate_session_id(session_id)
        with self._lock:
            self.db["summaries"].upsert(
                {
                    "session_id": session_id,
                    "text": text,
                    "up_to_turn_id": up_to_turn_id,
                    "updated": time.time(),
                },
                pk="session_id",
            )

    # ------------------------------------------------------------------- reads
    def history(
        self,
        session_id: str,
        *,
        max_turns: int = 20,
        token_budget: int = 0,
        count_tokens: Callable[[str], int] | None = None,
    ) -> list[StoredTurn]:
        """The newest turns of a session, oldest first; an unknown session has none."""
        session_id = validate_session_id(session_id)
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM turns WHERE session_id = ? ORDER BY id DESC LIMIT ?",
                    [session_id, max(1, max_turns)],
                )
            )
        turns = []
        budget = token_budget
        count = count_tokens or (lambda text: max(1, len(text) // 4))
        for row in rows:
            if token_budget:
                budget -= count(row["text"])
                if budget < 0:
                    break
            turns.append(_turn(row))
        turns.reverse()
        return turns

    def turns_after(self, after_turn_id: int, limit: int = 500) -> list[StoredTurn]:
        """Turns of every session with an id above `after_turn_id`, oldest first."""
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM turns WHERE id > ? ORDER BY id LIMIT ?", [after_turn_id, limit]
                )
            )
        return [_turn(row) for row in rows]

    def last_turn_id(self) -> int:
        with self._lock:
            rows = list(self.db.query("SELECT MAX(id) AS last FROM turns"))
        return rows[0]["last"] or 0

    def turns_before_window(
        self, session_id: str, after_turn_id: int, window: int, limit: int = 200
    ) -> list[StoredTurn]:
        """Turns newer than `after_turn_id` but older than the newest `window`, oldest first."""
        session_id = validate_session_id(session_id)
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM turns WHERE session_id = :s AND id > :after AND id < ("
                    " SELECT MIN(id) FROM (SELECT id FROM turns WHERE session_id = :s"
                    " ORDER BY id DESC LIMIT :window)) ORDER BY id LIMIT :limit",
                    {
                        "s": session_id,
                        "after": after_turn_id,
                        "window": max(1, window),
                        "limit": limit,
                    },
                )
            )
        return [_turn(row) for row in rows]

    def summary(self, session_id: str) -> tuple[str, int]:
        session_id = validate_session_id(session_id)
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT text, up_to_turn_id FROM summaries WHERE session_id = ?", [session_id]
                )
            )
        return (rows[0]["text"], rows[0]["up_to_turn_id"]) if rows else ("", 0)

    def session_persona(self, session_id: str) -> str:
        with self._lock:
            rows = list(self.db.query("SELECT persona FROM sessions WHERE id = ?", [session_id]))
        return rows[0]["persona"] if rows else ""

    def list_sessions(self, limit: int = 100, offset: int = 0) -> list[SessionInfo]:
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM sessions ORDER BY last_active DESC LIMIT ? OFFSET ?",
                    [max(1, limit), max(0, offset)],
                )
            )
        return [
            SessionInfo(r["id"], r["persona"], r["created"], r["last_active"], r["turn_count"])
            for r in rows
        ]

    def search(self, query: str, *, session_id: str = "", limit: int = 10) -> list[StoredTurn]:
        """Full-text search over stored turns, best matches first."""
        if not query.strip():
            raise RequestRejected("search query is empty")
        where, args = None, None
        if session_id:
            # search() builds its SQL with named parameters, so the filter uses one too.
            where, args = (
                "session_id = :session_id",
                {"session_id": validate_session_id(session_id)},
            )
        with self._lock:
            rows = list(
                self.db["turns"].search(
                    query, limit=max(1, limit), where=where, where_args=args, quote=True
                )
            )
        return [_turn(row) for row in rows]

    def export_session(self, session_id: str) -> str:
        """The whole session as JSON: metadata, summary and every turn."""
        session_id = validate_session_id(session_id)
        with self._lock:
            rows = list(
                self.db.query("SELECT * FROM turns WHERE session_id = ? ORDER BY id", [session_id])
            )
            meta = list(self.db.query("SELECT * FROM sessions WHERE id = ?", [session_id]))
        summary, up_to = self.summary(session_id)
        return json.dumps(
            {
                "session_id": session_id,
                "session": meta[0] if meta else None,
                "summary": {"text": summary, "up_to_turn_id": up_to},
                "turns": [asdict(_turn(row)) for row in rows],
            },
            ensure_ascii=False,
            indent=1,
        )

    def turn_count(self) -> int:
        with self._lock:
            return self.db["turns"].count

    def close(self) -> None:
        with self._lock:
            self.db.close()
