"""memory_node as its own process over real DDS, including kill -9 in the middle of a burst."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from conftest import unique_namespace, wait_for

from smolfusion_ros.msg import MemoryEvent, Turn
from smolfusion_ros.srv import (
    AppendTurn,
    ClearSession,
    ExportSession,
    GetHistory,
    ListSessions,
    SearchMemory,
)

pytestmark = pytest.mark.ros
MEMORY = "smolfusion_ros.nodes.memory_node"


class MemoryClient:
    def __init__(self, node, namespace: str) -> None:
        base = f"{namespace}/memory_node"
        self.types = {
            "append_turn": AppendTurn,
            "get_history": GetHistory,
            "list_sessions": ListSessions,
            "clear_session": ClearSession,
            "export_session": ExportSession,
            "search_memory": SearchMemory,
        }
        self.clients = {
            name: node.create_client(srv, f"{base}/{name}") for name, srv in self.types.items()
        }

    def wait(self, timeout: float = 20) -> None:
        """Wait for every service, then probe each with a harmless call.

        A service can be discovered before the server has matched our response reader; a
        response sent in that window is lost, so the probe retries with a short timeout.
        """
        from smolfusion_ros.client import ClientError

        probes = {
            "append_turn": {"turn": Turn(session_id="probe", role="user", text="")},
            "get_history": {"session_id": "probe"},
            "list_sessions": {},
            "clear_session": {"session_id": "probe"},
            "export_session": {"session_id": "probe"},
            "search_memory": {"query": "probe"},
        }
        for name, client in self.clients.items():
            assert client.wait_for_service(timeout_sec=timeout)
            for _attempt in range(10):
                try:
                    self.call(name, timeout=1.0, **probes[name])
                    break
                except ClientError:
                    continue
            else:
                raise AssertionError(f"{name} never answered")

    def call(self, name: str, timeout: float = 10, **fields):
        from smolfusion_ros.client import _wait_future

        request = self.types[name].Request(**fields)
        return _wait_future(self.clients[name].call_async(request), timeout, name)

    def append(self, session_id: str, role: str, text: str, timeout: float = 10):
        turn = Turn(session_id=session_id, role=role, text=text, source="test")
        return self.call("append_turn", timeout=timeout, turn=turn)


def _start(start_node, namespace: str, db) -> object:
    return start_node(MEMORY, namespace, params_file=None, params={"database_path": str(db)})


def test_services_store_search_export_and_clear(ros_node, start_node, tmp_path):
    namespace = unique_namespace("memory")
    _start(start_node, namespace, tmp_path / "m.db")
    events = []
    ros_node.create_subscription(MemoryEvent, f"{namespace}/memory_events", events.append, 50)
    memory = MemoryClient(ros_node, namespace)
    memory.wait()
    first = memory.append("alice", "user", "Where is the library?")
    assert first.success and first.turn_id > 0
    assert memory.append("alice", "assistant", "Second floor.").success
    assert memory.append("bob", "user", "I like the library too.").success
    history = memory.call("get_history", session_id="alice")
    assert history.success
    assert [(t.role, t.text) for t in history.turns] == [
        ("user", "Where is the library?"),
        ("assistant", "Second floor."),
    ]
    assert history.turns[0].turn_id == first.turn_id
    unknown = memory.call("get_history", session_id="nobody")
    assert unknown.success and list(unknown.turns) == []
    sessions = memory.call("list_sessions")
    assert {s.session_id: s.turn_count for s in sessions.sessions} == {"alice": 2, "bob": 1}
    found = memory.call("search_memory", query="library")
    assert {t.session_id for t in found.turns} == {"alice", "bob"}
    exported = json.loads(memory.call("export_session", session_id="alice").json)
    assert len(exported["turns"]) == 2
    cleared = memory.call("clear_session", session_id="alice")
    assert cleared.success and cleared.turns_deleted == 2
    assert list(memory.call("get_history", session_id="alice").turns) == []
    assert wait_for(
        lambda: [e.event for e in events].count("appended") == 3 and events[-1].event == "cleared",
        5,
    )


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("append_turn", {"turn": Turn(session_id="s", role="user", text="")}, "empty"),
        (
            "append_turn",
            {"turn": Turn(session_id="s", role="user", text="x" * 9000)},
            "limit is 8000",
        ),
        (
            "append_turn",
            {"turn": Turn(session_id="s s", role="user", text="hi")},
            "invalid session_id",
        ),
        ("append_turn", {"turn": Turn(session_id="s", role="pirate", text="hi")}, "role"),
        ("get_history", {"session_id": "../../etc"}, "invalid session_id"),
        ("search_memory", {"query": ""}, "empty"),
        ("clear_session", {"session_id": "bad/id"}, "invalid session_id"),
    ],
)
def test_bad_requests_get_errors_and_the_node_keeps_serving(
    ros_node, start_node, tmp_path, name, fields, message
):
    namespace = unique_namespace("membad")
    process = _start(start_node, namespace, tmp_path / "m.db")
    memory = MemoryClient(ros_node, namespace)
    memory.wait()
    response = memory.call(name, **fields)
    assert not response.success and message in response.error
    assert process.alive()
    assert memory.append("s", "user", "still here").success


def test_a_database_that_cannot_be_opened_stops_the_node_with_one_line(start_node, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    process = _start(start_node, unique_namespace("membroken"), blocker / "m.db")
    assert process.wait(30) == 2
    assert "cannot open memory database" in process.log
    assert "Traceback" not in process.log


def test_every_acknowledged_turn_survives_kill_9(ros_node, start_node, tmp_path):
    namespace = unique_namespace("memkill")
    db = tmp_path / "crash.db"
    process = _start(start_node, namespace, db)
    memory = MemoryClient(ros_node, namespace)
    memory.wait()
    acknowledged: list[tuple[int, str]] = []
    stop = threading.Event()

    def burst(writer: int) -> None:
        i = 0
        while not stop.is_set():
            text = f"writer {writer} turn {i}"
            try:
                response = memory.append("burst", "user", text, timeout=2)
            except Exception:
                return  # the node is gone: this turn was never acknowledged
            if response.success:
                acknowledged.append((response.turn_id, text))
            i += 1

    writers = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for writer in writers:
        writer.start()
    assert wait_for(lambda: len(acknowledged) >= 60, 30)
    process.proc.send_signal(signal.SIGKILL)  # mid-burst, no chance to clean up
    process.proc.wait(10)
    stop.set()
    for writer in writers:
        writer.join(10)
    time.sleep(0.2)

    namespace2 = unique_namespace("memkill2")
    _start(start_node, namespace2, db)
    memory2 = MemoryClient(ros_node, namespace2)
    memory2.wait()
    history = memory2.call("get_history", session_id="burst", max_turns=100_000)
    stored = {(t.turn_id, t.text) for t in history.turns}
    missing = [turn for turn in acknowledged if turn not in stored]
    assert not missing, f"{len(missing)} acknowledged turns lost, e.g. {missing[:3]}"
    assert memory2.append("burst", "user", "after the crash").success


@pytest.mark.model
def test_turns_fusion_stores_are_served_and_announced_by_memory_node(
    ros_node, start_node, tmp_path
):
    """fusion_node and memory_node share one SQLite file, as in every profile."""
    from conftest import make_client

    namespace = unique_namespace("memfusion")
    db = tmp_path / "shared.db"
    start_node(
        "smolfusion_ros.nodes.fusion_node",
        namespace,
        params={"memory.database_path": str(db), "llm.temperature": 0.0},
    )
    _start(start_node, namespace, db)
    events = []
    ros_node.create_subscription(MemoryEvent, f"{namespace}/memory_events", events.append, 50)
    memory = MemoryClient(ros_node, namespace)
    memory.wait()
    client = make_client(ros_node, namespace)
    client.wait_until_ready(60)
    reply = client.chat(
        "Please remember that my locker is number 42.", session_id="locker", max_tokens=16
    )
    assert reply.success, reply.error
    history = memory.call("get_history", session_id="locker")
    assert [(t.role, t.source) for t in history.turns] == [
        ("user", "service"),
        ("assistant", "llm"),
    ]
    assert history.turns[0].text == "Please remember that my locker is number 42."
    assert history.turns[1].text == reply.reply and history.turns[1].latency_s > 0
    assert wait_for(
        lambda: (
            [(e.session_id, e.role) for e in events if e.session_id == "locker"]
            == [("locker", "user"), ("locker", "assistant")]
        ),
        5,
    )
    found = memory.call("search_memory", query="locker", session_id="locker")
    assert found.turns and found.turns[0].session_id == "locker"


def test_a_retried_append_is_stored_once_even_after_kill_9(ros_node, start_node, tmp_path):
    """A client that got no reply (timeout, lost response, node killed between the commit and
    the reply) retries with the same append_id; every id ends up stored exactly once."""
    namespace = unique_namespace("memonce")
    db = tmp_path / "once.db"
    process = _start(start_node, namespace, db)
    memory = MemoryClient(ros_node, namespace)
    memory.wait()

    def append(client, append_id: str, text: str, timeout: float = 10):
        turn = Turn(session_id="once", role="user", text=text, source="test")
        return client.call("append_turn", timeout=timeout, turn=turn, append_id=append_id)

    # A retry on a living node (the first reply was "lost"): same turn_id, one row.
    first = append(memory, "retry-0", "retried on a living node")
    again = append(memory, "retry-0", "retried on a living node")
    assert first.success and again.success and again.turn_id == first.turn_id

    sent: dict[str, str] = {"retry-0": "retried on a living node"}
    acknowledged: dict[str, int] = {"retry-0": first.turn_id}
    stop = threading.Event()

    def burst(writer: int) -> None:
        i = 0
        while not stop.is_set():
            append_id, text = f"w{writer}-{i}", f"writer {writer} turn {i}"
            sent[append_id] = text  # from here on it may be on disk, acknowledged or not
            try:
                response = append(memory, append_id, text, timeout=2)
            except Exception:
                return  # no reply: the node is gone
            if response.success:
                acknowledged[append_id] = response.turn_id
            i += 1

    writers = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for writer in writers:
        writer.start()
    assert wait_for(lambda: len(acknowledged) >= 60, 30)
    process.proc.send_signal(signal.SIGKILL)  # mid-burst: some turns committed, never acked
    process.proc.wait(10)
    stop.set()
    for writer in writers:
        writer.join(10)

    namespace2 = unique_namespace("memonce2")
    _start(start_node, namespace2, db)
    memory2 = MemoryClient(ros_node, namespace2)
    memory2.wait()
    # The clients retry everything they sent, acknowledged or not.
    for append_id, text in sent.items():
        response = append(memory2, append_id, text)
        assert response.success, response.error
        if append_id in acknowledged:
            assert response.turn_id == acknowledged[append_id], append_id
    history = memory2.call("get_history", session_id="once", max_turns=100_000)
    texts = [t.text for t in history.turns]
    duplicates = len(texts) - len(set(texts))
    assert duplicates == 0, f"{duplicates} turns stored twice"
    assert sorted(texts) == sorted(sent.values())
    sessions = memory2.call("list_sessions")
    assert {s.session_id: s.turn_count for s in sessions.sessions}["once"] == len(sent)
