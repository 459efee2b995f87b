"""camera_node: camera frames in, throttled, resized, change-gated RGB frames out.

Subscribes:  image_raw (sensor_msgs/Image, sensor-data QoS), from any camera driver; not
             subscribed when `source` is set.
Publishes:   ~/frame (sensor_msgs/Image rgb8, longest side <= max_side, at most rate_hz,
             near-identical frames skipped but one at least every max_still_s seconds),
             /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz: received, published,
             skipped_rate, skipped_unchanged, dropped_bad, last_error)
Parameters:  source ("" = subscribe image_raw; a V4L2 device "/dev/video0" or index "0", a video
             file or a folder of images: captured here with OpenCV), max_side (512),
             rate_hz (2.0), change_threshold (0.02, mean absolute thumbnail difference 0..1),
             max_still_s (5.0), loop (true: restart files and folders at the end),
             frame_id ("camera", for captured frames), diagnostics_period_s (1.0)

Frames that cannot be converted (unknown encoding, zero size, step or size mismatch) are
dropped and counted; the node never stops on input. Capture runs on its own timer and
callback group, so a slow device never blocks the subscription or diagnostics.

A managed (lifecycle) node: configure reads the parameters and opens the source (a missing
path fails the transition with one line) or subscribes image_raw; activate publishes frames;
deactivate drops input (a device stays open); cleanup releases the device or subscription.
`autostart` (true in the profiles) brings it to active. Stamps of captured frames come from
the node clock; frames from image_raw keep their driver's header.
"""

from __future__ import annotations

import array
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from smolfusion_ros.io.frame_gate import FrameGate, Verdict
from smolfusion_ros.io.frame_source import FrameSource, FrameSourceError
from smolfusion_ros.io.image_convert import (
    ImageConversionError,
    check_image_fields,
    image_to_rgb,
    is_supported,
    rgb_to_image_fields,
    ros2_cv_bridge,
)
from smolfusion_ros.nodes.conversions import image_msg_to_rgb
from smolfusion_ros.nodes.diagnostics import (
    DIAGNOSTICS_PERIOD_SPEC,
    create_diagnostics,
    diagnostic_array,
)
from smolfusion_ros.nodes.managed import AUTOSTART_SPEC, ManagedNode
from smolfusion_ros.nodes.parameters import (
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameter_specs,
    read_parameters,
)
from smolfusion_ros.nodes.runner import run_node


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of camera_node (the profile test checks the YAML files against it)."""
    return [
        AUTOSTART_SPEC,
        ParamSpec(
            "source",
            "",
            "'' = subscribe image_raw; else a V4L2 device or index, a video file or an "
            "image folder to capture with OpenCV",
            # It may arrive as an integer (-p source:=0).
            dynamic_typing=True,
        ),
        ParamSpec("max_side", 512, "longest side of published frames in pixels", between(8, 8192)),
        ParamSpec("rate_hz", 2.0, "most frames published per second", between(0.01, 120.0)),
        ParamSpec(
            "change_threshold",
            0.02,
            "skip frames whose mean absolute thumbnail difference is at most this (0..1)",
            between(0.0, 1.0),
        ),
        ParamSpec(
            "max_still_s",
            5.0,
            "publish an unchanged scene at least this often (seconds)",
            at_least(0.0),
        ),
        ParamSpec("loop", True, "restart a video file or image folder at its end"),
        ParamSpec("frame_id", "camera", "header.frame_id of captured frames"),
        DIAGNOSTICS_PERIOD_SPEC,
    ]


class CameraNode(ManagedNode):
    """Managed: configure opens the source (or subscribes image_raw) with the parameters of
    that moment, activate publishes frames, deactivate pauses (frames are dropped, a device
    stays open), cleanup releases the device and the subscription."""

    def __init__(self, node_name: str = "camera_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameter_specs(self, parameter_specs())
        self._bridge = ros2_cv_bridge()
        self._lock = threading.Lock()
        self._capture_lock = threading.Lock()  # a read never meets a release (cleanup)
        self._max_side = 512
        self._frame_id = "camera"
        self._gate: FrameGate | None = None
        self._source: FrameSource | None = None
        self._input = None  # the capture timer or the image_raw subscription
        self._reset_counts()

        self._frame_pub = self.create_publisher(Image, "~/frame", 10)
        self._diag_pub = create_diagnostics(self, self._publish_diagnostics)

    def _reset_counts(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(
                ("received", "published", "skipped_rate", "skipped_unchanged", "dropped_bad"), 0
            )
            self._capture_errors = 0
            self._last_error = ""
            self._last_frame_time: float | None = None
            self._started = time.monotonic()

    # ---- lifecycle ---------------------------------------------------------------------------

    def configure(self) -> None:
        p = read_parameters(self, parameter_specs())
        source = "" if p["source"] is None else str(p["source"]).strip()
        self._max_side = p["max_side"]
        self._frame_id = p["frame_id"]
        self._gate = FrameGate(p["change_threshold"], p["rate_hz"], p["max_still_s"])
        self._reset_counts()
        if source:
            try:
                self._source = FrameSource(source, p["loop"], p["rate_hz"])
            except FrameSourceError as exc:
                raise ConfigError(str(exc)) from None
            self._input = self.create_timer(
                self._source.period_s, self._capture_once, MutuallyExclusiveCallbackGroup()
            )
            self.get_logger().info(f"capturing from {self._source.kind} {source}")
        else:
            self._input = self.create_subscription(
                Image,
                "image_raw",
                self._on_image,
                qos_profile_sensor_data,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )

    def cleanup(self) -> None:
        entity, self._input = self._input, None
        if entity is not None:
            if self._source is not None:
                self.destroy_timer(entity)
            else:
                self.destroy_subscription(entity)
        with self._capture_lock:
            source, self._source = self._source, None
            if source is not None:
                source.release()

    # ---- input -------------------------------------------------------------------------------

    def _on_image(self, msg: Image) -> None:
        if not self.is_active:
            return
        try:
            self._handle(msg)
        except Exception as exc:  # never let one frame stop the node
            self._count_error("dropped_bad", f"{type(exc).__name__}: {exc}")

    def _handle(self, msg: Image) -> None:
        now = time.monotonic()
        self._count("received")
        try:
            known = is_supported(msg.encoding)
            if known or self._bridge is None:
                # O(1) header checks first, so bad frames are counted even while throttled.
                check_image_fields(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))
        except ImageConversionError as exc:
            self._count_error("dropped_bad", str(exc))
            return
        if not self._gate.rate_ok(now):
            self._count("skipped_rate")
            return
        try:
            rgb = image_msg_to_rgb(msg, self._max_side, self._bridge)
        except ImageConversionError as exc:
            self._count_error("dropped_bad", str(exc))
            return
        self._offer(rgb, now, msg.header)

    def _capture_once(self) -> None:
        if not self.is_active:
            return
        with self._capture_lock:
            source = self._source
            if source is None:
                return
            if source.kind == "folder" and not self._gate.rate_ok(time.monotonic()):
                return  # keep the image for the next tick instead of skipping it
            try:
                frame = source.read()
            except Exception as exc:  # a device that went away: counted, reopened later
                with self._lock:
                    self._capture_errors += 1
                    self._last_error = str(exc)
                return
        if frame is None:
            return
        now = time.monotonic()
        self._count("received")
        if not self._gate.rate_ok(now):
            self._count("skipped_rate")
            return
        try:
            frame = np.ascontiguousarray(frame)
            height, width = frame.shape[:2]
            encoding = "bgr8" if frame.ndim == 3 and frame.shape[2] == 3 else "mono8"
            rgb = image_to_rgb(
                encoding, height, width, frame.strides[0], frame, max_side=self._max_side
            )
        except ImageConversionError as exc:
            self._count_error("dropped_bad", str(exc))
            return
        self._offer(rgb, now, None)

    def _offer(self, rgb: np.ndarray, now: float, header) -> None:
        verdict = self._gate.decide(rgb, now)
        if verdict is Verdict.SKIP_RATE:
            self._count("skipped_rate")
            return
        if verdict is Verdict.SKIP_UNCHANGED:
            self._count("skipped_unchanged")
            return
        height, width, encoding, step, data = rgb_to_image_fields(rgb, "rgb8")
        out = Image()
        if header is not None:
            out.header = header  # keep the driver's stamp and frame for synchronisation
        else:
            out.header.stamp = self.get_clock().now().to_msg()
            out.header.frame_id = self._frame_id
        out.height, out.width, out.encoding, out.step = height, width, encoding, step
        out.is_bigendian = 0
        out.data = array.array("B", data)
        self._frame_pub.publish(out)
        self._count("published")

    # ---- bookkeeping -------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1
            if key == "received":
                self._last_frame_time = time.monotonic()

    def _count_error(self, key: str, error: str) -> None:
        with self._lock:
            self._counts[key] += 1
            self._last_error = error

    def _publish_diagnostics(self) -> None:
        source = self._source
        with self._lock:
            counts = dict(self._counts)
            last_error = self._last_error
            capture_errors = self._capture_errors
            last_frame = self._last_frame_time
        now = time.monotonic()
        idle_s = now - (last_frame if last_frame is not None else self._started)
        if last_frame is None:
            level, message = DiagnosticStatus.WARN, "no frames yet"
        elif idle_s > 5.0:
            level, message = DiagnosticStatus.WARN, f"no frames for {idle_s:.0f} s"
        else:
            level, message = DiagnosticStatus.OK, "receiving frames"
        values = {
            **{k: str(v) for k, v in counts.items()},
            "capture_errors": str(capture_errors),
            "last_error": last_error,
            "source": source.spec if source else "image_raw",
        }
        self._diag_pub.publish(
            diagnostic_array(self, "camera", level, message, source.spec if source else "", values)
        )


def main() -> None:
    run_node(CameraNode)


if __name__ == "__main__":
    main()
