"""camera_node as a separate process: image_raw in, ~/frame out, over real DDS.

Covers resizing, rate throttling, unchanged-frame skipping (with the still-alive heartbeat),
malformed images dropped and counted on /diagnostics, and capture from an image folder and a
video file written by the test.
"""

from __future__ import annotations

import array
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import unique_namespace, wait_for

from smolfusion_ros.io import rgb_to_image_fields

pytestmark = pytest.mark.ros

CAMERA = "smolfusion_ros.nodes.camera_node"


def scene(height: int, width: int, shift: int = 0, seed: int = 0) -> np.ndarray:
    """A gradient with shapes and text; `shift` moves the shapes, `seed` changes the colours."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [
            (xx * 255 // width + seed * 70) % 256,
            yy * 255 // height,
            (xx + yy) * 255 // (width + height),
        ],
        axis=2,
    ).astype(np.uint8)
    cv2.rectangle(rgb, (10 + shift, 10), (width // 3 + shift, height // 3), (255, 40, 0), -1)
    cv2.circle(rgb, (width // 2, height // 2 + shift % 40), height // 5, (20, 200, 90), -1)
    cv2.putText(rgb, f"{seed}", (20, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 2, (250,) * 3, 3)
    return rgb


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


class CameraHarness:
    """Publishes image_raw, collects ~/frame and this namespace's /diagnostics on the test node."""

    def __init__(self, node, namespace: str, subscribe_raw: bool = True) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self.node = node
        self.namespace = namespace
        self.frames: list[tuple[float, object]] = []
        self.diagnostics: dict[str, str] = {}
        self.diag_name = ""
        self.diag_seq = 0
        self._lock = threading.Lock()
        self.frame_topic = f"{namespace}/camera_node/frame"
        self.raw_topic = f"{namespace}/image_raw"
        self.publisher = (
            node.create_publisher(Image, self.raw_topic, qos_profile_sensor_data)
            if subscribe_raw
            else None
        )
        node.create_subscription(Image, self.frame_topic, self._on_frame, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_frame(self, msg) -> None:
        with self._lock:
            self.frames.append((time.monotonic(), msg))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if self.namespace in status.name and "camera" in status.name:
                with self._lock:
                    self.diag_name = status.name
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diag_seq += 1

    def count(self, key: str) -> int:
        with self._lock:
            return int(self.diagnostics.get(key, "-1"))

    def fresh_diagnostics(self, timeout: float = 5.0) -> None:
        """Wait for a /diagnostics message newer than everything published so far."""
        time.sleep(0.3)  # let frames still in flight reach the node
        with self._lock:
            seen = self.diag_seq
        assert wait_for(lambda: self.diag_seq > seen, timeout), "no /diagnostics"

    def frame_count(self) -> int:
        with self._lock:
            return len(self.frames)

    def frames_since(self, index: int) -> list:
        with self._lock:
            return [msg for _, msg in self.frames[index:]]

    def wait_connected(self, process, timeout: float = 20.0) -> None:
        def connected() -> bool:
            if self.publisher is not None and self.publisher.get_subscription_count() == 0:
                return False
            return self.node.count_publishers(self.frame_topic) > 0

        assert wait_for(connected, timeout), f"camera_node did not come up:\n{process.log}"

    def warm_up(self, process, rgb: np.ndarray, timeout: float = 10.0) -> None:
        """Publish until a frame comes back: best-effort samples sent before the node's reader
        has matched this writer are lost, so the first frame is repeated until one arrives."""
        deadline = time.monotonic() + timeout
        while self.frame_count() == 0 and time.monotonic() < deadline:
            self.publish(rgb)
            wait_for(lambda: self.frame_count() > 0, 0.3)
        assert self.frame_count() > 0, f"no frame came back:\n{process.log}"

    def publish(self, rgb: np.ndarray | None = None, encoding: str = "bgr8", **override) -> None:
        from sensor_msgs.msg import Image

        msg = Image()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "test_cam"
        if rgb is not None:
            height, width, enc, step, data = rgb_to_image_fields(rgb, encoding)
            msg.height, msg.width, msg.encoding, msg.step = height, width, enc, step
            msg.data = array.array("B", data)
        for key, value in override.items():
            setattr(msg, key, array.array("B", value) if key == "data" else value)
        self.publisher.publish(msg)


def as_rgb(msg) -> np.ndarray:
    assert msg.encoding == "rgb8"
    assert msg.step == msg.width * 3
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)


def stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def test_resizes_throttles_and_skips_unchanged_frames(ros_node, start_node):
    namespace = unique_namespace("camera")
    process = start_node(
        CAMERA,
        namespace,
        params_file=None,
        params={
            "autostart": True,
            "max_side": 64,
            "rate_hz": 4.0,
            "change_threshold": 0.02,
            "max_still_s": 1.0,
        },
    )
    harness = CameraHarness(ros_node, namespace)
    harness.wait_connected(process)

    # Phase 1: a new 320x240 frame every 50 ms for 1.5 s; at 4 Hz about 6 get through.
    # (Inputs stay below Fast DDS's 512 KB shared-memory segment: larger best-effort samples
    # travel fragmented over UDP, where the test could lose them.)
    first = scene(240, 320, seed=1)
    harness.warm_up(process, first)
    msg = harness.frames_since(0)[0]
    assert (msg.height, msg.width) == (48, 64)
    assert msg.header.frame_id == "test_cam"  # the driver's header is kept
    expected = cv2.resize(first, (64, 48), interpolation=cv2.INTER_AREA)
    assert mean_abs(as_rgb(msg), expected) < 2.0
    time.sleep(0.3)
    start = harness.frame_count()
    for i in range(30):
        harness.publish(scene(240, 320, shift=3 * i + 30, seed=i % 3))
        time.sleep(0.05)
    time.sleep(0.3)
    moving = harness.frames_since(start)
    assert 4 <= len(moving) <= 8, f"{len(moving)} frames in 1.5 s at 4 Hz"
    stamps = [stamp_s(m) for m in moving]
    assert min(np.diff(stamps)) >= 0.2, stamps  # never faster than the rate (with jitter)
    assert all((m.height, m.width) == (48, 64) for m in moving)

    # Phase 2: the same frame (with sensor noise) every 50 ms for 2.3 s: published once, then
    # only as a heartbeat every max_still_s = 1 s.
    still = scene(240, 320, seed=2, shift=7)
    noise = np.random.default_rng(3)
    start = harness.frame_count()
    skipped_before = harness.count("skipped_unchanged")
    for _ in range(46):
        jitter = noise.integers(-2, 3, still.shape)
        harness.publish(np.clip(still.astype(int) + jitter, 0, 255).astype(np.uint8))
        time.sleep(0.05)
    time.sleep(0.3)
    quiet = harness.frames_since(start)
    assert 2 <= len(quiet) <= 4, f"{len(quiet)} frames of a still scene in 2.3 s"
    assert wait_for(lambda: harness.count("skipped_unchanged") >= skipped_before + 4, 3)
    assert wait_for(lambda: harness.count("published") == harness.frame_count(), 3)
    assert harness.count("dropped_bad") == 0
    assert process.alive()


def test_malformed_images_are_dropped_counted_and_survived(ros_node, start_node):
    namespace = unique_namespace("camera_bad")
    process = start_node(
        CAMERA,
        namespace,
        params_file=None,
        params={"autostart": True, "rate_hz": 50.0, "max_side": 32},
    )
    harness = CameraHarness(ros_node, namespace)
    harness.wait_connected(process)
    harness.warm_up(process, scene(40, 60, seed=2))
    harness.fresh_diagnostics()
    assert namespace in harness.diag_name
    received = harness.count("received")
    warm_frames = harness.frame_count()

    good = scene(40, 60, seed=1)
    bad = [
        dict(encoding="rgb8", height=40, width=60, step=100, data=bytes(100 * 40)),  # step short
        dict(encoding="rgb8", height=40, width=60, step=180, data=bytes(180 * 40 - 7)),  # short
        dict(encoding="rgb8", height=40, width=60, step=200, data=bytes(180 * 40)),  # mismatch
        dict(encoding="bayer_grbg8", height=40, width=60, step=60, data=bytes(60 * 40)),
        dict(encoding="rgb8", height=0, width=0, step=0, data=b""),  # zero size
        dict(encoding="mono16", height=40, width=60, step=120, data=b""),  # no data
    ]
    for fields in bad:
        harness.publish(**fields)
        time.sleep(0.05)
    assert wait_for(lambda: harness.count("dropped_bad") == len(bad), 5), harness.diagnostics
    assert harness.diagnostics["last_error"]
    assert harness.frame_count() == warm_frames
    assert process.alive()

    harness.publish(good, encoding="yuv422")  # the node still works
    assert wait_for(lambda: harness.frame_count() == warm_frames + 1, 5), process.log
    frame = as_rgb(harness.frames_since(warm_frames)[0])
    assert frame.shape == (21, 32, 3)
    expected = cv2.resize(good, (32, 21), interpolation=cv2.INTER_AREA)
    assert mean_abs(frame, expected) < 6.0
    assert wait_for(lambda: harness.count("published") == warm_frames + 1, 3)
    assert harness.count("received") == received + len(bad) + 1
    assert process.alive()


def test_captures_from_an_image_folder(ros_node, start_node, tmp_path):
    images = [scene(100, 200, seed=i, shift=20 * i) for i in range(3)]
    for i, rgb in enumerate(images):
        cv2.imwrite(str(tmp_path / f"img_{i:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    namespace = unique_namespace("camera_folder")
    process = start_node(
        CAMERA,
        namespace,
        params_file=None,
        params={
            "autostart": True,
            "source": str(tmp_path),
            "rate_hz": 8.0,
            "max_side": 100,
            "frame_id": "cam9",
        },
    )
    harness = CameraHarness(ros_node, namespace, subscribe_raw=False)
    harness.wait_connected(process)
    assert wait_for(lambda: harness.frame_count() >= 7, 10), process.log
    frames = [as_rgb(m) for m in harness.frames_since(0)]
    assert all(f.shape == (50, 100, 3) for f in frames)
    assert harness.frames_since(0)[0].header.frame_id == "cam9"
    expected = [cv2.resize(rgb, (100, 50), interpolation=cv2.INTER_AREA) for rgb in images]
    # Frames follow the folder's order and loop; the first may be any image (discovery).
    start = int(np.argmin([mean_abs(frames[0], e) for e in expected]))
    for k, frame in enumerate(frames[:7]):
        assert mean_abs(frame, expected[(start + k) % 3]) < 1.0, k
    assert wait_for(lambda: harness.diagnostics.get("source") == str(tmp_path), 3)
    assert harness.count("dropped_bad") == 0
    assert process.alive()


def test_captures_from_a_video_file(ros_node, start_node, tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (160, 120))
    assert writer.isOpened()
    for i in range(30):  # 1.5 s: a rectangle sweeping right
        writer.write(cv2.cvtColor(scene(120, 160, shift=3 * i), cv2.COLOR_RGB2BGR))
    writer.release()
    namespace = unique_namespace("camera_video")
    process = start_node(
        CAMERA,
        namespace,
        params_file=None,
        params={"autostart": True, "source": str(path), "rate_hz": 5.0, "max_side": 80},
    )
    harness = CameraHarness(ros_node, namespace, subscribe_raw=False)
    harness.wait_connected(process)
    assert wait_for(lambda: harness.frame_count() >= 4, 10), process.log
    frames = [as_rgb(m) for m in harness.frames_since(0)]
    assert all(f.shape == (60, 80, 3) for f in frames)
    assert any(mean_abs(a, b) > 1.0 for a, b in zip(frames, frames[1:], strict=False))
    stamps = [stamp_s(m) for m in harness.frames_since(0)]
    assert min(np.diff(stamps)) >= 0.15, stamps  # 5 Hz at most
    assert harness.count("capture_errors") <= 0
    assert process.alive()


def test_missing_source_is_a_configuration_error(start_node, tmp_path):
    process = start_node(
        CAMERA,
        unique_namespace("camera_cfg"),
        params_file=None,
        params={"autostart": True, "source": str(tmp_path / "nowhere.avi")},
    )
    assert process.wait(20) == 2, process.log
    assert "configuration error" in process.log and "nowhere.avi" in process.log
