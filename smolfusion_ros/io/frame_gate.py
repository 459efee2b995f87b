"""Which camera frames are worth publishing: a rate throttle plus a frame-change gate; ROS-free.

A frame passes when at least 1 / max_rate_hz seconds have passed since the last accepted
frame and it differs enough from that frame: the mean absolute difference of small grayscale
thumbnails, as a fraction of full scale (0..1), exceeds change_threshold. A still scene is
still let through every max_still_s seconds so that consumers know the camera is alive.
"""

from __future__ import annotations

import enum
import threading

import cv2
import numpy as np

THUMBNAIL_SIDE = 32
# Timers and cameras jitter: a frame a little early for the rate still counts as on time.
RATE_SLACK = 0.95


class Verdict(enum.Enum):
    ACCEPT = "accept"
    SKIP_RATE = "skip_rate"
    SKIP_UNCHANGED = "skip_unchanged"


def thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A small float32 grayscale copy in 0..1 (longest side `side`), for change detection."""
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def frame_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (0 = identical, 1 = black vs white)."""
    if a.shape != b.shape:
        return 1.0
    return float(np.mean(np.abs(a - b)))


class FrameGate:
    """Thread-safe: rate_ok() before the expensive work, then decide() with the frame."""

    def __init__(
        self, change_threshold: float = 0.02, max_rate_hz: float = 2.0, max_still_s: float = 5.0
    ) -> None:
        if not 0.0 <= change_threshold <= 1.0:
            raise ValueError("change_threshold must be between 0 and 1")
        self.change_threshold = change_threshold
        self.min_interval_s = RATE_SLACK / max_rate_hz if max_rate_hz > 0 else 0.0
        self.max_still_s = max_still_s
        self._last_time: float | None = None
        self._last_thumb: np.ndarray | None = None
        self._lock = threading.Lock()
        self.last_difference: float | None = None

    def rate_ok(self, now: float) -> bool:
        """True when a frame at time `now` (seconds, monotonic) would not exceed the rate."""
        with self._lock:
            return self._last_time is None or now - self._last_time >= self.min_interval_s

    def decide(self, rgb: np.ndarray, now: float) -> Verdict:
        """Judge a frame; an accepted frame becomes the new reference."""
        if not self.rate_ok(now):
            return Verdict.SKIP_RATE
        thumb = thumbnail(rgb)
        with self._lock:
            if self._last_time is not None and now - self._last_time < self.min_interval_s:
                return Verdict.SKIP_RATE  # another thread accepted a frame meanwhile
            if self._last_thumb is not None:
                diff = frame_difference(thumb, self._last_thumb)
                self.last_difference = diff
                still_for = now - self._last_time
                unchanged = self.change_threshold > 0 and diff <= self.change_threshold
                if unchanged and still_for < self.max_still_s:
                    return Verdict.SKIP_UNCHANGED
            self._last_time = now
            self._last_thumb = thumb
            return Verdict.ACCEPT
