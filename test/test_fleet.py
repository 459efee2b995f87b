"""Many robots, one model server: four fusion_node processes (four robot namespaces, own memory
each, profile fleet_robot) talking to one real llama-server (--parallel 4, continuous batching)
on loopback, over real DDS and real HTTP. Plus the fleet profile's launch description.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
import threading
import time

import pytest
from conftest import REPO, NodeProcess, make_client, unique_namespace, wait_for
from llama_server import LlamaServer, llama_server_binary, smollm2_path

from smolfusion_ros.core.profile import ProfileError, argument_overrides, get_profile

FUSION = "smolfusion_ros.nodes.fusion_node"
FLEET_PARAMS = REPO / "config" / "fleet_robot.yaml"
ROBOTS = 4
# The first test may build llama-server (about 15 minutes on 2 idle cores, once; cached):
# pytest-timeout counts the module fixture's setup against that test.
BUILD_TIMEOUT_S = 3600
QUESTIONS = [
    "What is the capital of France?",
    "Name a colour of the sky.",
    "What do bees make?",
    "How many legs does a cat have?",
]


@pytest.fixture(scope="module")
def server():
    srv = LlamaServer(llama_server_binary(), smollm2_path(), parallel=ROBOTS, ctx_per_slot=1024)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fleet(server, module_ros_node, tmp_path_factory):
    """Four robots, each its own fusion_node process and SQLite memory, one server."""
    robots = []
    try:
        for index in range(ROBOTS):
            database = tmp_path_factory.mktemp(f"robot{index}") / "memory.db"
            params = {
                "llm.base_url": server.base_url,
                "llm.model": "''",  # whatever the server serves (its alias)
                "llm.n_ctx": 1024,
                "llm.temperature": 0.0,
                "llm.seed": 7,
                "llm.retries": 1,
                "llm.timeout_s": 20.0,
                "memory.database_path": str(database),
                "memory.summary_batch": 0,
                "vision.backend": "''",  # the LLM server here has no vision model
                "diagnostics_period_s": 0.5,
            }
            namespace = unique_namespace(f"robot{index}")
            process = NodeProcess(FUSION, namespace, params=params, params_file=FLEET_PARAMS)
            robots.append((process, make_client(module_ros_node, namespace), database))
        for process, client, _database in robots:
            try:
                client.wait_until_ready(90)
            except Exception:
                raise AssertionError(f"robot not ready:\n{process.log}") from None
        yield robots
    finally:
        for process, _client, _database in robots:
            process.stop()


def _stored_turns(database) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT session_id, text FROM turns ORDER BY rowid").fetchall()


@pytest.mark.ros
@pytest.mark.model
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_four_robots_chat_at_the_same_time_and_all_are_answered(fleet):
    results: dict[int, object] = {}

    def ask(index: int) -> None:
        _process, client, _database = fleet[index]
        results[index] = client.chat(
            QUESTIONS[index], session_id=f"visitor{index}", max_tokens=32, timeout=90
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(ROBOTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for index in range(ROBOTS):
        response = results[index]
        assert response.success, response.error
        assert response.reply.strip() and response.tokens > 0
    # Own memory each: every robot stored its own conversation, and only that one.
    for index, (_process, _client, database) in enumerate(fleet):
        turns = _stored_turns(database)
        sessions = {session for session, _text in turns if session != "smolfusion-probe"}
        assert sessions == {f"visitor{index}"}
        assert any(QUESTIONS[index] in text for _session, text in turns)


@pytest.mark.ros
@pytest.mark.model
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_cancel_on_one_robot_does_not_disturb_the_others(fleet):
    _process, canceller, _database = fleet[0]
    feedback = []
    handle = canceller.converse(
        "Write a very long story about a robot who learns to paint.",
        session_id="long",
        max_tokens=800,
        on_feedback=feedback.append,
    )
    others: dict[int, object] = {}

    def ask(index: int) -> None:
        _p, client, _d = fleet[index]
        others[index] = client.chat(
            "Say hello to the visitors.", session_id="hello", max_tokens=24, timeout=90
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(1, ROBOTS)]
    assert wait_for(lambda: len(feedback) >= 3, 60), "no streamed tokens before cancel"
    for thread in threads:
        thread.start()
    cancel_sent = time.monotonic()
    handle.cancel()
    result = handle.result(10)
    assert result.cancelled and not result.success
    assert time.monotonic() - cancel_sent < 1.0
    for thread in threads:
        thread.join(120)
    for index in range(1, ROBOTS):
        assert others[index].success, others[index].error
        assert others[index].tokens > 0
    # The cancelled robot goes on as well.
    assert canceller.chat("Say hello.", session_id="long", max_tokens=8, timeout=60).success


@pytest.mark.ros
@pytest.mark.model
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_server_killed_mid_conversation_then_restarted_robots_recover(
    fleet, server, module_ros_node
):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    talker_process, talker, _database = fleet[1]
    statuses: list = []
    name = f"{talker_process.namespace}/fusion_node: language model"
    module_ros_node.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda msg: statuses.extend(s for s in msg.status if s.name == name),
        10,
    )
    feedback = []
    handle = talker.converse(
        "Tell me a long story about the sea.",
        session_id="sea",
        max_tokens=600,
        on_feedback=feedback.append,
    )
    assert wait_for(lambda: len(feedback) >= 2, 60), "no streamed tokens before the crash"
    server.kill()
    result = handle.result(30)
    assert not result.success and not result.cancelled
    assert server.base_url in result.error, result.error
    # While the server is down: every robot answers success=false naming the server, at once.
    for process, client, _database in fleet:
        start = time.monotonic()
        response = client.chat("Are you there?", session_id="down", max_tokens=8, timeout=30)
        assert not response.success
        assert server.base_url in response.error and "connection refused" in response.error
        assert time.monotonic() - start < 10
        assert process.alive()
    # /diagnostics: WARN, naming the unreachable server, while the robot itself stays READY.
    statuses.clear()
    assert wait_for(lambda: statuses, 5)
    assert statuses[-1].level == DiagnosticStatus.WARN
    assert "server unreachable" in statuses[-1].message
    assert server.base_url in statuses[-1].message
    server.start()
    # Recovery without restarting the robots: all four answer again.
    for process, client, _database in fleet:
        response = client.chat(
            "What is the capital of France?", session_id="after", max_tokens=16, timeout=60
        )
        assert response.success, f"{response.error}\n{process.log[-2000:]}"
        assert response.reply.strip() and response.tokens > 0
    statuses.clear()
    assert wait_for(lambda: statuses, 5)
    assert statuses[-1].level == DiagnosticStatus.OK


# --- launch description (ros2 launch cannot run here: see test_launch.py) ----------------------


def test_fleet_profile_runs_every_node_on_the_robot_with_remote_models():
    profile = get_profile("fleet_robot")
    assert set(profile.nodes) >= {"fusion_node", "speech_node", "memory_node", "tts_node"}
    fusion = profile.node_parameters("fusion_node")
    assert fusion["llm"]["backend"] == "openai" and fusion["llm"]["base_url"].startswith("http")
    assert fusion["vision"]["backend"] == "openai_vlm"
    assert fusion["vision"]["base_url"].startswith("http")
    assert "model_path" not in fusion["llm"], "nothing is loaded on the robot"


def test_launch_arguments_llm_url_and_vlm_url_set_the_server_addresses(monkeypatch):
    from test_launch import _stand_in_launch_modules

    for name, module in _stand_in_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(
        "fleet_launch", REPO / "launch/smolfusion.launch.py"
    )
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)
    description = launch_file.generate_launch_description()
    declared = {
        a.args[0]: a.kwargs["default_value"]
        for a in description.args[0]
        if type(a).__name__ == "DeclareLaunchArgument"
    }
    assert declared["llm_url"] == "" and declared["vlm_url"] == ""
    (opaque,) = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]
    arguments = declared | {
        "profile": "fleet_robot",
        "namespace": "robot3",
        "llm_url": "http://server:8080/v1",
    }
    nodes = {n.kwargs["executable"]: n for n in opaque.kwargs["function"](arguments)}
    profile_file = str(get_profile("fleet_robot").parameters_file)
    assert nodes["fusion_node"].kwargs["parameters"] == [
        profile_file,
        {"llm.base_url": "http://server:8080/v1"},
    ]
    assert nodes["fusion_node"].kwargs["namespace"] == "robot3"
    assert nodes["speech_node"].kwargs["parameters"] == [profile_file]
    with pytest.raises(ProfileError, match="vlm_url:=server:8081 must start with http"):
        argument_overrides("fusion_node", {"vlm_url": "server:8081"})
    assert argument_overrides("fusion_node", {"vlm_url": " http://s:8081/v1 "}) == {
        "vision.base_url": "http://s:8081/v1"
    }
