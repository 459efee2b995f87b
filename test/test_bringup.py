"""The main job: the cpu_demo profile in one process with its console, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO, unique_namespace

pytestmark = [pytest.mark.ros, pytest.mark.model]


def _bringup(*args: str, stdin: str | None = None, timeout: float = 120, env=None):
    ros_args = ["--ros-args", "-r", f"__ns:={unique_namespace('bringup')}"]
    if "--ros-args" in args:
        split = args.index("--ros-args")
        args, ros_args = args[:split], ros_args + list(args[split + 1 :])
    return subprocess.run(
        [sys.executable, "-m", "smolfusion_ros.bringup", *args, *ros_args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
        env=os.environ | (env or {}),
    )


def test_scripted_questions_get_streamed_answers_with_timings():
    run = _bringup(
        "--ask",
        "Hello! Who are you?",
        "--ask",
        "What can you do?",
        "--max-tokens",
        "40",
        "--ros-args",
        "-p",
        "fusion_node:llm.seed:=5",
    )
    assert run.returncode == 0, run.stderr
    assert (
        "profile cpu_demo: camera_node, microphone_node, speech_node, fusion_node, tts_node, "
        "memory_node, text_input_node"
    ) in run.stdout
    assert run.stdout.count("robot> ") == 2
    assert run.stdout.count("first token") == 2
    assert "tokens/s" in run.stdout


def test_questions_piped_on_stdin_are_answered_in_order():
    run = _bringup("--max-tokens", "16", stdin="First question?\n\n/session other\nSecond?\n")
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.index("you> First question?"), run.stdout.index("you> Second?")
    assert first < run.stdout.index("[session other", first) < second
    assert run.stdout.count("robot> ") == 2


def test_unknown_profile_fails_with_one_line():
    run = _bringup("--profile", "mars", timeout=30)
    assert run.returncode == 2
    assert "unknown profile 'mars'" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_restarted_graph_keeps_the_conversation_in_sqlite(tmp_path):
    """Two runs of the whole cpu_demo graph; the second one finds the first one's turns."""
    from smolfusion_ros.memory.store import MemoryStore

    # Both nodes default to the same file under ROS_HOME.
    db = tmp_path / "smolfusion_ros" / "memory.db"
    for question in ("My name is Dora.", "What is my name?"):
        run = _bringup(
            "--session",
            "dora",
            "--ask",
            question,
            "--max-tokens",
            "16",
            env={"ROS_HOME": str(tmp_path)},
        )
        assert run.returncode == 0, run.stderr
    turns = MemoryStore(db).history("dora")
    assert [(t.role, t.text) for t in turns if t.role == "user"] == [
        ("user", "My name is Dora."),
        ("user", "What is my name?"),
    ]
    assert len(turns) == 4


def test_the_readme_demo_command_answers_from_the_repository_root():
    """`make demo` exactly as the README gives it, run where a user runs it."""
    namespace = unique_namespace("makedemo")
    run = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "demo",
            f"ARGS=--ask 'Hello, who are you?' --max-tokens 24 --ros-args -r __ns:={namespace}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "robot> " in run.stdout and "first token" in run.stdout


def test_sigint_answers_the_request_in_progress_then_exits_0(ros_node):
    """The bringup uses the runner's signal handling: on SIGINT the answer being streamed
    gets its result ("shutting down") before the nodes go, and the managed nodes were brought
    to active by their autostart parameter."""
    import signal

    from conftest import LifecycleClient, make_client, wait_for

    namespace = unique_namespace("bringupsig")
    process = subprocess.Popen(
        [sys.executable, "-m", "smolfusion_ros.bringup", "--no-console", "--ros-args"]
        + ["-r", f"__ns:={namespace}", "-p", "gateway_node:port:=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    try:
        client = make_client(ros_node, namespace)
        client.wait_until_ready(180)
        for name in ("fusion_node", "memory_node"):
            lifecycle = LifecycleClient(ros_node, f"{namespace}/{name}")
            lifecycle.wait(60)
            assert lifecycle.state() == "active", name
        streamed = []
        handle = client.converse(
            "Write a very long story about a lighthouse keeper.",
            max_tokens=600,
            on_feedback=streamed.append,
        )
        assert wait_for(lambda: len(streamed) >= 1, 120), "no token before SIGINT"
        process.send_signal(signal.SIGINT)
        result = handle.result(60)
        assert not result.success and "shutting down" in result.error, result.error
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
