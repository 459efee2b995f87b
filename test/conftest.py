"""Shared fixtures: ROS isolation, node processes, clients.

Every test run gets its own ROS_DOMAIN_ID and stays on localhost; every node process gets
its own namespace, so processes of different tests never answer each other.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

# Before anything imports rclpy: isolate this run from other ROS graphs on the machine.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 99)))
# Memory databases and logs of this run go to a fresh ROS home, never the user's ~/.ros.
os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="smolfusion-test-ros-home-")

REPO = Path(__file__).resolve().parent.parent
# Camera frames over 512 KB need the package's Fast DDS profile, as every node process uses.
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds.xml"))
# ... and its DYNAMIC history memory, as nodes/dds.py arranges for every node process.
os.environ.setdefault("RMW_FASTRTPS_USE_QOS_FROM_XML", "1")
# Tests exercise the package as installed into the venv (with its generated interfaces), never
# the bare source directory, which lacks msg/srv/action.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
CPU_DEMO_PARAMS = REPO / "config" / "cpu_demo.yaml"


class NodeProcess:
    """A node executable running as its own process, as it would on the robot.

    Each process gets its own ROS_HOME, so default memory databases never leak between tests
    (tests that share a database pass its path explicitly).
    """

    def __init__(
        self,
        module: str,
        namespace: str,
        params: dict | None = None,
        params_file: Path | None = CPU_DEMO_PARAMS,
        name: str = "",
    ) -> None:
        args = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={namespace}"]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        for key, value in (params or {}).items():
            args += ["-p", f"{key}:={value}"]
        self.namespace = namespace
        self.log_lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ | {"ROS_HOME": tempfile.mkdtemp(prefix="smolfusion-node-home-")},
            cwd=tempfile.gettempdir(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log_lines.append(line.rstrip())

    @property
    def log(self) -> str:
        return "\n".join(self.log_lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(2)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)


def unique_namespace(prefix: str) -> str:
    return f"/{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def rclpy_context():
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


class SpinningNode:
    """A test node spun by its own executor thread.

    Entities are never destroyed while the executor spins (rclpy races there); everything
    goes away together in close(), after the executor has stopped.
    """

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.node = rclpy.create_node(f"test_client_{uuid.uuid4().hex[:6]}")
        self.executor = MultiThreadedExecutor(num_threads=8)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(5)
        self.node.destroy_node()


@pytest.fixture
def ros_node(rclpy_context):
    spinning = SpinningNode()
    yield spinning.node
    spinning.close()


@pytest.fixture(scope="module")
def module_ros_node(rclpy_context):
    spinning = SpinningNode()
    yield spinning.node
    spinning.close()


@pytest.fixture
def start_node():
    """Start node processes; all are stopped when the test ends."""
    started: list[NodeProcess] = []

    def start(module: str, namespace: str, **kwargs) -> NodeProcess:
        process = NodeProcess(module, namespace, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def make_client(node, namespace: str):
    """A client on an already spinning node; it is cleaned up with the node."""
    from smolfusion_ros.client import SmolFusionClient

    return SmolFusionClient(node=node, namespace=namespace)


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class LifecycleClient:
    """Drives a managed node's standard lifecycle services (get_state, change_state) and its
    parameters from a test, as `ros2 lifecycle set` / a lifecycle manager would. The one
    lifecycle client of the tests (fusion_node, memory_node, speech_node and the device nodes).

    Like SmolFusionClient.wait_for_servers, wait() confirms replies reach this client before
    the test relies on them: a reply sent before the server matched our reader is dropped by
    rmw_fastrtps, so each probe is retried with a short timeout.
    """

    def __init__(self, node, full_name: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters

        self.name = full_name
        self._get = node.create_client(GetState, f"{full_name}/get_state")
        self._change = node.create_client(ChangeState, f"{full_name}/change_state")
        self._set = node.create_client(SetParameters, f"{full_name}/set_parameters")

    def _call(self, client, request, timeout: float):
        from smolfusion_ros.client import _wait_future

        return _wait_future(client.call_async(request), timeout, self.name)

    def wait(self, timeout: float = 60.0, process: NodeProcess | None = None) -> None:
        """Until all three services answer; a failure shows `process`'s log when given."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters

        from smolfusion_ros.client import ClientError, _call_until_answered

        deadline = time.monotonic() + timeout
        probes = [
            (self._get, GetState.Request()),
            # An unknown label is refused without a transition: a free probe.
            (self._change, ChangeState.Request(transition=Transition(label="probe"))),
            (self._set, SetParameters.Request()),
        ]
        for client, request in probes:
            remaining = deadline - time.monotonic()
            if not client.wait_for_service(timeout_sec=max(remaining, 0.1)):
                log = f":\n{process.log}" if process is not None else ""
                raise AssertionError(f"{self.name}: lifecycle services did not appear{log}")
            try:
                _call_until_answered(client, request, deadline, self.name)
            except ClientError:
                log = f":\n{process.log}" if process is not None else ""
                raise AssertionError(f"{self.name}: no reply reaches the test{log}") from None

    def state(self, timeout: float = 30.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(self._get, GetState.Request(), timeout).current_state.label

    def transition(self, name: str, expected: str = "", timeout: float = 60.0) -> bool:
        """configure, activate, deactivate, cleanup or shutdown; True when it succeeded (and,
        with `expected`, the node then reports that state)."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        ids = {
            "configure": Transition.TRANSITION_CONFIGURE,
            "activate": Transition.TRANSITION_ACTIVATE,
            "deactivate": Transition.TRANSITION_DEACTIVATE,
            "cleanup": Transition.TRANSITION_CLEANUP,
        }
        if name == "shutdown":
            ids["shutdown"] = {
                "unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
                "active": Transition.TRANSITION_ACTIVE_SHUTDOWN,
            }[self.state()]
        request = ChangeState.Request(transition=Transition(id=ids[name]))
        success = self._call(self._change, request, timeout).success
        return success and (not expected or self.state() == expected)

    def set_parameters(self, timeout: float = 30.0, **values) -> None:
        """Set parameters: names with '.' given as '__' (llm__model_path) or passed as a dict
        (**{"vad.end_silence_ms": 300})."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        parameters = [
            Parameter(name.replace("__", "."), value=value).to_parameter_msg()
            for name, value in values.items()
        ]
        response = self._call(self._set, SetParameters.Request(parameters=parameters), timeout)
        problems = [r.reason for r in response.results if not r.successful]
        assert not problems, problems
