"""Frames captured with OpenCV from a V4L2 device, a video file or a folder of images.

ROS-free (OpenCV + numpy): camera_node reads frames here on its capture timer. A bad `spec`
raises FrameSourceError at construction (the node turns it into a configuration error); a
device that goes away raises RuntimeError from `read` and is reopened later.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
REOPEN_PERIOD_S = 2.0
MAX_CAPTURE_HZ = 60.0


class FrameSourceError(ValueError):
    """The source cannot be used at all (missing path, empty folder, unreadable file)."""


class FrameSource:
    """OpenCV capture from a V4L2 device, a video file or an image folder (BGR frames).

    `kind` is "device", "file" or "folder"; `period_s` is how often to call `read`: a file
    plays at its own frame rate, a folder at `rate_hz`, a device is read at 30 Hz so its
    driver buffer never goes stale.
    """

    def __init__(self, spec: str, loop: bool, rate_hz: float) -> None:
        self.spec = spec
        self.loop = loop
        self.kind, self._target = self._classify(spec)
        self._capture: cv2.VideoCapture | None = None
        self._files: list[Path] = []
        self._index = 0
        self._last_open_try = -1e9
        self.period_s = 1.0 / min(rate_hz, MAX_CAPTURE_HZ)
        if self.kind == "folder":
            self._files = sorted(
                p for p in Path(self._target).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self._files:
                raise FrameSourceError(f"source {spec!r}: folder holds no images")
        elif self.kind == "file":
            self._open()
            if self._capture is None:
                raise FrameSourceError(f"source {spec!r}: OpenCV cannot open this video file")
            fps = self._capture.get(cv2.CAP_PROP_FPS) or 0.0
            if 0 < fps <= MAX_CAPTURE_HZ:
                self.period_s = 1.0 / fps  # play a file at its own speed
        else:
            self._open()
            self.period_s = 1.0 / 30.0  # read every frame so the driver buffer never goes stale

    @staticmethod
    def _classify(spec: str) -> tuple[str, str | int]:
        if spec.isdigit():
            return "device", int(spec)
        if spec.startswith("/dev/"):
            return "device", spec
        path = Path(spec).expanduser()
        if path.is_dir():
            return "folder", str(path)
        if path.is_file():
            return "file", str(path)
        raise FrameSourceError(f"source {spec!r} is neither a device, a video file nor a folder")

    def _open(self) -> None:
        self._last_open_try = time.monotonic()
        if self.kind == "device":
            capture = cv2.VideoCapture(self._target, cv2.CAP_V4L2)
            if capture.isOpened():
                capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        else:
            capture = cv2.VideoCapture(self._target)
        if capture.isOpened():
            self._capture = capture
        else:
            capture.release()
            self._capture = None

    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None (nothing now); raises RuntimeError on a failure."""
        if self.kind == "folder":
            if self._index >= len(self._files):
                if not self.loop:
                    return None
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise RuntimeError(f"cannot read image {path.name}")
            return frame
        if self._capture is None:
            if self.kind == "file" and not self.loop:
                return None
            if time.monotonic() - self._last_open_try < REOPEN_PERIOD_S:
                return None
            self._open()
            if self._capture is None:
                raise RuntimeError(f"cannot open {self.spec}")
        ok, frame = self._capture.read()
        if ok and frame is not None:
            return frame
        if self.kind == "file":
            self.release()
            if self.loop:
                self._open()
                if self._capture is not None:
                    ok, frame = self._capture.read()
                    if ok and frame is not None:
                        return frame
            return None
        self.release()  # a device went away: reopen later
        raise RuntimeError(f"{self.spec}: no frame from the device")

    def release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
