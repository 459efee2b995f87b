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
