"""Translations between core objects and ROS messages (the only place that knows both)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node

from smolfusion_ros.core.jobs import ChatResult
from smolfusion_ros.core.requests import ChatRequest
from smolfusion_ros.io.image_convert import (
    check_pixel_count,
    cv_bridge_to_rgb,
    image_to_rgb,
    is_supported,
)


def stamp_from_seconds(seconds: float) -> Time:
    """A Time message for `seconds` on the clock they were read from (a header stamp that
    went through core/ as a float, or node_clock_seconds)."""
    sec = int(seconds)
    return Time(sec=sec, nanosec=int((seconds - sec) * 1e9))


def stamp_from_wall(seconds: float | None = None) -> Time:
    """Wall-clock times that are data, not message times (stored turns' stamps, session
    dates). A message's own stamp comes from the node clock: node.get_clock().now()."""
    return stamp_from_seconds(time.time() if seconds is None else seconds)


def node_clock_seconds(node: Node) -> Callable[[], float]:
    """The node clock as the `now` callable core/ objects take (ROS-free): sim time under
    use_sim_time, so stamps compared with received header stamps agree in bag replay."""
    clock = node.get_clock()
    return lambda: clock.now().nanoseconds * 1e-9


def chat_request_from(msg, source: str, default_timeout_s: float = 0.0) -> ChatRequest:
    """Chat.Request, Converse.Goal and anything with the same fields.

    timeout_s = 0 (or a message without the field) means default_timeout_s.
    """
    timeout_s = float(getattr(msg, "timeout_s", 0.0))
    return ChatRequest(
        text=msg.text,
        session_id=msg.session_id,
        persona=msg.persona,
        use_vision=msg.use_vision,
        max_tokens=int(msg.max_tokens),
        source=source,
        timeout_s=timeout_s if timeout_s != 0 else default_timeout_s,
    )


def fill_chat_response(target, result: ChatResult):
    """Copy a ChatResult into Chat.Response or Converse.Result (same field names)."""
    target.success = result.success
    target.error = result.error
    target.reply = result.reply
    target.source = result.source
    target.request_id = result.request_id
    target.scene_used = result.scene_used
    target.ttft_s = float(result.ttft_s)
    target.latency_s = float(result.latency_s)
    target.tokens = int(result.tokens)
    if hasattr(target, "cancelled"):
        target.cancelled = result.cancelled
    target.scene_text = result.scene_text
    target.knowledge_ids = list(result.knowledge_ids)
    return target


def image_msg_to_rgb(
    msg, max_side: int = 0, bridge=None, max_pixels: int = 0, limit_name: str = "max_pixels"
) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB (longest side <= max_side when it is > 0).

    The package's converter handles every encoding it knows; a real ROS 2 cv_bridge, when
    given, takes the rest. Raises ImageConversionError for a malformed or unknown image, and
    for one of more than max_pixels pixels (0 = no limit; named limit_name in the error).
    """
    check_pixel_count(int(msg.height), int(msg.width), max_pixels, limit_name)
    if is_supported(msg.encoding) or bridge is None:
        return image_to_rgb(
            msg.encoding,
            msg.height,
            msg.width,
            msg.step,
            msg.data,
            bool(msg.is_bigendian),
            max_side,
        )
    return cv_bridge_to_rgb(bridge, msg, max_side)
