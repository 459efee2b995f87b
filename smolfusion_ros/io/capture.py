"""Microphone input without ROS: a sound card through sounddevice, or a WAV file.

`DeviceCapture` wraps a sounddevice InputStream whose callback only queues blocks (bounded:
a reader that falls behind loses the newest blocks, counted in `dropped`); `read` returns
mono int16 at the requested rate, resampled here when the device cannot capture at it.
`load_wav` reads a WAV file as mono int16 at a given rate. Errors a node should report as a
configuration error are CaptureError.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from smolfusion_ros.io.audio import Resampler, WavError, read_wav, resample, to_mono

MAX_QUEUED_BLOCKS = 200  # blocks waiting for the reader (seconds of audio at usual sizes)


class CaptureError(ValueError):
    """The input cannot be used at all (sounddevice/PortAudio missing, a bad WAV file)."""


class DeviceCapture:
    """A sounddevice InputStream whose callback only queues int16 blocks.

    `open` raises whatever PortAudio raises for a missing or busy device (the caller retries);
    CaptureError at construction when sounddevice or PortAudio is not installed.
    """

    def __init__(self, device: int | str | None, sample_rate: int, block_frames: int) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as exc:
            raise CaptureError(f"device capture needs sounddevice and PortAudio: {exc}") from None
        self._sd = sounddevice
        self.device = device
        self.sample_rate = sample_rate
        self.block_frames = block_frames
        self.blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=MAX_QUEUED_BLOCKS)
        self.overflows = 0
        self.dropped = 0
        self.stream = None
        self.resampler: Resampler | None = None

    def _callback(self, indata, _frames, _time, status) -> None:
        # PortAudio's thread: queue and return, never wait.
        if status.input_overflow:
            self.overflows += 1
        try:
            self.blocks.put_nowait(indata.copy())
        except queue.Full:
            self.dropped += 1

    def open(self) -> str:
        """Open and start the stream (at sample_rate if the device allows); returns a label."""
        sd = self._sd
        info = sd.query_devices(self.device, "input")  # raises for a missing device
        if info["max_input_channels"] < 1:
            raise RuntimeError(f"{info['name']} has no input channels")
        rate = self.sample_rate
        try:
            sd.check_input_settings(self.device, channels=1, dtype="int16", samplerate=rate)
        except Exception:
            rate = int(info["default_samplerate"])  # capture natively, resample here
        stream = sd.InputStream(
            samplerate=rate,
            blocksize=max(1, self.block_frames * rate // self.sample_rate),
            device=self.device,
            channels=1,
            dtype="int16",
            callback=self._callback,
        )
        stream.start()
        self.stream = stream
        self.resampler = None if rate == self.sample_rate else Resampler(rate, self.sample_rate)
        return f"{info['name']} at {rate} Hz"

    def read(self, timeout: float) -> np.ndarray | None:
        """Mono int16 at sample_rate, or None when nothing arrived in time."""
        try:
            block = self.blocks.get(timeout=timeout)
        except queue.Empty:
            return None
        mono = to_mono(block)
        return self.resampler.process(mono) if self.resampler else mono

    def healthy(self) -> bool:
        return self.stream is not None and self.stream.active

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception:
                pass  # a device that vanished cannot be closed cleanly; nothing to release


def load_wav(path_text: str, sample_rate: int) -> np.ndarray:
    """The WAV file as mono int16 at sample_rate; CaptureError when missing or unreadable."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise CaptureError(f"wav_file {path_text!r} does not exist")
    try:
        frames, rate = read_wav(path)
    except (OSError, WavError) as exc:
        raise CaptureError(f"wav_file {path_text!r} cannot be read: {exc}") from None
    return resample(to_mono(frames), rate, sample_rate)
