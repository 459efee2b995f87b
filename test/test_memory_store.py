"""MemoryStore on a real SQLite file: validation, history, search, export, concurrency."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from smolfusion_ros.core.requests import RequestRejected
from smolfusion_ros.memory.store import MemoryStore, MemoryStoreError


@pytest.fixture
def store(tmp_path):
    store = MemoryStore(tmp_path / "memory.db", max_turn_chars=200)
    yield store
    store.close()


def test_turns_come_back_in_order_per_session(store):
    store.append_turn("a", "user", "Where is the kitchen?", source="speech")
    store.append_turn("b", "user", "Hello from B", source="text")
    store.append_turn("a", "assistant", "Down the hall.", source="llm", latency_s=0.4)
    history = store.history("a")
    assert [(t.role, t.text) for t in history] == [
        ("user", "Where is the kitchen?"),
        ("assistant", "Down the hall."),
    ]
    assert history[0].source == "speech" and history[1].latency_s == pytest.approx(0.4)
    assert store.history("never-seen") == []
    sessions = {s.session_id: s for s in store.list_sessions()}
    assert sessions["a"].turn_count == 2 and sessions["b"].turn_count == 1


def test_history_window_by_turns_and_tokens(store):
    for i in range(10):
        store.append_turn("w", "user", f"turn {i} " + "word " * 9)
    assert [t.text.split()[1] for t in store.history("w", max_turns=3)] == ["7", "8", "9"]
    words = lambda text: len(text.split())  # noqa: E731
    assert len(store.history("w", max_turns=10, token_budget=25, count_tokens=words)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bad id!", "user", "hi"), "invalid session_id"),
        (("a" * 65, "user", "hi"), "invalid session_id"),
        (("s", "robot", "hi"), "role must be"),
        (("s", "user", "   "), "empty"),
        (("s", "user", "x" * 201), "limit is 200"),
    ],
)
def test_bad_turns_are_rejected_and_nothing_is_stored(store, args, message):
    with pytest.raises(RequestRejected, match=message):
        store.append_turn(*args)
    assert store.turn_count() == 0


def test_any_text_is_stored_as_data(store):
    nasty = "'); DROP TABLE turns; -- \" \\ %s {0} \u202e émoji 🤖 NUL-free"
    store.append_turn("s", "user", nasty)
    assert store.history("s")[0].text == nasty
    assert store.search("DROP TABLE")[0].text == nasty
    assert store.search('"unbalanced quote') == []


def test_search_finds_past_turns_and_filters_by_session(store):
    store.append_turn("a", "user", "My favourite colour is green.")
    store.append_turn("b", "user", "Green tea please.")
    store.append_turn("b", "user", "Nothing relevant here.")
    assert {t.session_id for t in store.search("green")} == {"a", "b"}
    assert [t.session_id for t in store.search("green", session_id="b")] == ["b"]
    with pytest.raises(RequestRejected, match="empty"):
        store.search("  ")


def test_export_and_clear(store):
    store.append_turn("e", "user", "Remember this.", persona="guide")
    store.set_summary("e", "The user asked to remember something.", 1)
    exported = json.loads(store.export_session("e"))
    assert exported["session"]["persona"] == "guide"
    assert exported["summary"]["text"].startswith("The user")
    assert [t["text"] for t in exported["turns"]] == ["Remember this."]
    assert store.clear_session("e") == 1
    assert store.history("e") == [] and store.summary("e") == ("", 0)
    assert json.loads(store.export_session("e"))["turns"] == []


def test_a_database_that_cannot_be_opened_is_one_clear_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(MemoryStoreError, match="cannot open memory database"):
        MemoryStore(blocker / "memory.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(MemoryStoreError, match="cannot open memory database"):
        MemoryStore(garbage)


WRITER = """
import sys
from smolfusion_ros.memory.store import MemoryStore
store = MemoryStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.append_turn(sys.argv[2], "user", f"{sys.argv[2]} message {i}")
"""


def test_concurrent_writers_in_threads_and_processes_lose_nothing(store, tmp_path):
    path = str(store.path)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, path, f"proc{n}", "100"]) for n in range(2)
    ]
    reads = []

    def writer(name: str) -> None:
        for i in range(100):
            store.append_turn(name, "user", f"{name} message {i}")
            reads.append(len(store.history(name, max_turns=5)))

    threads = [threading.Thread(target=writer, args=(f"thread{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for proc in procs:
        assert proc.wait(60) == 0
    assert store.turn_count() == 500
    for name in ("thread0", "thread1", "thread2", "proc0", "proc1"):
        texts = [t.text for t in store.history(name, max_turns=1000)]
        assert texts == [f"{name} message {i}" for i in range(100)]
    assert all(1 <= n <= 5 for n in reads)


def test_turn_ids_are_never_reused_after_a_clear(store):
    store.append_turn("a", "user", "one")
    last = store.append_turn("a", "user", "two").turn_id
    store.clear_session("a")
    assert store.append_turn("a", "user", "three").turn_id > last
    assert [t.text for t in store.turns_after(last)] == ["three"]
    assert store.last_turn_id() == last + 1


OPENER = """
import sys
from smolfusion_ros.memory.store import MemoryStore
MemoryStore(sys.argv[1]).append_turn("s", "user", "hello from " + sys.argv[2])
"""


def test_several_processes_can_create_a_fresh_database_at_once(tmp_path):
    path = str(tmp_path / "fresh.db")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, path, str(n)], stderr=subprocess.PIPE, text=True
        )
        for n in range(4)
    ]
    errors = [p.stderr.read() for p in procs if p.wait(60) != 0]
    assert not errors, errors[0]
    assert MemoryStore(path).turn_count() == 4


# ---- exactly-once appends (append_id) ------------------------------------------------------


def test_a_retried_append_with_the_same_id_stores_one_turn(store):
    first = store.append_turn("r", "user", "Book a table for two.", append_id="bt-7f3a-1")
    again = store.append_turn("r", "user", "Book a table for two.", append_id="bt-7f3a-1")
    assert again.turn_id == first.turn_id and again.append_id == "bt-7f3a-1"
    assert store.turn_count() == 1
    assert [s.turn_count for s in store.list_sessions()] == [1]
    # Without an id every call is a new turn, as before.
    store.append_turn("r", "user", "Book a table for two.")
    store.append_turn("r", "user", "Book a table for two.")
    assert store.turn_count() == 3
    assert store.list_sessions()[0].turn_count == 3
    assert [t.append_id for t in store.history("r")] == ["bt-7f3a-1", "", ""]


def test_an_append_id_reused_for_a_different_turn_is_refused(store):
    store.append_turn("r", "user", "first", append_id="dup")
    for args in (("r", "user", "second"), ("other", "user", "first"), ("r", "assistant", "first")):
        with pytest.raises(RequestRejected, match="already used for a different turn"):
            store.append_turn(*args, append_id="dup")
    with pytest.raises(RequestRejected, match="limit is 128"):
        store.append_turn("r", "user", "x", append_id="i" * 129)
    assert store.turn_count() == 1


def test_racing_retries_on_two_connections_store_one_turn(tmp_path):
    """Two stores = two SQLite connections, as fusion_node and memory_node in two processes."""
    path = tmp_path / "race.db"
    stores = [MemoryStore(path), MemoryStore(path)]
    answers: dict[int, set[int]] = {i: set() for i in range(20)}
    barrier = threading.Barrier(8)

    def retry(n: int) -> None:
        barrier.wait()
        for i in range(20):
            turn = stores[n % 2].append_turn("race", "user", f"turn {i}", append_id=f"id-{i}")
            answers[i].add(turn.turn_id)

    threads = [threading.Thread(target=retry, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert stores[0].turn_count() == 20
    assert all(len(turn_ids) == 1 for turn_ids in answers.values())  # all 8 callers of id-i
    assert stores[1].list_sessions()[0].turn_count == 20
    for s in stores:
        s.close()


# The schema MemoryStore wrote before append_id existed (SCHEMA_VERSION 1), verbatim.
_SCHEMA_V1 = (
    "CREATE TABLE sessions (id TEXT PRIMARY KEY, persona TEXT, created FLOAT,"
    " last_active FLOAT, turn_count INTEGER)",
    "CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT,"
    " role TEXT, text TEXT, source TEXT, stamp FLOAT, latency_s FLOAT, persona TEXT,"
    " request_id TEXT)",
    "CREATE INDEX idx_turns_session_id_id ON turns (session_id, id)",
    "CREATE TABLE summaries (session_id TEXT PRIMARY KEY, text TEXT,"
    " up_to_turn_id INTEGER, updated FLOAT)",
    "CREATE VIRTUAL TABLE turns_fts USING FTS5 (text, content=[turns])",
    "CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN"
    " INSERT INTO turns_fts (rowid, text) VALUES (new.rowid, new.text); END",
    "CREATE TRIGGER turns_ad AFTER DELETE ON turns BEGIN"
    " INSERT INTO turns_fts (turns_fts, rowid, text) VALUES('delete', old.rowid, old.text); END",
    "CREATE TRIGGER turns_au AFTER UPDATE ON turns BEGIN"
    " INSERT INTO turns_fts (turns_fts, rowid, text) VALUES('delete', old.rowid, old.text);"
    " INSERT INTO turns_fts (rowid, text) VALUES (new.rowid, new.text); END",
    "INSERT INTO turns (session_id, role, text, source, stamp, latency_s, persona, request_id)"
    " VALUES ('old', 'user', 'An old question about giraffes', 'text', 1.0, 0.0, '', 'r1')",
    "INSERT INTO turns (session_id, role, text, source, stamp, latency_s, persona, request_id)"
    " VALUES ('old', 'assistant', 'An old answer', 'llm', 2.0, 0.5, '', 'r1')",
    "INSERT INTO sessions VALUES ('old', '', 1.0, 2.0, 2)",
    "PRAGMA user_version=1",
)


def _version_1_database(path) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    for statement in _SCHEMA_V1:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_a_version_1_database_opens_and_gains_exactly_once_appends(tmp_path):
    path = tmp_path / "v1.db"
    _version_1_database(path)
    store = MemoryStore(path)
    old = store.history("old")
    assert [(t.text, t.append_id) for t in old] == [
        ("An old question about giraffes", ""),
        ("An old answer", ""),
    ]
    first = store.append_turn("old", "user", "A new question", append_id="n-1")
    assert store.append_turn("old", "user", "A new question", append_id="n-1") == first
    assert store.turn_count() == 3 and store.list_sessions()[0].turn_count == 3
    assert store.search("giraffes")[0].text == "An old question about giraffes"
    assert store.search("new question")[0].turn_id == first.turn_id
    store.close()
    import sqlite3

    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (2,)
    reopened = MemoryStore(path)  # a second open of the migrated file changes nothing
    assert reopened.append_turn("old", "user", "A new question", append_id="n-1") == first
    reopened.close()


def test_several_processes_can_open_a_version_1_database_at_once(tmp_path):
    path = tmp_path / "v1race.db"
    _version_1_database(path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(path), str(n)], stderr=subprocess.PIPE, text=True
        )
        for n in range(4)
    ]
    errors = [p.stderr.read() for p in procs if p.wait(60) != 0]
    assert not errors, errors[0]
    assert MemoryStore(path).turn_count() == 6
