"""The ROS-free image converter and frame gate (numpy + OpenCV), on synthesised images."""

from __future__ import annotations

import array
import tracemalloc

import cv2
import numpy as np
import pytest

from smolfusion_ros.io import (
    FrameGate,
    ImageConversionError,
    Verdict,
    check_image_fields,
    downscale_to_fit,
    image_to_rgb,
    rgb_to_image_fields,
    target_size,
)
from smolfusion_ros.io.image_convert import ros2_cv_bridge

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2", "yuyv"]
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2}


def scene(height: int = 120, width: int = 160) -> np.ndarray:
    """A gradient with shapes and text: smooth areas, hard edges, every channel different."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], axis=2
    ).astype(np.uint8)
    cv2.rectangle(rgb, (10, 10), (50, 40), (255, 40, 0), -1)
    cv2.circle(rgb, (110, 70), 25, (20, 200, 90), -1)
    cv2.putText(rgb, "Hi", (20, 100), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (250, 250, 250), 2)
    return rgb


def gray3(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_every_encoding(encoding):
    rgb = scene()
    height, width, enc, step, data = rgb_to_image_fields(rgb, encoding)
    assert (height, width, enc) == (120, 160, encoding)
    assert len(data) == step * height
    out = image_to_rgb(enc, height, width, step, data)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable
    if encoding in ("mono8", "mono16"):
        np.testing.assert_array_equal(out, gray3(rgb))
    elif encoding.startswith("yuv") or encoding == "yuyv":
        # 4:2:2 halves horizontal chroma: small everywhere on average, exact in flat areas.
        assert mean_abs(out, rgb) < 3.0
        assert mean_abs(out[15:35, 15:45], rgb[15:35, 15:45]) < 2.0
    else:
        np.testing.assert_array_equal(out, rgb)


def test_channel_order_is_right():
    red = np.zeros((2, 4, 3), np.uint8)
    red[:, :, 0] = 255
    bgr_data = bytes([0, 0, 255] * 8)
    np.testing.assert_array_equal(image_to_rgb("bgr8", 2, 4, 12, bgr_data), red)
    bgra_data = bytes([0, 0, 255, 7] * 8)
    np.testing.assert_array_equal(image_to_rgb("bgra8", 2, 4, 16, bgra_data), red)
    rgba_data = bytes([255, 0, 0, 7] * 8)
    np.testing.assert_array_equal(image_to_rgb("RGBA8", 2, 4, 16, rgba_data), red)


def test_mono16_scales_to_8_bit_in_both_byte_orders():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    expected = np.array([0, 1, 128, 255], np.uint8)
    little = values.astype("<u2").tobytes()
    big = values.astype(">u2").tobytes()
    np.testing.assert_array_equal(image_to_rgb("mono16", 1, 4, 8, little)[0, :, 1], expected)
    np.testing.assert_array_equal(
        image_to_rgb("mono16", 1, 4, 8, big, is_bigendian=True)[0, :, 2], expected
    )


def test_accepts_array_array_memoryview_and_ndarray():
    rgb = scene(8, 10)
    height, width, enc, step, data = rgb_to_image_fields(rgb, "rgb8")
    for buffer in (array.array("B", data), memoryview(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(image_to_rgb(enc, height, width, step, buffer), rgb)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_row_padding_is_ignored(encoding):
    rgb = scene(30, 40)
    height, width, enc, step, data = rgb_to_image_fields(rgb, encoding)
    pad = 13  # odd on purpose: padded rows need not be aligned
    rows = np.frombuffer(data, np.uint8).reshape(height, step)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    out = image_to_rgb(enc, height, width, step + pad, padded.tobytes())
    np.testing.assert_array_equal(out, image_to_rgb(enc, height, width, step, data))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (("rgb8", 4, 4, 12, 47), "truncated"),  # one byte short
        (("rgb8", 4, 4, 12, 0), "truncated"),  # no data at all
        (("rgb8", 4, 4, 16, 48), "truncated"),  # step claims padding the data lacks
        (("rgb8", 4, 4, 12, 60), "size_mismatch"),  # more data than step * height
        (("rgb8", 4, 4, 11, 44), "bad_step"),  # step shorter than a row
        (("mono16", 4, 4, 4, 16), "bad_step"),
        (("rgb8", 0, 4, 12, 0), "zero_size"),
        (("rgb8", 4, 0, 0, 0), "zero_size"),
        (("bayer_rggb8", 4, 4, 4, 16), "unknown_encoding"),
        (("", 4, 4, 12, 48), "unknown_encoding"),
        (("yuv422", 2, 3, 6, 12), "bad_size"),  # odd width cannot hold 4:2:2 pairs
    ],
)
def test_bad_input_raises_a_clear_error(fields, reason):
    encoding, height, width, step, size = fields
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(encoding, height, width, step, bytes(size))
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    assert str(info.value)
    with pytest.raises(ImageConversionError):
        check_image_fields(encoding, height, width, step, size)


def test_non_buffer_data_is_rejected():
    with pytest.raises(ImageConversionError):
        image_to_rgb("rgb8", 1, 1, 3, [1, 2, 3])


def test_target_size_and_downscale_keep_the_aspect_ratio():
    assert target_size(480, 640, 512) == (384, 512)
    assert target_size(6000, 8000, 512) == (384, 512)
    assert target_size(100, 50, 512) == (100, 50)  # never enlarged
    assert target_size(100, 50, 0) == (100, 50)
    rgb = scene(480, 640)
    small = downscale_to_fit(rgb, 160)
    assert small.shape == (120, 160, 3)
    assert mean_abs(small, cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_AREA)) < 1.0
    assert downscale_to_fit(rgb, 1000) is rgb


@pytest.mark.parametrize("encoding", ["bgr8", "mono16", "yuv422"])
def test_conversion_with_max_side_matches_convert_then_resize(encoding):
    rgb = scene(600, 800)
    height, width, enc, step, data = rgb_to_image_fields(rgb, encoding)
    full = image_to_rgb(enc, height, width, step, data)
    small = image_to_rgb(enc, height, width, step, data, max_side=100)
    assert small.shape == (75, 100, 3)
    reference = cv2.resize(full, (100, 75), interpolation=cv2.INTER_AREA)
    assert mean_abs(small, reference) < 6.0


def test_huge_frame_is_downscaled_with_bounded_memory():
    height, width = 6000, 8000
    # A horizontal/vertical gradient in bgr8 (144 MB), padded rows, passed without a copy.
    bgr = np.empty((height, width + 2, 3), np.uint8)
    bgr[:, :, 0] = (np.arange(width + 2) * 255 // width).clip(0, 255)[None, :].astype(np.uint8)
    bgr[:, :, 1] = 77
    bgr[:, :, 2] = (np.arange(height) * 255 // height)[:, None].astype(np.uint8)
    data = memoryview(bgr).cast("B")
    step = (width + 2) * 3
    full_float_copy = height * width * 3 * 4  # what a float32 conversion would take: 576 MB
    tracemalloc.start()
    try:
        small = image_to_rgb("bgr8", height, width, step, data, max_side=512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert small.shape == (384, 512, 3)
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert peak < full_float_copy / 30
    # Content survives: red follows the rows, blue the columns, green is constant.
    assert small[0, 256, 0] < 10 and small[-1, 256, 0] > 245
    assert small[192, 0, 2] < 10 and small[192, -1, 2] > 245
    assert np.all(np.abs(small[:, :, 1].astype(int) - 77) <= 1)


def test_rgb_to_image_fields_rejects_wrong_arrays():
    with pytest.raises(ImageConversionError):
        rgb_to_image_fields(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageConversionError):
        rgb_to_image_fields(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageConversionError):
        rgb_to_image_fields(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageConversionError):
        rgb_to_image_fields(np.zeros((4, 4, 3), np.uint8), "jpeg")
    height, width, enc, step, data = rgb_to_image_fields(scene(4, 6))
    assert (height, width, enc, step, len(data)) == (4, 6, "rgb8", 18, 72)


def test_pypi_cv_bridge_is_not_used_here():
    # This environment has no ROS 2 cv_bridge: the numpy converter is what runs.
    assert ros2_cv_bridge() is None


# ---- frame gate ------------------------------------------------------------------------------


def test_gate_throttles_to_the_rate():
    gate = FrameGate(change_threshold=0.0, max_rate_hz=2.0, max_still_s=5.0)
    frame = scene(60, 80)
    assert gate.decide(frame, 0.0) is Verdict.ACCEPT
    assert not gate.rate_ok(0.2)
    assert gate.decide(frame, 0.2) is Verdict.SKIP_RATE
    assert gate.rate_ok(0.5)
    assert gate.decide(frame, 0.5) is Verdict.ACCEPT  # threshold 0: every frame is a change


def test_gate_skips_near_identical_frames_but_not_for_ever():
    gate = FrameGate(change_threshold=0.02, max_rate_hz=100.0, max_still_s=5.0)
    frame = scene(60, 80)
    noisy = np.clip(
        frame.astype(int) + np.random.default_rng(1).integers(-2, 3, frame.shape), 0, 255
    )
    assert gate.decide(frame, 0.0) is Verdict.ACCEPT
    assert gate.decide(noisy.astype(np.uint8), 1.0) is Verdict.SKIP_UNCHANGED
    moved = np.roll(frame, 20, axis=1)
    assert gate.decide(moved, 2.0) is Verdict.ACCEPT
    assert gate.decide(moved, 6.0) is Verdict.SKIP_UNCHANGED
    assert gate.decide(moved, 7.1) is Verdict.ACCEPT  # 5 s still: published as a heartbeat
    assert gate.last_difference == pytest.approx(0.0)


def test_gate_rejects_a_bad_threshold():
    with pytest.raises(ValueError):
        FrameGate(change_threshold=1.5)


def test_an_image_over_max_pixels_is_refused_from_its_header_alone():
    """fusion_node's vision.max_pixels: the check needs no pixel data at all (issue 9)."""
    from types import SimpleNamespace

    from smolfusion_ros.io.image_convert import check_pixel_count
    from smolfusion_ros.nodes.conversions import image_msg_to_rgb

    check_pixel_count(4000, 4000, 16_000_000)  # exactly at the limit
    check_pixel_count(100_000, 100_000, 0)  # 0 = no limit
    with pytest.raises(ImageConversionError) as caught:
        check_pixel_count(10000, 10000, 16_000_000, "vision.max_pixels")
    assert caught.value.reason == "too_large"
    assert "10000x10000 = 100.0 MP" in str(caught.value)
    assert "vision.max_pixels=16000000" in str(caught.value)
    # A message claiming 100 MP with no data: refused as too large before the data is looked at.
    msg = SimpleNamespace(
        height=10000, width=10000, encoding="rgb8", step=30000, data=b"", is_bigendian=0
    )
    with pytest.raises(ImageConversionError) as caught:
        image_msg_to_rgb(msg, 512, max_pixels=16_000_000, limit_name="vision.max_pixels")
    assert caught.value.reason == "too_large"
    small = scene(120, 160)
    height, width, encoding, step, data = rgb_to_image_fields(small)
    ok = SimpleNamespace(
        height=height, width=width, encoding=encoding, step=step, data=data, is_bigendian=0
    )
    np.testing.assert_array_equal(image_msg_to_rgb(ok, 0, max_pixels=120 * 160), small)


def test_heap_trim_is_safe_to_call():
    from smolfusion_ros.io import heap

    assert heap.after_message(10) is False  # small messages never trim
    heap.trim(force=True)  # glibc: malloc_trim(0); elsewhere a no-op returning False
    assert isinstance(heap.available(), bool)
