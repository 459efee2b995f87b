"""tts_node, camera_node and microphone_node as managed nodes, each in its own process over
real DDS, driven through the standard lifecycle services: configure -> activate ->
deactivate -> activate -> deactivate -> cleanup, then configured again with a changed
parameter (and a bad one, which fails the transition and leaves the node unconfigured)."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from conftest import LifecycleClient, unique_namespace, wait_for
from speech_samples import synthesize_wav

pytestmark = pytest.mark.ros


# ---- tts_node --------------------------------------------------------------------------------


def test_tts_node_lifecycle(ros_node, start_node, tmp_path):
    from smolfusion_ros.srv import Say

    namespace = unique_namespace("ttslife")
    first, second = tmp_path / "first", tmp_path / "second"
    process = start_node(
        "smolfusion_ros.nodes.tts_node",
        namespace,
        params={"output": str(first), "autostart": False},
        params_file=None,
    )
    life = LifecycleClient(ros_node, f"{namespace}/tts_node")
    life.wait(process=process)
    say_client = ros_node.create_client(Say, f"{namespace}/say")
    assert wait_for(say_client.service_is_ready, 20)

    def say(text: str):
        future = say_client.call_async(Say.Request(text=text, voice=""))
        assert wait_for(future.done, 30), f"say timed out:\n{process.log}"
        return future.result()

    assert life.state() == "unconfigured"
    refused = say("Hello.")
    assert not refused.success and "inactive" in refused.error
    assert life.transition("configure", "inactive"), process.log
    assert "inactive" in say("Hello.").error
    assert life.transition("activate", "active"), process.log
    assert say("First time.").success
    assert life.transition("deactivate", "inactive"), process.log
    assert "inactive" in say("Not now.").error
    assert life.transition("activate", "active"), process.log
    assert say("Second time.").success
    assert len(list(first.glob("*.wav"))) == 2
    assert life.transition("deactivate", "inactive"), process.log
    assert life.transition("cleanup", "unconfigured"), process.log

    # A bad voice fails configure (one clear line) and leaves the node unconfigured.
    life.set_parameters(voice="xx-no-such-voice")
    assert not life.transition("configure", "inactive")
    assert life.state() == "unconfigured"
    assert any("xx-no-such-voice" in line for line in process.log_lines), process.log
    # Fixed, with another output directory: the next configure uses it.
    life.set_parameters(voice="en-gb", output=str(second))
    assert life.transition("configure", "inactive"), process.log
    assert life.transition("activate", "active"), process.log
    assert say("Somewhere else.").success
    assert len(list(second.glob("*.wav"))) == 1 and len(list(first.glob("*.wav"))) == 2
    assert life.transition("deactivate", "inactive")
    assert life.transition("cleanup", "unconfigured")
    assert process.alive()
    assert "Traceback" not in process.log


# ---- camera_node -----------------------------------------------------------------------------


class Frames:
    def __init__(self, ros_node, namespace: str) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self.frames: list = []
        self._lock = threading.Lock()
        ros_node.create_subscription(
            Image, f"{namespace}/camera_node/frame", self._on_frame, qos_profile_sensor_data
        )

    def _on_frame(self, msg) -> None:
        with self._lock:
            self.frames.append(msg)

    def count(self) -> int:
        with self._lock:
            return len(self.frames)

    def arrives(self, timeout: float = 20.0) -> bool:
        start = self.count()
        return wait_for(lambda: self.count() >= start + 3, timeout)

    def stays_quiet(self, seconds: float) -> bool:
        """No frame for `seconds` (after one period for a frame already on its way)."""
        time.sleep(0.5)
        start = self.count()
        time.sleep(seconds)
        return self.count() == start


def test_camera_node_lifecycle(ros_node, start_node, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"img_{i}.png"), image)
    namespace = unique_namespace("camlife")
    process = start_node(
        "smolfusion_ros.nodes.camera_node",
        namespace,
        params={"source": str(tmp_path), "rate_hz": 8.0, "max_side": 80, "autostart": False},
        params_file=None,
    )
    life = LifecycleClient(ros_node, f"{namespace}/camera_node")
    frames = Frames(ros_node, namespace)
    life.wait(process=process)
    assert life.transition("configure", "inactive"), process.log
    assert frames.stays_quiet(1.0), "an inactive camera publishes nothing"
    assert life.transition("activate", "active"), process.log
    assert frames.arrives(), process.log
    assert frames.frames[-1].width == 80
    assert life.transition("deactivate", "inactive"), process.log
    assert frames.stays_quiet(1.5)
    assert life.transition("activate", "active"), process.log
    assert frames.arrives(), process.log
    assert life.transition("deactivate", "inactive")
    assert life.transition("cleanup", "unconfigured"), process.log

    life.set_parameters(source=str(tmp_path / "nowhere"))
    assert not life.transition("configure", "inactive")
    assert life.state() == "unconfigured"
    life.set_parameters(source=str(tmp_path), max_side=40)
    assert life.transition("configure", "inactive"), process.log
    assert life.transition("activate", "active"), process.log
    assert frames.arrives(), process.log
    assert frames.frames[-1].width == 40, "the changed max_side is used"
    assert life.transition("deactivate", "inactive")
    assert life.transition("cleanup", "unconfigured")
    assert process.alive()
    assert "Traceback" not in process.log


# ---- microphone_node -------------------------------------------------------------------------


def test_microphone_node_lifecycle(ros_node, start_node, tmp_path):
    from smolfusion_ros.msg import AudioChunk

    path = synthesize_wav("Hello robot, how are you today?", tmp_path / "s.wav", sample_rate=16000)
    namespace = unique_namespace("miclife")
    chunks: list = []
    lock = threading.Lock()

    def on_audio(msg) -> None:
        with lock:
            chunks.append(msg)

    def count() -> int:
        with lock:
            return len(chunks)

    ros_node.create_subscription(AudioChunk, f"{namespace}/audio", on_audio, 100)
    process = start_node(
        "smolfusion_ros.nodes.microphone_node",
        namespace,
        params={
            "wav_file": str(path),
            "loop": True,
            "wait_for_subscriber_s": 10.0,
            "autostart": False,
        },
        params_file=None,
    )
    life = LifecycleClient(ros_node, f"{namespace}/microphone_node")
    life.wait(process=process)
    assert life.transition("configure", "inactive"), process.log
    assert life.transition("activate", "active"), process.log
    assert wait_for(lambda: count() >= 5, 20), process.log
    assert chunks[0].seq == 0 and len(chunks[0].samples) == 1600
    assert life.transition("deactivate", "inactive"), process.log
    time.sleep(0.5)  # a chunk already on its way
    stopped_at = count()
    time.sleep(1.0)
    assert count() == stopped_at, "an inactive microphone publishes nothing"
    assert life.transition("activate", "active"), process.log
    assert wait_for(lambda: count() >= stopped_at + 5, 20), process.log
    with lock:
        seqs = [m.seq for m in chunks]
    assert seqs == list(range(len(seqs))), "seq counts on across deactivate/activate"
    assert life.transition("deactivate", "inactive")
    assert life.transition("cleanup", "unconfigured"), process.log

    life.set_parameters(wav_file=str(tmp_path / "nope.wav"))
    assert not life.transition("configure", "inactive")
    assert life.state() == "unconfigured"
    life.set_parameters(wav_file=str(path), chunk_ms=50)
    assert life.transition("configure", "inactive"), process.log
    before = count()
    assert life.transition("activate", "active"), process.log
    assert wait_for(lambda: count() >= before + 5, 20), process.log
    with lock:
        assert len(chunks[-1].samples) == 800, "the changed chunk_ms is used"
    assert life.transition("deactivate", "inactive")
    assert life.transition("cleanup", "unconfigured")
    assert process.alive()
    assert "Traceback" not in process.log
