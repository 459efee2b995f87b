"""Where synthesised speech goes: the sound card, a folder of WAV files, or nowhere.

A robot or laptop without a sound card is a normal situation, not an error per answer:
`DeviceOutput.unavailable` says once, at start, why nothing can be played, and `emit` then
only keeps time. ROS-free (numpy, sounddevice over PortAudio), so the speech engine in
core/speech_output.py and its tests need no rclpy.

Every output has the same `emit(samples, sample_rate, label, cancelled) -> bool`: it returns
when the sound is out (played, or written and, when paced, as long as the audio lasts) and
False when `cancelled()` stopped it on the way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from smolfusion_ros.io.audio import write_wav

POLL_S = 0.02  # how often a playing (or paced) sound checks for a stop request


class PlaybackError(RuntimeError):
    """sounddevice/PortAudio is missing (at start) or a sound could not be played."""


class AudioOutput(Protocol):
    label: str  # for logs and /diagnostics: "device", "none" or the directory
    unavailable: str  # empty, or why nothing is played (said once, at start)
    files_written: int

    def emit(
        self, samples: np.ndarray, sample_rate: int, label: str, cancelled: Callable[[], bool]
    ) -> bool:
        """Output mono int16 audio; False when stopped on the way. Raises PlaybackError
        (the device refused the sound) or OSError (a file could not be written)."""


def wait_unless_cancelled(seconds: float, cancelled: Callable[[], bool]) -> bool:
    """Keep time like a speaker would; False as soon as `cancelled()` says so."""
    deadline = time.monotonic() + seconds
    while True:
        if cancelled():
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(POLL_S, left))


class AudioPlayer:
    """Plays on the machine's default output device (sounddevice over PortAudio)."""

    def __init__(self) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as exc:
            # OSError: the Python package is there but the PortAudio library is not.
            raise PlaybackError(
                f"output=device needs sounddevice and PortAudio ({exc}): "
                "pip install sounddevice and apt-get install libportaudio2, "
                "or set output to 'none' or a directory"
            ) from None
        self._sd = sounddevice
        self.unavailable = self._probe()

    def _probe(self) -> str:
        """Empty when there is a default output device, else the reason there is none.

        PortAudio lists devices once, when it starts: a speaker plugged in later is seen
        after a restart of the node.
        """
        try:
            device = self._sd.query_devices(kind="output")
        except Exception as exc:  # PortAudioError "Error querying device -1", ValueError
            return f"no audio output device ({exc})"
        if not device or device.get("max_output_channels", 0) < 1:
            return "no audio output device (the default device has no output channels)"
        return ""

    def play(self, samples: np.ndarray, sample_rate: int, cancelled: Callable[[], bool]) -> bool:
        """Play and wait until done; False when `cancelled()` stopped it on the way.

        Raises PlaybackError when the device refuses the sound; does nothing when there is
        no device (`unavailable`).
        """
        if self.unavailable:
            return not cancelled()
        sd = self._sd
        duration_s = len(samples) / sample_rate if sample_rate else 0.0
        try:
            sd.play(samples, sample_rate, blocking=False)
            deadline = time.monotonic() + duration_s + 2.0
            while time.monotonic() < deadline and sd.get_stream().active:
                if cancelled():
                    sd.stop()
                    return False
                time.sleep(POLL_S)
            sd.stop()
        except Exception as exc:  # device busy or gone, unsupported rate
            raise PlaybackError(f"playback failed: {exc}") from None
        return not cancelled()


class DeviceOutput:
    """output=device: the sound card, or (without one) nothing but the time it takes."""

    label = "device"
    files_written = 0

    def __init__(self, player: AudioPlayer | None = None) -> None:
        self._player = player if player is not None else AudioPlayer()
        self.unavailable = self._player.unavailable

    def emit(
        self, samples: np.ndarray, sample_rate: int, label: str, cancelled: Callable[[], bool]
    ) -> bool:
        return self._player.play(samples, sample_rate, cancelled)


class WavDirectoryOutput:
    """output=<directory>: each utterance as NNNNN_<label>.wav (written atomically)."""

    unavailable = ""

    def __init__(self, directory: str | Path, pace: bool = False) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)  # OSError: the caller says which
        self.label = str(directory)
        self.pace = pace
        self.files_written = 0
        self._index = 0

    def emit(
        self, samples: np.ndarray, sample_rate: int, label: str, cancelled: Callable[[], bool]
    ) -> bool:
        self._index += 1
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", label)[:40] or "say"
        try:
            write_wav(self.directory / f"{self._index:05d}_{slug}.wav", samples, sample_rate)
            self.files_written += 1
        finally:
            # Keep time even when the write failed: robot_speaking must not flicker faster
            # than the speech would have lasted.
            if self.pace:
                done = wait_unless_cancelled(len(samples) / sample_rate, cancelled)
        return done if self.pace else not cancelled()


class NullOutput:
    """output=none: audio only on the topic; paced, it takes as long as the audio."""

    label = "none"
    unavailable = ""
    files_written = 0

    def __init__(self, pace: bool = False) -> None:
        self.pace = pace

    def emit(
        self, samples: np.ndarray, sample_rate: int, label: str, cancelled: Callable[[], bool]
    ) -> bool:
        if self.pace and sample_rate:
            return wait_unless_cancelled(len(samples) / sample_rate, cancelled)
        return not cancelled()


def open_output(spec: str, pace: bool = False) -> AudioOutput:
    """'device', 'none' (or '') or a directory; raises PlaybackError or OSError."""
    spec = spec.strip() or "none"
    if spec == "device":
        return DeviceOutput()
    if spec == "none":
        return NullOutput(pace)
    return WavDirectoryOutput(spec, pace)
