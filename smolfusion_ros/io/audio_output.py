"""Playing speech on the machine's default output device (sounddevice over PortAudio).

A robot or laptop without a sound card is a normal situation, not an error per answer:
`AudioPlayer.unavailable` says once, at start, why nothing can be played, and `play` then
does nothing. ROS-free, so the node stays thin and this is testable without rclpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

POLL_S = 0.02  # how often a playing sound checks for a stop request


class PlaybackError(RuntimeError):
    """sounddevice/PortAudio is missing (at start) or a sound could not be played."""


class AudioPlayer:
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
