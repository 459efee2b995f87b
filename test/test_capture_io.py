"""io/frame_source.py and io/capture.py without rclpy: real image folders, a video file written
with OpenCV, WAV files; the sound device itself cannot exist here, so only its error paths."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from smolfusion_ros.io import audio, frame_source
from smolfusion_ros.io.capture import CaptureError, DeviceCapture, load_wav
from smolfusion_ros.io.frame_source import FrameSource, FrameSourceError


def picture(seed: int, height: int = 60, width: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---- frames ----------------------------------------------------------------------------------


def test_image_folder_in_name_order_looping_and_not(tmp_path):
    images = [picture(i) for i in range(3)]
    for i, bgr in enumerate(images):
        cv2.imwrite(str(tmp_path / f"img_{i:02d}.png"), bgr)
    (tmp_path / "notes.txt").write_text("not an image")
    source = FrameSource(str(tmp_path), loop=True, rate_hz=4.0)
    assert source.kind == "folder" and source.period_s == pytest.approx(0.25)
    frames = [source.read() for _ in range(5)]
    for k, frame in enumerate(frames):
        assert np.array_equal(frame, images[k % 3]), k  # PNG is lossless
    once = FrameSource(str(tmp_path), loop=False, rate_hz=4.0)
    assert [once.read() is None for _ in range(4)] == [False, False, False, True]


def test_an_unreadable_image_in_a_folder_is_a_read_error_not_the_end(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), picture(1))
    (tmp_path / "b.png").write_bytes(b"not a png")
    source = FrameSource(str(tmp_path), loop=True, rate_hz=100.0)
    assert source.period_s == pytest.approx(1 / 60)  # capture is capped at 60 Hz
    assert source.read() is not None
    with pytest.raises(RuntimeError, match="b.png"):
        source.read()
    assert source.read() is not None  # the loop goes on


def test_video_file_plays_at_its_own_rate_and_loops(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (80, 60))
    assert writer.isOpened()
    for i in range(5):
        frame = np.zeros((60, 80, 3), np.uint8)
        frame[:, 10 * i : 10 * i + 10] = 255  # a white bar moving right
        writer.write(frame)
    writer.release()
    source = FrameSource(str(path), loop=True, rate_hz=2.0)
    assert source.kind == "file" and source.period_s == pytest.approx(0.05)
    frames = [source.read() for _ in range(7)]
    assert all(f is not None and f.shape == (60, 80, 3) for f in frames)
    bars = [int(np.argmax(f[30, :, 0] > 128)) // 10 for f in frames]
    assert bars == [0, 1, 2, 3, 4, 0, 1], bars  # back to the start after the end
    source.release()
    once = FrameSource(str(path), loop=False, rate_hz=2.0)
    read = [once.read() for _ in range(6)]
    assert [f is None for f in read] == [False] * 5 + [True]
    assert once.read() is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nowhere.avi", "neither a device"),
        (lambda d: d, "no images"),
        (lambda d: (d / "bad.avi").write_bytes(b"\0" * 64) and d / "bad.avi", "cannot open"),
    ],
)
def test_unusable_sources_are_one_clear_error(tmp_path, make, message):
    target = make(tmp_path)
    with pytest.raises(FrameSourceError, match=message):
        FrameSource(str(target), loop=True, rate_hz=2.0)


def test_a_missing_device_is_retried_on_read_not_an_error_at_start(monkeypatch):
    source = FrameSource("/dev/video-no-such-camera", loop=True, rate_hz=2.0)
    assert source.kind == "device" and source.period_s == pytest.approx(1 / 30)
    assert source.read() is None  # opened (and failed) just now: wait for the reopen period
    monkeypatch.setattr(frame_source, "REOPEN_PERIOD_S", 0.0)
    with pytest.raises(RuntimeError, match="cannot open /dev/video-no-such-camera"):
        source.read()
    source.release()


# ---- audio -----------------------------------------------------------------------------------


def sine(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return audio.float32_to_int16(amplitude * np.sin(2 * np.pi * freq * t))


def test_load_wav_makes_mono_at_the_requested_rate(tmp_path):
    left, right = sine(44100, 1.0, 440.0), sine(44100, 1.0, 440.0, amplitude=0.25)
    stereo = np.stack([left, right], axis=1)
    audio.write_wav(tmp_path / "stereo.wav", stereo, 44100)
    mono = load_wav(str(tmp_path / "stereo.wav"), 16000)
    assert mono.dtype == np.int16 and mono.ndim == 1
    assert len(mono) == 16000
    assert audio.rms(mono) == pytest.approx(0.375 / np.sqrt(2), rel=0.02)
    same = load_wav(str(tmp_path / "stereo.wav"), 44100)
    assert np.array_equal(same, audio.to_mono(stereo))


def test_load_wav_errors_name_the_file(tmp_path):
    with pytest.raises(CaptureError, match="nope.wav.*does not exist"):
        load_wav(str(tmp_path / "nope.wav"), 16000)
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(CaptureError, match="text.wav.*cannot be read"):
        load_wav(str(tmp_path / "text.wav"), 16000)


def test_without_a_sound_device_opening_the_input_fails_clearly():
    try:
        capture = DeviceCapture("no-such-microphone-xyz", 16000, 1600)
    except CaptureError as exc:  # no PortAudio at all: also a clear one-line error
        assert "sounddevice" in str(exc)
        return
    assert not capture.healthy()
    with pytest.raises(Exception, match="no-such-microphone-xyz|device|Device"):
        capture.open()
    assert not capture.healthy() and capture.read(timeout=0.01) is None
    capture.close()  # closing a stream that never opened is fine


def test_level_meter_agrees_with_the_one_array_functions():
    loud = sine(16000, 0.5, amplitude=0.5)
    clipped = np.full(800, 32767, dtype=np.int16)
    quiet = (loud // 100).astype(np.int16)
    meter = audio.LevelMeter()
    for piece in (loud, clipped, quiet, np.zeros(0, np.int16)):
        meter.add(piece)
    level, peak, clipping = meter.take()
    everything = np.concatenate([loud, clipped, quiet])
    assert level == pytest.approx(audio.rms(everything), rel=1e-9)
    assert peak == pytest.approx(audio.peak(everything)) and peak == pytest.approx(1.0)
    assert clipping == pytest.approx(audio.clipping_ratio(everything))
    assert clipping == pytest.approx(800 / len(everything))
    assert meter.take() == (0.0, 0.0, 0.0)  # a new period starts empty
