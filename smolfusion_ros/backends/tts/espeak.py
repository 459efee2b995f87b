"""espeak-ng text-to-speech: the `espeak-ng` program, text on stdin, a WAV on stdout.

Runs `espeak-ng -v VOICE -s RATE -a AMPLITUDE --stdout` without a shell, so no text can be
interpreted as a command; espeak-ng speaks mono 16-bit audio at 22050 Hz.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from smolfusion_ros.backends.tts.base import Speech, TTSBackendError
from smolfusion_ros.io.audio import WavError, parse_wav, to_mono

INSTALL_HINT = "install it with: sudo apt-get install espeak-ng"


class EspeakTTS:
    name = "espeak"

    def __init__(
        self,
        voice: str = "en-us",
        rate_wpm: int = 170,
        volume: float = 1.0,
        executable: str = "espeak-ng",
        timeout_s: float = 60.0,
    ) -> None:
        if not voice or voice.startswith("-"):
            raise TTSBackendError(f"bad espeak-ng voice {voice!r}")
        self.voice = voice
        self.rate_wpm = int(rate_wpm)
        self.amplitude = max(0, min(200, round(100 * float(volume))))
        self.executable = executable
        self.timeout_s = timeout_s
        self._path: str | None = None

    def load(self) -> None:
        """Find espeak-ng and check the voice by speaking one short word."""
        self._path = shutil.which(self.executable)
        if self._path is None:
            raise TTSBackendError(
                f"espeak-ng is not installed ({self.executable!r} not found); {INSTALL_HINT}"
            )
        self.synthesize("ok")

    def synthesize(self, text: str) -> Speech:
        if self._path is None:
            self._path = shutil.which(self.executable)
            if self._path is None:
                raise TTSBackendError(f"espeak-ng is not installed; {INSTALL_HINT}")
        text = text.strip()
        if not text:
            return Speech(np.zeros(0, dtype=np.int16), 22050)
        args = [
            self._path,
            "-v", self.voice,
            "-s", str(self.rate_wpm),
            "-a", str(self.amplitude),
            "--stdout",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                args, input=text.encode("utf-8"), capture_output=True, timeout=self.timeout_s
            )
        except FileNotFoundError:
            raise TTSBackendError(f"espeak-ng is not installed; {INSTALL_HINT}") from None
        except subprocess.TimeoutExpired:
            raise TTSBackendError(f"espeak-ng took longer than {self.timeout_s:.0f} s") from None
        stderr = done.stderr.decode("utf-8", "replace").strip()
        if "voice does not exist" in stderr or (done.returncode != 0 and "voice" in stderr):
            raise TTSBackendError(
                f"unknown espeak-ng voice {self.voice!r} (`espeak-ng --voices` lists them)"
            )
        if done.returncode != 0:
            raise TTSBackendError(f"espeak-ng failed (exit {done.returncode}): {stderr[:200]}")
        try:
            samples, rate = parse_wav(done.stdout)
        except WavError as exc:
            raise TTSBackendError(f"espeak-ng wrote no usable WAV: {exc}") from None
        return Speech(to_mono(samples), rate)

    def close(self) -> None:
        pass
