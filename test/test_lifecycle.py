"""Managed (lifecycle) nodes driven from outside over real DDS, each node in its own process.

What a behaviour tree or lifecycle manager does: configure -> activate -> use -> deactivate
(requests refused with "node is inactive", the node keeps running) -> cleanup -> change a
parameter -> configure -> activate (the new value is used, without restarting the process)
-> cleanup -> shutdown. The nodes are started with autostart:=false so that nothing but the
test moves them.
"""

from __future__ import annotations

import pytest
from conftest import LifecycleClient, make_client, unique_namespace, wait_for

pytestmark = pytest.mark.ros

FUSION = "smolfusion_ros.nodes.fusion_node"
MEMORY = "smolfusion_ros.nodes.memory_node"
GREEDY = {"llm.temperature": 0.0, "llm.seed": 7}


class ModelStatus:
    """fusion_node's language-model status on /diagnostics (state, model, lifecycle)."""

    def __init__(self, node, namespace: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.name = f"{namespace}/fusion_node: language model"
        self.values: dict[str, str] = {}
        self._subscription = node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, 50
        )

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == self.name:
                self.values = {kv.key: kv.value for kv in status.values}

    def is_(self, **expected: str) -> bool:
        return all(self.values.get(k) == v for k, v in expected.items())


@pytest.mark.model
def test_fusion_node_lifecycle_with_a_new_model_path_without_restarting(
    ros_node, start_node, tmp_path
):
    from smolfusion_ros import catalogue

    namespace = unique_namespace("lifecycle")
    process = start_node(FUSION, namespace, params=GREEDY | {"autostart": "false"})
    lifecycle = LifecycleClient(ros_node, f"{namespace}/fusion_node")
    client = make_client(ros_node, namespace)
    status = ModelStatus(ros_node, namespace)
    lifecycle.wait(60)
    client.wait_for_servers(60)
    assert lifecycle.state() == "unconfigured"
    refused = client.chat("Hello", max_tokens=4)
    assert not refused.success and "node is inactive" in refused.error

    # configure loads the model in the background; activate takes requests.
    assert lifecycle.transition("configure")
    assert lifecycle.state() == "inactive"
    refused = client.chat("Hello", max_tokens=4)
    assert not refused.success and "node is inactive" in refused.error
    assert lifecycle.transition("activate")
    client.wait_until_ready(60)
    first = client.chat("What is the capital of France?", session_id="lc", max_tokens=12)
    assert first.success, first.error
    assert status.values.get("lifecycle") == "active"
    original_model = status.values["model"]

    # Deactivate while an answer streams: that answer is finished, new requests are refused.
    streamed = []
    running = client.converse(
        "Tell me a long story about the sea.",
        session_id="lc-running",
        max_tokens=48,
        on_feedback=streamed.append,
    )
    assert wait_for(lambda: len(streamed) >= 1, 60), "no token before deactivate"
    assert lifecycle.transition("deactivate")
    assert lifecycle.state() == "inactive"
    finished = running.result(120)
    assert finished.success and not finished.cancelled, finished.error
    refused = client.chat("Hello", max_tokens=4)
    assert not refused.success and "node is inactive" in refused.error
    goal = client.converse("Hello", max_tokens=4).result(30)
    assert not goal.success and "node is inactive" in goal.error
    assert wait_for(lambda: status.is_(lifecycle="inactive"), 30), status.values
    assert process.alive()

    # A new model file and a new limit, taken by the next configure: same process.
    model = catalogue.resolve_model("smollm2-135m-instruct", kind="llm")
    renamed = tmp_path / "smollm2-renamed.gguf"
    renamed.symlink_to(model)
    assert lifecycle.transition("cleanup")
    assert lifecycle.state() == "unconfigured"
    lifecycle.set_parameters(
        llm__model_path=str(renamed), chat__max_tokens_limit=8, chat__default_max_tokens=8
    )
    assert lifecycle.transition("configure"), process.log
    assert lifecycle.transition("activate"), process.log
    assert wait_for(
        lambda: status.is_(model=renamed.name, state="ready", lifecycle="active"), 60
    ), status.values
    assert original_model != renamed.name
    client.wait_until_ready(60)
    again = client.chat("What is the capital of France?", session_id="lc", max_tokens=8)
    assert again.success, again.error
    too_long = client.chat("Hello", session_id="lc", max_tokens=16)
    assert not too_long.success and "max_tokens" in too_long.error

    # Back down: cleanup frees the model, shutdown finalises; the process stays up until told.
    assert lifecycle.transition("deactivate")
    assert lifecycle.transition("cleanup")
    assert wait_for(lambda: status.is_(state="unconfigured"), 30), status.values
    assert lifecycle.transition("shutdown")
    assert lifecycle.state() == "finalized"
    assert process.alive()
    process.stop()
    assert process.proc.returncode == 0, process.log
    assert "Traceback" not in process.log


@pytest.mark.model
def test_a_configure_that_fails_leaves_the_node_unconfigured_and_alive(ros_node, start_node):
    namespace = unique_namespace("lcfail")
    process = start_node(
        FUSION,
        namespace,
        params=GREEDY | {"autostart": "false", "llm.model_path": "/nonexistent/model.gguf"},
    )
    lifecycle = LifecycleClient(ros_node, f"{namespace}/fusion_node")
    client = make_client(ros_node, namespace)
    lifecycle.wait(60)
    assert not lifecycle.transition("configure")
    assert lifecycle.state() == "unconfigured"
    assert wait_for(lambda: "does not exist" in process.log, 10), process.log
    assert process.alive()
    # Fixed parameter, second try: the node works, nothing was restarted.
    lifecycle.set_parameters(llm__model_path="")
    assert lifecycle.transition("configure")
    assert lifecycle.transition("activate")
    client.wait_until_ready(60)
    assert client.chat("Say hi.", max_tokens=4).success
    assert "Traceback" not in process.log


def test_memory_node_lifecycle_reopens_its_database_on_configure(ros_node, start_node, tmp_path):
    from test_memory_node import MemoryClient

    from smolfusion_ros.memory.store import MemoryStore

    first_db, second_db = tmp_path / "first.db", tmp_path / "second.db"
    namespace = unique_namespace("lcmemory")
    process = start_node(
        MEMORY,
        namespace,
        params_file=None,
        params={"database_path": str(first_db), "autostart": "false"},
    )
    lifecycle = LifecycleClient(ros_node, f"{namespace}/memory_node")
    memory = MemoryClient(ros_node, namespace)
    lifecycle.wait(60)
    memory.wait()  # every service answers (here: "node is inactive")
    refused = memory.append("s1", "user", "too early")
    assert not refused.success and "node is inactive" in refused.error
    assert not first_db.exists(), "the file is opened by configure, not at construction"

    assert lifecycle.transition("configure") and lifecycle.transition("activate")
    assert memory.append("s1", "user", "into the first file").success
    assert lifecycle.transition("deactivate")
    refused = memory.call("get_history", session_id="s1")
    assert not refused.success and "node is inactive" in refused.error

    assert lifecycle.transition("cleanup")
    lifecycle.set_parameters(database_path=str(second_db))
    assert lifecycle.transition("configure") and lifecycle.transition("activate")
    assert memory.append("s1", "user", "into the second file").success
    history = memory.call("get_history", session_id="s1")
    assert [t.text for t in history.turns] == ["into the second file"]
    assert [t.text for t in MemoryStore(first_db).history("s1")] == ["into the first file"]

    assert lifecycle.transition("shutdown")
    assert lifecycle.state() == "finalized"
    assert process.alive()
    process.stop()
    assert process.proc.returncode == 0, process.log


def test_an_autostarted_node_is_active_and_answers_its_lifecycle_services(ros_node, start_node):
    """The profiles' autostart=true: the node brings itself up; the services still work."""
    namespace = unique_namespace("lcauto")
    start_node(MEMORY, namespace, params_file=None)
    lifecycle = LifecycleClient(ros_node, f"{namespace}/memory_node")
    lifecycle.wait(60)
    assert wait_for(lambda: lifecycle.state() == "active", 30)
    assert lifecycle.transition("deactivate")
    assert lifecycle.state() == "inactive"
