"""Message stamps come from the node clock: with use_sim_time:=true and a /clock publisher (as
in bag replay) every output is stamped with the sim time, never the wall time, and whatever is
compared with a received header stamp (scene freshness, speech latency) is measured on it too.

The sim clock here starts at SIM_START s, decades before any wall time, so a stamp taken from
the wall clock, or a wall-clock "now" compared with a sim stamp, cannot pass by accident.
Each node runs in its own process over real DDS; /clock is published by the test.
"""

from __future__ import annotations

import array
import threading
import time

import numpy as np
import pytest
from conftest import make_client, unique_namespace, wait_for
from images import photo
from speech_samples import read_wav, synthesize_wav

from smolfusion_ros.backends.vlm.perception import PerceptionBackend
from smolfusion_ros.core.scene import LatestFrame, VisionWorker

SIM_START = 1000.0
# Any stamp above this came from the wall clock (2026 is ~1.8e9 s), not the sim clock.
WALL_LIKE = 1e8
ASTRONAUT = photo("astronaut.png")
SIM = {"use_sim_time": True}


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class SimClock:
    """Publishes /clock at 20 Hz from SIM_START, advancing at the real rate."""

    def __init__(self, node) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self._msg_type = Clock
        self._publisher = node.create_publisher(
            Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        )
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return SIM_START + (time.monotonic() - self._started)

    def stamp(self):
        from builtin_interfaces.msg import Time

        now = self.now()
        return Time(sec=int(now), nanosec=int((now - int(now)) * 1e9))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._publisher.publish(self._msg_type(clock=self.stamp()))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def sim_clock(ros_node):
    clock = SimClock(ros_node)
    yield clock
    clock.stop()


def assert_sim_stamp(stamp, clock: SimClock, what: str) -> None:
    value = seconds(stamp)
    assert value < WALL_LIKE, f"{what} stamped {value:.1f}: the wall clock, not the sim clock"
    assert SIM_START <= value <= clock.now() + 1.0, f"{what} stamped {value:.3f}"


# ---- core: the clock the vision worker is given ----------------------------------------------


@pytest.mark.model
def test_scene_freshness_and_question_stamps_follow_the_given_clock():
    """core.scene, ROS-free: a frame stamped 1000 s is fresh when the worker's clock says
    1029 s, stale at 1031 s (max_scene_age_s 30), whatever the wall clock says."""
    sim = [SIM_START]
    scenes = []
    worker = VisionWorker(
        PerceptionBackend(ocr=False),
        LatestFrame(),
        interval_s=0.05,
        max_scene_age_s=30.0,
        on_scene=scenes.append,
        now=lambda: sim[0],
    )
    worker.start()
    try:
        assert wait_for(lambda: worker.ready, 60), worker.load_error
        worker.frames.put(ASTRONAUT, SIM_START)
        assert wait_for(lambda: scenes, 60)
        assert scenes[-1].produced_at == SIM_START
        sim[0] = SIM_START + 29.0
        assert "Perception summary" in worker.scene_text()
        sim[0] = SIM_START + 31.0
        assert worker.scene_text() == ""
        # A question about a given image is stamped with the clock's now; one about the
        # newest frame with that frame's stamp.
        _result, stamp = worker.ask("Who is there?", ASTRONAUT, timeout=60)
        assert stamp == SIM_START + 31.0
        _result, stamp = worker.ask("Who is there?", None, timeout=60)
        assert stamp == SIM_START
    finally:
        worker.stop()


# ---- nodes over DDS with use_sim_time ---------------------------------------------------------


@pytest.mark.ros
def test_text_input_node_stamps_utterances_with_sim_time(ros_node, start_node, sim_clock):
    from std_msgs.msg import String

    from smolfusion_ros.msg import Utterance

    namespace = unique_namespace("simtext")
    process = start_node(
        "smolfusion_ros.nodes.text_input_node", namespace, params=SIM, params_file=None
    )
    received: list = []
    ros_node.create_subscription(Utterance, f"{namespace}/utterance", received.append, 10)
    text_pub = ros_node.create_publisher(String, f"{namespace}/text_in", 10)
    assert wait_for(lambda: text_pub.get_subscription_count() > 0, 60), process.log

    def stamped_in_sim() -> bool:
        # Until the node has its first /clock message its sim time is 0: keep asking.
        text_pub.publish(String(data="hello"))
        return any(seconds(m.stamp) >= SIM_START for m in received)

    assert wait_for(stamped_in_sim, 60, interval=0.5), process.log
    for msg in received:
        assert seconds(msg.stamp) < WALL_LIKE, seconds(msg.stamp)
    assert_sim_stamp(
        next(m for m in received if seconds(m.stamp) >= SIM_START).stamp, sim_clock, "utterance"
    )


@pytest.mark.ros
@pytest.mark.model
def test_fusion_node_stamps_scene_and_response_with_sim_time(ros_node, start_node, sim_clock):
    """Camera frames stamped with sim time: the scene carries the frame's stamp, the scene is
    fresh enough to go into an answer (freshness on the node clock), and the response Turn
    and its stream are stamped with sim time."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from smolfusion_ros.msg import ResponseChunk, SceneContext, Turn

    namespace = unique_namespace("simfusion")
    process = start_node(
        "smolfusion_ros.nodes.fusion_node",
        namespace,
        params={**SIM, "llm.temperature": 0.0, "vision.interval_s": 0.3},
    )
    scenes, turns, chunks = [], [], []
    ros_node.create_subscription(SceneContext, f"{namespace}/scene", scenes.append, 10)
    ros_node.create_subscription(Turn, f"{namespace}/response", turns.append, 10)
    ros_node.create_subscription(ResponseChunk, f"{namespace}/response_stream", chunks.append, 100)
    frames = ros_node.create_publisher(
        Image, f"{namespace}/camera_node/frame", qos_profile_sensor_data
    )
    height, width = ASTRONAUT.shape[:2]
    sent: list[float] = []
    stop = threading.Event()

    def camera() -> None:
        while not stop.is_set():
            msg = Image(
                height=height,
                width=width,
                encoding="rgb8",
                step=width * 3,
                data=ASTRONAUT.tobytes(),
            )
            msg.header.stamp = sim_clock.stamp()
            sent.append(seconds(msg.header.stamp))
            frames.publish(msg)
            stop.wait(0.2)

    feeder = threading.Thread(target=camera, daemon=True)
    feeder.start()
    try:
        client = make_client(ros_node, namespace)
        client.wait_until_ready(120)
        assert wait_for(lambda: scenes, 60), process.log[-3000:]
        scene = scenes[-1]
        assert_sim_stamp(scene.frame_stamp, sim_clock, "scene frame_stamp")
        # The scene names the frame it describes: the stamp of a frame the test sent.
        assert min(abs(seconds(scene.frame_stamp) - s) for s in sent) < 1e-3
        # Not a visual question, use_vision auto: the newest scene goes into the prompt only
        # when it is fresh by the node clock (a wall-clock "now" would call it decades old).
        reply = client.chat("Say hello to me.", session_id="sim", max_tokens=8)
        assert reply.success, reply.error
        assert reply.scene_used and reply.scene_text.startswith("Perception summary"), (
            reply.scene_text
        )
        assert wait_for(lambda: any(t.request_id == reply.request_id for t in turns), 30)
        turn = next(t for t in turns if t.request_id == reply.request_id)
        assert_sim_stamp(turn.stamp, sim_clock, "response turn")
        # The final chunk travels on its own topic: it may arrive after the reply.
        assert wait_for(
            lambda: any(c.request_id == reply.request_id and c.is_final for c in chunks), 30
        )
        own = [c for c in chunks if c.request_id == reply.request_id]
        for chunk in own:
            assert_sim_stamp(chunk.stamp, sim_clock, "response chunk")
    finally:
        stop.set()
        feeder.join(2)


@pytest.mark.ros
@pytest.mark.model
def test_speech_node_stamps_and_measures_on_sim_time(ros_node, start_node, sim_clock, tmp_path):
    """Audio chunks stamped with sim time: the final utterance is stamped with sim time and
    the latency measured from the chunks' stamps is a real latency (a wall-clock "now" minus a
    sim stamp would be decades)."""
    from diagnostic_msgs.msg import DiagnosticArray

    from smolfusion_ros.msg import AudioChunk, Utterance
    from smolfusion_ros.nodes.speech_node import AUDIO_QOS

    namespace = unique_namespace("simspeech")
    process = start_node(
        "smolfusion_ros.nodes.speech_node",
        namespace,
        params_file=None,
        params={**SIM, "diagnostics_period_s": 0.25},
    )
    utterances, diagnostics = [], {}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if namespace in status.name and "speech" in status.name:
                diagnostics.update({kv.key: kv.value for kv in status.values})

    ros_node.create_subscription(Utterance, f"{namespace}/utterance", utterances.append, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    audio_pub = ros_node.create_publisher(AudioChunk, f"{namespace}/audio", AUDIO_QOS)
    # Listening (active) and on the sim clock: its diagnostics come on a sim-clock timer.
    assert wait_for(
        lambda: audio_pub.get_subscription_count() > 0 and diagnostics.get("state"), 120
    ), process.log
    frames, rate = read_wav(synthesize_wav("Hello robot, how are you today?", tmp_path / "a.wav"))
    samples = frames[:, 0]
    audio = np.concatenate(
        [np.zeros(rate // 2, np.int16), samples, np.zeros(int(1.5 * rate), np.int16)]
    )
    step = rate // 10
    start = time.monotonic()
    for k, i in enumerate(range(0, len(audio), step)):
        delay = start + k * 0.1 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        chunk = audio[i : i + step]
        # The chunk's stamp is the sim time of its first sample, as microphone_node stamps.
        msg = AudioChunk(stamp=sim_clock.stamp(), seq=k, sample_rate=rate, channels=1)
        msg.samples = array.array("h", np.asarray(chunk, dtype=np.int16).tobytes())
        audio_pub.publish(msg)
    assert wait_for(lambda: any(u.is_final for u in utterances), 120), process.log
    for utterance in utterances:
        assert_sim_stamp(utterance.stamp, sim_clock, "utterance")
    assert wait_for(lambda: diagnostics.get("utterances") == "1", 30), diagnostics
    assert wait_for(lambda: float(diagnostics.get("last_latency_s", -1)) >= 0, 30), diagnostics
    # Generous bound: a latency, not the distance between the wall and the sim clock.
    assert 0.0 <= float(diagnostics["last_latency_s"]) < 60.0, diagnostics
