"""The text-to-speech protocol: text -> mono int16 audio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class TTSBackendError(RuntimeError):
    """A TTS back end could not load or run; the message is meant for the operator."""


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # mono int16
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


class TextToSpeech(Protocol):
    name: str

    def load(self) -> None:
        """Check the engine is there; raises TTSBackendError naming what to install."""

    def synthesize(self, text: str) -> Speech: ...

    def close(self) -> None: ...
