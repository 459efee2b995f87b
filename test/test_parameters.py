"""Parameters as rqt and `ros2 param` see them: descriptors with ranges and read_only, and
`ros2 param set` taken where a change makes sense (tts voice and volume, the vision scene
interval), refused with a reason everywhere else.

The first tests declare specs on real rclpy nodes in this process (no DDS needed); the others
run tts_node and fusion_node as processes and talk to their ~/describe_parameters and
~/set_parameters services over DDS, as `ros2 param describe/set` and rqt_reconfigure do.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import unique_namespace, wait_for
from speech_samples import read_wav

from smolfusion_ros.nodes.parameters import (
    ACTIVATE,
    CONFIGURE,
    FLOAT_RANGE_MAX,
    LIVE,
    STARTUP,
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameter_specs,
    declare_parameters,
    one_of,
    watch_parameters,
)


def _node(name: str, **overrides):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    return Node(
        f"{name}_{time.monotonic_ns()}",
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
    )


def _set(node, **values):
    from rclpy.parameter import Parameter

    return node.set_parameters([Parameter(k, value=v) for k, v in values.items()])[0]


# ---- in-process: descriptors and the set guard ----------------------------------------------


def test_descriptors_carry_ranges_choices_and_read_only(rclpy_context):
    node = _node("descriptors")
    try:
        declare_parameter_specs(
            node,
            [
                ParamSpec("count", 5, "an int", between(1, 10)),
                ParamSpec("period", 1.0, "a float", at_least(0.1)),
                ParamSpec("mode", "a", "a choice", one_of("a", "b")),
                ParamSpec("free", "", "anything", dynamic_typing=True),
            ],
        )
        count, period, mode, free = node.describe_parameters(["count", "period", "mode", "free"])
        assert count.read_only and period.read_only and mode.read_only  # a plain node: startup
        assert [(r.from_value, r.to_value, r.step) for r in count.integer_range] == [(1, 10, 0)]
        assert not count.floating_point_range
        assert [(r.from_value, r.to_value) for r in period.floating_point_range] == [
            (0.1, FLOAT_RANGE_MAX)
        ]
        assert "one of: a, b" in mode.additional_constraints
        assert free.dynamic_typing
        refused = _set(node, count=7)
        assert not refused.successful and "read-only" in refused.reason
    finally:
        node.destroy_node()


def test_a_start_value_out_of_range_is_the_one_line_config_error(rclpy_context):
    """rclpy refuses a declared value outside the descriptor's range with an exception; it
    ends as the spec's one line, as before ranges were declared. A choice is checked when the
    value is read (declare_parameters reads at once; managed nodes at configure)."""
    for overrides, spec, message in (
        ({"n": 0}, ParamSpec("n", 4, "", between(1, 8)), "parameter n=0: must be between 1 and 8"),
        ({"t": 0.01}, ParamSpec("t", 1.0, "", at_least(0.1)), "parameter t=0.01: must be >= 0.1"),
        (
            {"m": "c"},
            ParamSpec("m", "a", "", one_of("a", "b")),
            "parameter m='c': must be one of a, b",
        ),
    ):
        node = _node("range", **overrides)
        try:
            with pytest.raises(ConfigError) as caught:
                declare_parameters(node, [spec])
            assert str(caught.value) == message
        finally:
            node.destroy_node()


def test_a_real_node_refuses_an_out_of_range_start_value_with_one_line(rclpy_context):
    """tts_node's volume (0..2) given as 3.0: the node's constructor raises the one line the
    runner prints (nothing is spoken, no sound card or espeak-ng is touched before configure)."""
    from rclpy.parameter import Parameter

    from smolfusion_ros.nodes.tts_node import TTSNode

    with pytest.raises(
        ConfigError, match=r"^parameter volume=3\.0: must be between 0\.0 and 2\.0$"
    ):
        TTSNode(
            f"tts_range_{time.monotonic_ns()}",
            parameter_overrides=[Parameter("volume", value=3.0)],
        )


def test_managed_node_takes_sets_only_when_the_value_is_read(rclpy_context):
    """STARTUP: never; CONFIGURE: while unconfigured; ACTIVATE: while not active; LIVE: always,
    applied through watch_parameters, and the spec's own check runs on every set."""
    from smolfusion_ros.nodes.managed import ManagedNode

    applied: list[dict] = []

    class Probe(ManagedNode):
        def __init__(self) -> None:
            super().__init__(f"probe_{time.monotonic_ns()}")
            declare_parameter_specs(
                self,
                [
                    ParamSpec("topic", "x", "", applies=STARTUP),
                    ParamSpec("model", "m", "", applies=CONFIGURE),
                    ParamSpec("window", 3, "", between(1, 9), applies=ACTIVATE),
                    ParamSpec("rate", 1.0, "", between(0.5, 2.0), applies=LIVE),
                    ParamSpec("engine", "a", "", one_of("a", "b")),  # managed default: configure
                ],
            )
            watch_parameters(self, self._apply)

        def _apply(self, changes: dict) -> None:
            if changes.get("rate") == 1.5:
                raise ValueError("1.5 is not allowed by the engine")
            applied.append(changes)

    node = Probe()
    try:
        assert node.describe_parameter("topic").read_only
        assert not node.describe_parameter("model").read_only
        assert "read at configure" in node.describe_parameter("engine").additional_constraints
        assert _set(node, model="n", window=4, rate=0.7).successful
        assert not _set(node, engine="c").successful  # the one_of check
        assert applied == [{"rate": 0.7}]
        node.trigger_configure()
        assert node.lifecycle_state == "inactive"
        refused = _set(node, model="o")
        assert not refused.successful and "read at configure" in refused.reason
        assert _set(node, window=5).successful  # not active yet
        node.trigger_activate()
        refused = _set(node, window=6)
        assert not refused.successful and "read at activate" in refused.reason
        assert _set(node, rate=1.9).successful
        refused = _set(node, rate=1.5)
        assert not refused.successful and "not allowed by the engine" in refused.reason
        refused = _set(node, rate=2.5)
        assert not refused.successful and "out of range" in refused.reason
        assert node.get_parameter("rate").value == 1.9
        assert node.get_parameter("model").value == "n"
        assert applied[-1] == {"rate": 1.9}
    finally:
        node.close()
        node.destroy_node()


# ---- over DDS: ~/describe_parameters and ~/set_parameters of node processes ------------------


class Parameters:
    """The ~/describe_parameters, ~/get_parameters and ~/set_parameters services of one node,
    as `ros2 param` and rqt_reconfigure call them (the same services on Humble and later)."""

    def __init__(self, node, full_name: str) -> None:
        from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters

        self.name = full_name
        self._types = DescribeParameters, GetParameters, SetParameters
        self._describe = node.create_client(DescribeParameters, f"{full_name}/describe_parameters")
        self._get = node.create_client(GetParameters, f"{full_name}/get_parameters")
        self._set = node.create_client(SetParameters, f"{full_name}/set_parameters")

    def wait(self, process, timeout: float = 60.0) -> None:
        from smolfusion_ros.client import ClientError, _call_until_answered

        deadline = time.monotonic() + timeout
        for client in (self._describe, self._get, self._set):
            ok = client.wait_for_service(timeout_sec=max(deadline - time.monotonic(), 0.1))
            assert ok, f"{self.name}: parameter services did not appear:\n{process.log}"
        try:  # the first reply after discovery can be lost (rmw_fastrtps): retried reads
            _call_until_answered(self._get, self._types[1].Request(), deadline, self.name)
            _call_until_answered(self._describe, self._types[0].Request(), deadline, self.name)
        except ClientError:
            raise AssertionError(
                f"{self.name}: no reply reaches the test:\n{process.log}"
            ) from None

    def _call(self, client, request, timeout: float = 30.0):
        from smolfusion_ros.client import _wait_future

        return _wait_future(client.call_async(request), timeout, self.name)

    def describe(self, *names: str) -> dict:
        response = self._call(self._describe, self._types[0].Request(names=list(names)))
        return dict(zip(names, response.descriptors, strict=True))

    def get(self, name: str):
        from rclpy.parameter import parameter_value_to_python

        response = self._call(self._get, self._types[1].Request(names=[name]))
        return parameter_value_to_python(response.values[0])

    def set(self, name: str, value):
        """One set; returns rcl_interfaces SetParametersResult (successful, reason)."""
        from rclpy.parameter import Parameter

        request = self._types[2].Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]
        )
        return self._call(self._set, request).results[0]


class Diagnostics:
    """The newest /diagnostics values of one status name prefix."""

    def __init__(self, node, prefix: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self._prefix = prefix
        self._lock = threading.Lock()
        self.values: dict[str, str] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on, 50)

    def _on(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(self._prefix):
                with self._lock:
                    self.values = {kv.key: kv.value for kv in status.values}

    def get(self, key: str) -> str:
        with self._lock:
            return self.values.get(key, "")


def _peak(path) -> float:
    samples, _rate = read_wav(path)
    return float(np.max(np.abs(samples)))


@pytest.mark.ros
def test_tts_voice_and_volume_change_at_once_and_the_rest_is_refused(
    ros_node, start_node, tmp_path
):
    from test_tts_node import TTSHarness, wav_files

    namespace = unique_namespace("ttsparam")
    out = tmp_path / "wav"
    process = start_node(
        "smolfusion_ros.nodes.tts_node",
        namespace,
        params={"output": str(out), "autostart": True, "volume": 1.0},
        params_file=None,
    )
    harness = TTSHarness(ros_node, namespace)
    harness.wait_ready(process, timeout=60)
    params = Parameters(ros_node, f"{namespace}/tts_node")
    params.wait(process)
    diagnostics = Diagnostics(ros_node, f"{namespace}/tts_node")

    # What rqt_reconfigure shows.
    described = params.describe("volume", "rate_wpm", "voice", "output", "diagnostics_period_s")
    volume = described["volume"]
    assert [(r.from_value, r.to_value) for r in volume.floating_point_range] == [(0.0, 2.0)]
    assert not volume.read_only and "at once" in volume.additional_constraints
    assert [(r.from_value, r.to_value) for r in described["rate_wpm"].integer_range] == [(40, 600)]
    assert not described["voice"].read_only
    assert "read at configure" in described["output"].additional_constraints
    assert described["diagnostics_period_s"].read_only

    sentence = "Hello, I am speaking at my normal volume."
    assert harness.say(sentence, timeout=60).success
    assert wait_for(lambda: len(wav_files(out)) == 1, 30), process.log
    loud = _peak(wav_files(out)[0])

    # Volume: accepted and used by the next sentence, without a reconfigure.
    result = params.set("volume", 0.25)
    assert result.successful, result.reason
    assert harness.say(sentence, timeout=60).success
    assert wait_for(lambda: len(wav_files(out)) == 2, 30), process.log
    quiet = _peak(wav_files(out)[1])
    assert quiet < 0.6 * loud, (quiet, loud)
    assert params.get("volume") == 0.25

    # Out of range and wrong type: refused with rclpy's reason; the value stays.
    result = params.set("volume", 5.0)
    assert not result.successful and "out of range" in result.reason, result.reason
    result = params.set("volume", "loud")
    assert not result.successful and "type" in result.reason.lower(), result.reason
    assert params.get("volume") == 0.25

    # Voice: an unknown one is refused with the engine's reason, a real one is taken.
    result = params.set("voice", "xx-no-such-voice")
    assert not result.successful and "xx-no-such-voice" in result.reason, result.reason
    assert params.get("voice") == "en-us"
    result = params.set("voice", "en-gb")
    assert result.successful, result.reason
    assert wait_for(lambda: diagnostics.get("voice") == "en-gb", 30), diagnostics.values
    assert harness.say("Now with another voice.", timeout=60).success

    # Read at configure while active, and read-only: refused with a reason that says why.
    result = params.set("output", str(tmp_path / "elsewhere"))
    assert not result.successful and "read at configure" in result.reason, result.reason
    result = params.set("diagnostics_period_s", 0.5)
    assert not result.successful and "read-only" in result.reason, result.reason
    assert process.alive() and "Traceback" not in process.log


class FramePublisher:
    """Publishes changing frames on fusion_node's camera topic, as camera_node would."""

    def __init__(self, node, topic: str) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self._image = Image
        self._pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        while not self._stop.wait(0.25):
            frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            msg = self._image(
                height=120, width=160, encoding="rgb8", step=160 * 3, data=frame.tobytes()
            )
            msg.header.frame_id = "camera"
            self._pub.publish(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.ros
@pytest.mark.model
def test_vision_interval_is_taken_by_the_running_scene_loop(ros_node, start_node):
    """vision.interval_s set from an hour to 0.2 s: scenes follow within seconds, without a
    reconfigure (perception back end, the bundled detectors; the LLM loads but is idle)."""
    from smolfusion_ros.msg import SceneContext

    namespace = unique_namespace("visionparam")
    process = start_node(
        "smolfusion_ros.nodes.fusion_node",
        namespace,
        params={
            "vision.backend": "perception",
            "vision.interval_s": 3600.0,
            "vision.greeting": "''",
        },
    )
    scenes: list[float] = []
    lock = threading.Lock()

    def on_scene(_msg) -> None:
        with lock:
            scenes.append(time.monotonic())

    def count() -> int:
        with lock:
            return len(scenes)

    ros_node.create_subscription(SceneContext, f"{namespace}/scene", on_scene, 50)
    params = Parameters(ros_node, f"{namespace}/fusion_node")
    params.wait(process)
    interval = params.describe("vision.interval_s")["vision.interval_s"]
    assert not interval.read_only
    assert [r.from_value for r in interval.floating_point_range] == [0.05]
    frames = FramePublisher(ros_node, f"{namespace}/camera_node/frame")
    try:
        # The first frame is described at once; with an hour's interval, no second one.
        assert wait_for(lambda: count() >= 1, 180), process.log
        first = count()
        result = params.set("vision.interval_s", 0.01)
        assert not result.successful and "out of range" in result.reason, result.reason
        result = params.set("vision.interval_s", 0.2)
        assert result.successful, result.reason
        assert wait_for(lambda: count() >= first + 3, 120), (count(), process.log)
        # Read-only here: the subscription's topic.
        result = params.set("vision.frame_topic", "other/frame")
        assert not result.successful and "read-only" in result.reason
    finally:
        frames.close()
    assert process.alive() and "Traceback" not in process.log


@pytest.mark.ros
@pytest.mark.parametrize(
    ("module", "params", "line"),
    [
        (
            "smolfusion_ros.nodes.camera_node",
            {"rate_hz": 500.0},
            "parameter rate_hz=500.0: must be between 0.01 and 120.0",
        ),
        (
            "smolfusion_ros.nodes.knowledge_node",
            {"diagnostics_period_s": 0.0},
            "parameter diagnostics_period_s=0.0: must be >= 0.1",
        ),
    ],
    ids=["managed", "plain"],
)
def test_a_node_process_given_an_out_of_range_value_stops_with_one_line(
    start_node, module, params, line
):
    process = start_node(module, unique_namespace("badparam"), params=params, params_file=None)
    assert process.wait(120) == 2, process.log
    assert f"configuration error: {line}" in process.log, process.log
    assert sum("configuration error" in entry for entry in process.log_lines) == 1, process.log
    assert "Traceback" not in process.log, process.log
