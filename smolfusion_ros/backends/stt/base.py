"""The speech-to-text protocol: mono float32 audio at the back end's rate -> text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class SpeechBackendError(RuntimeError):
    """A speech back end could not load or run; the message is meant for the operator."""


@dataclass(frozen=True)
class Transcript:
    text: str
    confidence: float  # 0..1
    locale: str  # BCP-47 language of the text, e.g. "en", "ko"
    audio_s: float  # seconds of audio transcribed
    compute_s: float  # seconds it took


class SpeechToText(Protocol):
    """Used from one thread at a time (the speech node's worker)."""

    name: str
    sample_rate: int  # the rate `transcribe` expects, e.g. 16000

    def load(self) -> None:
        """Load the model; raises SpeechBackendError with a clear message."""

    def transcribe(self, audio: np.ndarray, final: bool) -> Transcript:
        """Transcribe mono float32 samples in [-1, 1]; `final` = the utterance has ended
        (a back end may decode faster but less exactly for partial results)."""

    def close(self) -> None: ...
