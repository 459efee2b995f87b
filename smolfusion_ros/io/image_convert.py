"""Raw image fields (as in sensor_msgs/Image) to RGB uint8 arrays and back; ROS-free.

One converter for every camera frame, tested with numpy and OpenCV only:
rgb8, bgr8, rgba8, bgra8, mono8, mono16 (scaled to 8 bit), yuv422 (UYVY) and
yuv422_yuy2 / yuyv (YUYV), with row padding (step > width * bytes per pixel).

Huge frames stay cheap: the output size is computed from the header first, and frames far
larger than it are subsampled with numpy strides (views, no copies) before any pixel is
converted, so memory stays bounded by the output size, never by the input size.

Where a real ROS 2 install provides cv_bridge, `ros2_cv_bridge()` returns it for encodings this
module does not know; PyPI's `cv-bridge` (an old ROS 1 port) is never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """A frame cannot be converted; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Format:
    bytes_per_pixel: int
    kind: str  # rgb, bgr, rgba, bgra, mono8, mono16, uyvy, yuyv


_FORMATS: dict[str, _Format] = {
    "rgb8": _Format(3, "rgb"),
    "bgr8": _Format(3, "bgr"),
    "rgba8": _Format(4, "rgba"),
    "bgra8": _Format(4, "bgra"),
    "mono8": _Format(1, "mono8"),
    "8uc1": _Format(1, "mono8"),
    "mono16": _Format(2, "mono16"),
    "16uc1": _Format(2, "mono16"),
    "yuv422": _Format(2, "uyvy"),
    "uyvy": _Format(2, "uyvy"),
    "yuv422_yuy2": _Format(2, "yuyv"),
    "yuyv": _Format(2, "yuyv"),
}

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2")


def is_supported(encoding: str) -> bool:
    return encoding.strip().lower() in _FORMATS


def _format_of(encoding: str) -> _Format:
    fmt = _FORMATS.get(encoding.strip().lower()) if isinstance(encoding, str) else None
    if fmt is None:
        raise ImageConversionError(
            "unknown_encoding",
            f"unsupported image encoding {encoding!r} "
            f"(supported: {', '.join(SUPPORTED_ENCODINGS)}, yuyv)",
        )
    return fmt


def check_image_fields(encoding: str, height: int, width: int, step: int, data_len: int) -> None:
    """Validate a frame's header against its data length in O(1); raise ImageConversionError."""
    fmt = _format_of(encoding)
    if height <= 0 or width <= 0:
        raise ImageConversionError("zero_size", f"image has no pixels ({width}x{height})")
    row_bytes = width * fmt.bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            "bad_step",
            f"step {step} is shorter than a row of {width} {encoding} pixels ({row_bytes} bytes)",
        )
    if fmt.kind in ("uyvy", "yuyv") and width % 2:
        raise ImageConversionError("bad_size", f"{encoding} needs an even width, got {width}")
    if data_len < step * height:
        raise ImageConversionError(
            "truncated",
            f"data has {data_len} bytes, step * height = {step} * {height} = {step * height}",
        )
    if data_len > step * height:
        raise ImageConversionError(
            "size_mismatch",
            f"data has {data_len} bytes, more than step * height = {step * height}",
        )


def check_pixel_count(height: int, width: int, max_pixels: int, name: str = "max_pixels") -> None:
    """Refuse an image of more than max_pixels pixels (0 = no limit) from its header alone.

    Refusing (not downscaling) is deliberate: an image this large is a mistake or a sensor
    this node is not sized for, and the caller should know; it is checked before any pixel is
    touched.
    """
    if max_pixels > 0 and height * width > max_pixels:
        raise ImageConversionError(
            "too_large",
            f"image is {width}x{height} = {height * width / 1e6:.1f} MP, more than "
            f"{name}={max_pixels} ({max_pixels / 1e6:.1f} MP); send a smaller image",
        )


def target_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) with the longest side at most max_side, aspect kept; 0 = no limit."""
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def _subsample_stride(height: int, width: int, max_side: int) -> int:
    """Keep about twice the output resolution for INTER_AREA; drop the rest with strides."""
    if max_side <= 0:
        return 1
    return max(1, max(height, width) // (2 * max_side))


def _resize_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if rgb.shape[:2] == (height, width):
        return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def downscale_to_fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink an image (INTER_AREA) so its longest side is at most max_side; never enlarge."""
    if max_side <= 0:
        return rgb
    size = target_size(rgb.shape[0], rgb.shape[1], max_side)
    if size == rgb.shape[:2]:
        return rgb
    stride = _subsample_stride(rgb.shape[0], rgb.shape[1], max_side)
    if stride > 1:
        rgb = np.ascontiguousarray(rgb[::stride, ::stride])
    return _resize_to(rgb, size)


def image_to_rgb(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
    max_side: int = 0,
) -> np.ndarray:
    """Convert raw image fields to a C-contiguous (H, W, 3) uint8 RGB array.

    `data` is any buffer (bytes, array.array('B'), memoryview, ndarray); it is not copied.
    With max_side > 0 the result's longest side is at most max_side (INTER_AREA), and big
    frames are subsampled before conversion so that memory follows the output size.
    """
    try:
        buffer = memoryview(data).cast("B")
    except TypeError as exc:
        raise ImageConversionError("bad_data", f"image data is not a byte buffer: {exc}") from None
    check_image_fields(encoding, height, width, step, buffer.nbytes)
    fmt = _format_of(encoding)
    size = target_size(height, width, max_side)
    stride = _subsample_stride(height, width, max_side)

    rows = np.frombuffer(buffer, dtype=np.uint8, count=step * height).reshape(height, step)
    rows = rows[::stride]  # a view: only the kept rows are ever touched
    kind = fmt.kind
    if kind in ("uyvy", "yuyv"):
        # Columns are kept by whole macropixels (4 bytes = 2 pixels) so chroma stays paired.
        macro = rows[:, : width * 2].reshape(rows.shape[0], width // 2, 4)[:, ::stride]
        packed = np.ascontiguousarray(macro).reshape(macro.shape[0], macro.shape[1] * 2, 2)
        code = cv2.COLOR_YUV2RGB_UYVY if kind == "uyvy" else cv2.COLOR_YUV2RGB_YUY2
        rgb = cv2.cvtColor(packed, code)
    elif kind == "mono16":
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        mono = rows[:, : width * 2].view(dtype)[:, ::stride]
        gray = (mono >> 8).astype(np.uint8)  # full 16-bit range onto 8 bit
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        pixels = rows[:, : width * fmt.bytes_per_pixel].reshape(
            rows.shape[0], width, fmt.bytes_per_pixel
        )[:, ::stride]
        if kind == "mono8":
            rgb = np.repeat(pixels, 3, axis=2)
        elif kind in ("rgb", "rgba"):
            rgb = np.ascontiguousarray(pixels[:, :, :3])
        else:  # bgr, bgra
            rgb = np.ascontiguousarray(pixels[:, :, 2::-1])
    rgb = _resize_to(rgb, size)
    if not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = np.array(rgb, copy=True, order="C")
    return rgb


def rgb_to_image_fields(
    rgb: np.ndarray, encoding: str = "rgb8"
) -> tuple[int, int, str, int, bytes]:
    """Encode an (H, W, 3) uint8 RGB array: (height, width, encoding, step, data bytes).

    Rows are not padded (step = width * bytes per pixel); mono16 is big-endian-free
    (little-endian, is_bigendian = 0) with each 8-bit level v stored as v * 257.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError(
            "bad_data", f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}"
        )
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError("zero_size", f"image has no pixels ({width}x{height})")
    fmt = _format_of(encoding)
    kind = fmt.kind
    if kind == "rgb":
        out = rgb
    elif kind == "bgr":
        out = rgb[:, :, ::-1]
    elif kind in ("rgba", "bgra"):
        color = rgb if kind == "rgba" else rgb[:, :, ::-1]
        out = np.concatenate([color, np.full((height, width, 1), 255, np.uint8)], axis=2)
    elif kind == "mono8":
        out = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    elif kind == "mono16":
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        out = gray.astype("<u2") * np.uint16(257)
    else:
        if width % 2:
            raise ImageConversionError("bad_size", f"{encoding} needs an even width, got {width}")
        out = _rgb_to_yuv422(rgb, uyvy=kind == "uyvy")
    data = np.ascontiguousarray(out).tobytes()
    return height, width, encoding, width * fmt.bytes_per_pixel, data


def _rgb_to_yuv422(rgb: np.ndarray, uyvy: bool) -> np.ndarray:
    """Pack RGB as YUV 4:2:2 (BT.601, limited range, as OpenCV decodes it)."""
    ycrcb = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    # COLOR_RGB2YCrCb is full range; OpenCV's YUV422 decoders expect limited range (16..235).
    y = ycrcb[:, :, 0] * (219.0 / 255.0) + 16.0
    v = (ycrcb[:, :, 1] - 128.0) * (224.0 / 255.0) + 128.0
    u = (ycrcb[:, :, 2] - 128.0) * (224.0 / 255.0) + 128.0
    u = (u[:, 0::2] + u[:, 1::2]) / 2.0
    v = (v[:, 0::2] + v[:, 1::2]) / 2.0
    height, width = rgb.shape[:2]
    packed = np.empty((height, width // 2, 4), np.float32)
    if uyvy:
        packed[:, :, 0], packed[:, :, 1] = u, y[:, 0::2]
        packed[:, :, 2], packed[:, :, 3] = v, y[:, 1::2]
    else:
        packed[:, :, 0], packed[:, :, 1] = y[:, 0::2], u
        packed[:, :, 2], packed[:, :, 3] = y[:, 1::2], v
    return np.clip(np.rint(packed), 0, 255).astype(np.uint8).reshape(height, width * 2)


def ros2_cv_bridge() -> Any | None:
    """A ROS 2 cv_bridge.CvBridge where a real ROS install provides one, else None.

    PyPI's `cv-bridge` (1.x, a port of ROS 1 code) is rejected: it mis-maps 16-bit encodings
    and fails on numpy >= 2.3.
    """
    try:
        import cv_bridge
    except Exception:
        return None
    if not hasattr(cv_bridge, "CvBridge") or not hasattr(cv_bridge.CvBridge, "imgmsg_to_cv2"):
        return None
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            major = int(version("cv_bridge").split(".")[0])
        except PackageNotFoundError:
            major = None
        if major is not None and major < 2:
            return None  # the PyPI ROS 1 port
    except Exception:
        pass
    try:
        return cv_bridge.CvBridge()
    except Exception:
        return None


def cv_bridge_to_rgb(bridge: Any, msg: Any, max_side: int = 0) -> np.ndarray:
    """Convert a sensor_msgs/Image of an encoding unknown here through a ROS 2 cv_bridge."""
    try:
        rgb = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    except Exception as exc:
        raise ImageConversionError("unknown_encoding", f"cv_bridge: {exc}") from None
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ImageConversionError("bad_data", f"cv_bridge returned {rgb.shape} {rgb.dtype}")
    return np.ascontiguousarray(downscale_to_fit(rgb, max_side))
