"""Streaming voice activity detection and utterance segmentation (ROS-free).

Audio arrives as arbitrary-length chunks of int16 PCM (any rate, mono or interleaved
channels). It is downmixed and resampled to 16 kHz as a stream, cut into 512-sample windows
(32 ms) and scored by a VAD: faster-whisper's bundled Silero VAD (ONNX, its recurrent state
kept from window to window) or, when that cannot load or is not wanted, an energy detector.

The segmenter turns the scores into events:

* ``SpeechStarted``: speech lasted at least ``min_speech_ms``;
* ``PartialDue``: every ``partial_interval_s`` of speech, with the audio so far;
* ``SpeculationDue``: a short pause (``speculate_silence_ms``) after speech, with the audio so
  far, cut exactly as a final utterance would be: a transcript made now can become the final one
  if the pause turns out to be the end of the turn;
* ``SpeculationDiscarded``: speech resumed after a ``SpeculationDue`` (a false start);
* ``UtteranceEnded``: ``end_silence_ms`` of silence after speech (or ``max_utterance_s``
  reached, or an explicit flush), with the utterance's audio (``pre_roll_ms`` before the
  onset included, most of the trailing silence cut off). When the speculative transcript of
  the pause was marked complete (``mark_complete``: it ends like a sentence), the shorter
  ``end_silence_short_ms`` ends the turn. ``speculation`` names the speculation whose audio
  this utterance has (no speech since), so its transcript can be reused.

Event audio is mono float32 at 16 kHz in [-1, 1].
"""

from __future__ import annotations

import math
import os
import re
from collections import deque
from dataclasses import dataclass

import numpy as np

from smolfusion_ros.io.audio import Resampler, int16_to_float32, to_mono

SAMPLE_RATE = 16000
WINDOW = 512  # Silero VAD's window at 16 kHz (32 ms)
WINDOW_S = WINDOW / SAMPLE_RATE
_CONTEXT = 64  # samples of the previous window Silero v5/v6 expects in front of each window
TRAILING_KEEP_S = 0.25  # silence kept after the last speech window in an utterance's audio


class AudioFormatError(ValueError):
    """A chunk cannot be interpreted (no channels, no rate, samples not a whole frame)."""


@dataclass(frozen=True)
class VadConfig:
    engine: str = "silero"  # silero | energy
    threshold: float = 0.5  # speech probability at or above which a window is speech
    min_speech_ms: int = 200  # speech shorter than this never starts an utterance
    end_silence_ms: int = 700  # silence grace period that ends an utterance
    pre_roll_ms: int = 300  # audio kept before the onset
    max_utterance_s: float = 20.0  # an utterance is cut and finalised at this length
    partial_interval_s: float = 1.0  # 0 = no PartialDue events
    energy_threshold_db: float = -40.0  # energy engine: dBFS that scores 0.5
    # A pause this long after speech starts a speculative transcript (0 = never speculate).
    speculate_silence_ms: int = 0
    # Silence that ends the turn when the speculative transcript looks complete (0 = never
    # shorter than end_silence_ms).
    end_silence_short_ms: int = 0

    def problems(self) -> list[str]:
        found = []
        if self.engine not in ("silero", "energy"):
            found.append(f"engine={self.engine!r}: must be silero or energy")
        if not 0.0 < self.threshold < 1.0:
            found.append(f"threshold={self.threshold}: must be between 0 and 1")
        if self.min_speech_ms < 0 or self.end_silence_ms < WINDOW_S * 1000:
            found.append("min_speech_ms must be >= 0 and end_silence_ms >= 32")
        if self.pre_roll_ms < 0:
            found.append(f"pre_roll_ms={self.pre_roll_ms}: must be >= 0")
        if self.max_utterance_s < 1.0:
            found.append(f"max_utterance_s={self.max_utterance_s}: must be >= 1")
        if self.partial_interval_s < 0:
            found.append(f"partial_interval_s={self.partial_interval_s}: must be >= 0")
        if self.speculate_silence_ms and not (
            WINDOW_S * 1000 <= self.speculate_silence_ms < self.end_silence_ms
        ):
            found.append(
                f"speculate_silence_ms={self.speculate_silence_ms}: must be 0 or between 32 and "
                f"end_silence_ms ({self.end_silence_ms})"
            )
        if self.end_silence_short_ms and not (
            self.speculate_silence_ms
            and self.speculate_silence_ms <= self.end_silence_short_ms <= self.end_silence_ms
        ):
            found.append(
                f"end_silence_short_ms={self.end_silence_short_ms}: must be 0, or between "
                "speculate_silence_ms and end_silence_ms (and speculation on)"
            )
        return found


# ---- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechStarted:
    stream_s: float  # stream time (seconds of 16 kHz audio seen) of the onset


@dataclass(frozen=True)
class PartialDue:
    audio: np.ndarray
    utterance: int  # sequence number of the utterance this belongs to


@dataclass(frozen=True)
class SpeculationDue:
    audio: np.ndarray  # the utterance so far, cut as UtteranceEnded would cut it now
    utterance: int
    speculation: int  # unique per segmenter
    trailing_silence_s: float  # audio time between the end of speech and this event


@dataclass(frozen=True)
class SpeculationDiscarded:
    utterance: int
    speculation: int  # the speculation that speech resuming made worthless


@dataclass(frozen=True)
class UtteranceEnded:
    audio: np.ndarray
    utterance: int
    reason: str  # "silence" | "short_silence" | "max_length" | "flush"
    trailing_silence_s: float  # audio time between the end of speech and this event
    # The speculation whose audio this is (no speech since it was taken), or -1: its
    # transcript is this utterance's transcript.
    speculation: int = -1

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


Event = SpeechStarted | PartialDue | SpeculationDue | SpeculationDiscarded | UtteranceEnded


# Words a sentence rarely ends on: a pause after them is a pause inside the sentence, whatever
# punctuation Whisper put there (it tends to end any clip with a full stop).
_OPEN_ENDINGS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "from",
        "by",
        "about",
        "into",
        "onto",
        "than",
        "then",
        "as",
        "if",
        "because",
        "that",
        "which",
        "who",
        "whose",
        "my",
        "your",
        "his",
        "her",
        "our",
        "their",
        "its",
        "this",
        "these",
        "those",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "am",
        "will",
        "would",
        "could",
        "should",
        "can",
        "may",
        "might",
        "must",
        "shall",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "not",
        "very",
        "please",
        "um",
        "uh",
        "er",
        "like",
        "just",
        "also",
    ]
)
_QUESTION_WORDS = frozenset(
    [
        "what",
        "who",
        "whom",
        "whose",
        "where",
        "when",
        "why",
        "how",
        "which",
        "can",
        "could",
        "would",
        "will",
        "is",
        "are",
        "do",
        "does",
        "did",
        "should",
        "shall",
        "may",
    ]
)


# "Bring me", "remind us": verbs that want a second object; a pause after them is mid-sentence
# even when Whisper writes "Could you bring me?".
_TWO_OBJECT_VERBS = frozenset(
    "bring give show tell remind send hand pass buy get teach lend offer".split(" ")  # noqa: SIM905
)
_OBJECT_PRONOUNS = frozenset(("me", "us", "him", "them"))


def looks_complete(text: str) -> bool:
    """Does a transcript look like a finished turn (not a pause inside a sentence)?

    True when it ends with sentence-final punctuation (. ? !, not an ellipsis) or starts
    with a question word and has at least three words, and its last word is not one a
    sentence rarely ends on (an article, a preposition, a conjunction, an auxiliary, or
    "bring me"-like verb + pronoun that wants a second object).
    """
    stripped = text.strip().strip("\"')]")
    words = [w.strip("'") for w in re.sub(r"[^a-z0-9' ]+", " ", stripped.lower()).split()]
    words = [w for w in words if w]
    if not words or stripped.endswith(("...", "\u2026", ",", ";", ":", "-")):
        return False
    if words[-1] in _OPEN_ENDINGS:
        return False
    if len(words) >= 2 and words[-1] in _OBJECT_PRONOUNS and words[-2] in _TWO_OBJECT_VERBS:
        return False
    if stripped[-1] in ".?!":
        return True
    return words[0] in _QUESTION_WORDS and len(words) >= 3


# ---- voice activity detectors ----------------------------------------------------------------


def silero_model_path() -> str:
    """faster-whisper's bundled Silero VAD ONNX file (found without loading faster-whisper)."""
    import importlib.util

    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("faster-whisper is not installed (pip install faster-whisper==1.2.1)")
    assets = os.path.join(next(iter(spec.submodule_search_locations)), "assets")
    names = sorted(n for n in os.listdir(assets) if n.startswith("silero") and n.endswith(".onnx"))
    if not names:
        raise RuntimeError(f"no Silero VAD model in {assets}")
    return os.path.join(assets, names[-1])


class SileroVad:
    """Silero VAD scored one 512-sample window at a time, its LSTM state carried over.

    Called like faster_whisper.vad.SileroVADModel, but streaming: each window is prefixed
    with the last 64 samples of the previous one and (h, c) come from the previous call.
    """

    name = "silero"

    def __init__(self, path: str | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(
            path or silero_model_path(), providers=["CPUExecutionProvider"], sess_options=opts
        )
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(_CONTEXT, np.float32)

    def __call__(self, window: np.ndarray) -> float:
        batch = np.concatenate([self._context, window]).astype(np.float32)[None, :]
        out, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = window[-_CONTEXT:].astype(np.float32)
        return float(np.ravel(out)[0])


class EnergyVad:
    """Fallback: a window's RMS level mapped to a pseudo-probability (0.5 at threshold_db)."""

    name = "energy"

    def __init__(self, threshold_db: float = -40.0) -> None:
        self.threshold_db = threshold_db

    def reset(self) -> None:
        pass

    def __call__(self, window: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        level_db = 20.0 * math.log10(max(rms, 1e-9))
        return float(np.clip(0.5 + (level_db - self.threshold_db) / 12.0, 0.0, 1.0))


def make_vad(config: VadConfig) -> tuple[SileroVad | EnergyVad, str]:
    """The configured VAD and a note ('' or why the energy fallback is used)."""
    if config.engine == "silero":
        try:
            return SileroVad(), ""
        except Exception as exc:  # onnxruntime or the model missing: degrade, say why
            note = f"Silero VAD unavailable ({type(exc).__name__}: {exc}); using energy VAD"
            return EnergyVad(config.energy_threshold_db), note
    return EnergyVad(config.energy_threshold_db), ""


# ---- segmenter -------------------------------------------------------------------------------


class SpeechSegmenter:
    """VAD + utterance state machine over a stream of int16 chunks. Not thread-safe."""

    def __init__(self, config: VadConfig | None = None, vad=None) -> None:
        self.config = config or VadConfig()
        problems = self.config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        if vad is None:
            vad, self.vad_note = make_vad(self.config)
        else:
            self.vad_note = ""
        self.vad = vad
        self._neg_threshold = max(self.config.threshold - 0.15, 0.01)
        self._pre_roll_windows = math.ceil(self.config.pre_roll_ms / 1000 / WINDOW_S)
        self._min_speech_windows = max(1, math.ceil(self.config.min_speech_ms / 1000 / WINDOW_S))
        self._end_windows = max(1, math.ceil(self.config.end_silence_ms / 1000 / WINDOW_S))
        self._spec_windows = (
            max(1, math.ceil(self.config.speculate_silence_ms / 1000 / WINDOW_S))
            if self.config.speculate_silence_ms
            else 0
        )
        self._short_end_windows = (
            max(1, math.ceil(self.config.end_silence_short_ms / 1000 / WINDOW_S))
            if self.config.end_silence_short_ms
            else self._end_windows
        )
        self._max_windows = int(self.config.max_utterance_s / WINDOW_S)
        self._partial_windows = (
            max(1, round(self.config.partial_interval_s / WINDOW_S))
            if self.config.partial_interval_s > 0
            else 0
        )
        self._resampler: Resampler | None = None
        self.utterances = 0  # utterances started so far (the next one's number)
        self.windows = 0  # 16 kHz windows processed (stream time = windows * 32 ms)
        self.speculations = 0  # SpeculationDue events so far (the next one's number)
        self.false_starts = 0  # speculations discarded because speech resumed
        self.short_commits = 0  # turns ended by end_silence_short_ms
        self._complete = -1  # the speculation marked complete (mark_complete)
        self.reset()

    # -- public --------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return "speech" if self._state == "speech" else "listening"

    @property
    def stream_s(self) -> float:
        return self.windows * WINDOW_S

    def reset(self) -> None:
        """Forget all audio and VAD state (e.g. while the robot speaks or when disabled)."""
        self._state = "listening"  # listening | pending | speech
        self._buffer = np.zeros(0, np.float32)  # 16 kHz samples not yet scored
        self._pre_roll: deque[np.ndarray] = deque(maxlen=self._pre_roll_windows)
        self._windows: list[np.ndarray] = []  # the current (pending or active) utterance
        self._speech_windows = 0
        self._silence = 0  # consecutive non-speech windows
        self._last_speech = 0  # index into _windows after the last speech window
        self._since_partial = 0
        self._speculation = -1  # the live speculation of the current pause, or -1
        self._resampler = None
        self.vad.reset()

    def mark_complete(self, speculation: int) -> None:
        """The transcript of `speculation` looks like a finished turn: if the pause goes on,
        end the turn at end_silence_short_ms instead of end_silence_ms.

        May be called from another thread (one int assignment); it takes effect at the next
        window and only while that speculation is still live (no speech since).
        """
        self._complete = speculation

    def commit_speculation(self, speculation: int) -> UtteranceEnded | None:
        """End the turn now if `speculation` is live, marked complete, and the pause has
        already reached end_silence_short_ms; else None (the next window decides).

        For the caller that learns the transcript looks complete after the pause grew long
        enough: the turn ends at once instead of at the next chunk of audio.
        """
        if (
            self._state != "speech"
            or self._speculation < 0
            or self._speculation != speculation
            or self._complete != speculation
            or self._silence < self._short_end_windows
        ):
            return None
        self.short_commits += 1
        return self._end("short_silence")

    def feed(self, samples, sample_rate: int, channels: int = 1) -> list[Event]:
        """Add a chunk of int16 PCM (interleaved when channels > 1); returns the new events.

        Raises AudioFormatError (and changes nothing) when the chunk is malformed.
        """
        samples = np.asarray(samples)
        if channels <= 0:
            raise AudioFormatError(f"channels={channels}")
        if sample_rate < 1000 or sample_rate > 384000:
            raise AudioFormatError(f"sample_rate={sample_rate}")
        if samples.size % channels:
            raise AudioFormatError(
                f"{samples.size} samples is not a whole number of {channels}-channel frames"
            )
        events: list[Event] = []
        if self._resampler is not None and self._resampler.rate_in != sample_rate:
            # The rate changed: finish the old stream's tail, then start a new resampler.
            events += self._consume(self._resampler.flush())
            self._resampler = None
        if self._resampler is None:
            self._resampler = Resampler(sample_rate, SAMPLE_RATE)
        if samples.size == 0:
            return events
        mono = to_mono(samples.astype(np.int16, copy=False), channels)
        audio = int16_to_float32(mono)
        if sample_rate != SAMPLE_RATE:
            # io.audio.Resampler streams: output is independent of how the input was chunked.
            audio = self._resampler.process(audio)
        return events + self._consume(audio)

    def flush(self) -> list[Event]:
        """End of stream: score what is buffered and finalise an utterance in progress."""
        events: list[Event] = []
        if self._resampler is not None:
            events += self._consume(self._resampler.flush())
            self._resampler = None
        if len(self._buffer):
            pad = np.zeros(WINDOW - len(self._buffer), np.float32)
            events += self._consume(pad)
        if self._state == "speech":
            events.append(self._end("flush"))
        else:
            self._drop_pending()
        return events

    # -- internals -----------------------------------------------------------------------------

    def _consume(self, audio: np.ndarray) -> list[Event]:
        events: list[Event] = []
        if len(audio) == 0:
            return events
        self._buffer = np.concatenate([self._buffer, audio])
        count = len(self._buffer) // WINDOW
        for i in range(count):
            window = self._buffer[i * WINDOW : (i + 1) * WINDOW]
            self._step(window, self.vad(window), events)
        self._buffer = self._buffer[count * WINDOW :].copy()
        return events

    def _step(self, window: np.ndarray, prob: float, events: list[Event]) -> None:
        self.windows += 1
        speech = prob >= self.config.threshold
        quiet = prob < self._neg_threshold
        if self._state == "listening":
            if not speech:
                self._pre_roll.append(window)
                return
            self._state = "pending"
            self._windows = list(self._pre_roll)
            self._pre_roll.clear()
            self._speech_windows = 0
            self._silence = 0
        self._windows.append(window)
        if speech:
            if self._speculation >= 0:
                # The person goes on speaking: the pause was inside the turn.
                events.append(SpeculationDiscarded(self.utterances, self._speculation))
                self.false_starts += 1
                self._speculation = -1
            self._silence = 0
            self._last_speech = len(self._windows)
        elif quiet:
            self._silence += 1
        if not quiet:
            self._speech_windows += 1
        if self._state == "pending":
            if self._speech_windows >= self._min_speech_windows:
                self._state = "speech"
                self._since_partial = 0
                onset = self.windows - self._speech_windows
                events.append(SpeechStarted(stream_s=onset * WINDOW_S))
            elif self._silence >= self._end_windows // 2 + 1:
                self._drop_pending()  # a click or a cough: back to listening
            return
        if self._silence >= self._end_windows:
            events.append(self._end("silence"))
            return
        if (
            self._speculation >= 0
            and self._complete == self._speculation
            and self._silence >= self._short_end_windows
        ):
            self.short_commits += 1
            events.append(self._end("short_silence"))
            return
        if self._spec_windows and self._speculation < 0 and self._silence >= self._spec_windows:
            keep = self._keep_windows()
            self._speculation = self.speculations
            self.speculations += 1
            events.append(
                SpeculationDue(
                    audio=np.concatenate(self._windows[:keep]),
                    utterance=self.utterances,
                    speculation=self._speculation,
                    trailing_silence_s=(len(self._windows) - self._last_speech) * WINDOW_S,
                )
            )
        if len(self._windows) >= self._max_windows:
            events.append(self._end("max_length"))
            return
        self._since_partial += 1
        # No partial during a pause: the text cannot have changed since the last one.
        due = self._partial_windows and self._since_partial >= self._partial_windows
        if due and self._silence == 0:
            self._since_partial = 0
            events.append(
                PartialDue(audio=np.concatenate(self._windows), utterance=self.utterances)
            )

    def _drop_pending(self) -> None:
        keep = self._windows[-self._pre_roll.maxlen :] if self._pre_roll.maxlen else []
        self._state = "listening"
        self._windows = []
        self._pre_roll.clear()
        self._pre_roll.extend(keep)

    def _keep_windows(self) -> int:
        return min(len(self._windows), self._last_speech + math.ceil(TRAILING_KEEP_S / WINDOW_S))

    def _end(self, reason: str) -> UtteranceEnded:
        keep = self._keep_windows()
        trailing = (len(self._windows) - self._last_speech) * WINDOW_S
        audio = np.concatenate(self._windows[:keep]) if keep else np.zeros(0, np.float32)
        event = UtteranceEnded(
            audio=audio,
            utterance=self.utterances,
            reason=reason,
            trailing_silence_s=trailing,
            speculation=self._speculation,
        )
        self.utterances += 1
        self._speculation = -1
        self._state = "listening"
        self._windows = []
        self._silence = 0
        self._speech_windows = 0
        self._last_speech = 0
        self._pre_roll.clear()
        return event
