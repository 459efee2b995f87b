"""The robot's voice without ROS: streamed answers cut into sentences, synthesised and played
one after another on one worker thread.

`SpeechOutput` takes answers as they stream (`feed`, per request id) and texts to say now
(`say`), and speaks them in order through a text-to-speech back end and an audio output
(io/audio_output.py). Callers are never blocked: `feed` and `say` only queue; the result of a
`say` comes back through its `SpeechJob` (an event and an optional callback).

The queue is bounded (`max_queued` sentences, core.worker's BoundedQueue). When it is full the
*oldest* queued sentence is dropped and counted (`dropped_queue_full`): a robot that is that far
behind should catch up with what was said last, not with what was said minutes ago; a dropped
`say` job finishes with success=False and an error saying why. The thread: core.worker.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from smolfusion_ros.backends.tts.base import Speech, TextToSpeech, TTSBackendError
from smolfusion_ros.core.worker import BoundedQueue, FullPolicy, WorkerThread
from smolfusion_ros.io.audio_output import AudioOutput, PlaybackError

SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
UNSPEAKABLE = re.compile(r"[*#_`~|<>]+")
SPEAKING_HOLD_S = 0.25  # "speaking" stays True this long between queued sentences
MAX_OPEN_REQUESTS = 32  # answers being streamed at once; the oldest unfinished one is dropped
MAX_QUEUED = 64  # sentences waiting to be spoken (minutes of speech)


class SentenceSplitter:
    """Streamed text in, complete sentences out."""

    def __init__(self, max_chars: int = 200) -> None:
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out = []
        while True:
            match = SENTENCE_END.search(self._buf)
            if match:
                piece, self._buf = self._buf[: match.end()], self._buf[match.end() :]
            elif len(self._buf) > self.max_chars:
                cut = self._long_cut()
                if cut is None:
                    break
                piece, self._buf = self._buf[:cut], self._buf[cut:]
            else:
                break
            if piece.strip():
                out.append(piece.strip())
        return out

    def _long_cut(self) -> int | None:
        """Where to cut a long sentence: after the last comma, else the last space."""
        floor = self.max_chars // 2
        text = self._buf
        for i in range(len(text) - 2, floor - 1, -1):
            if text[i] in ",;:" and text[i + 1].isspace():
                return i + 2
        space = max((i for i in range(floor, len(text)) if text[i].isspace()), default=None)
        return None if space is None else space + 1

    def finish(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []


def speakable(text: str) -> str:
    """Drop markdown marks a voice would spell out."""
    return " ".join(UNSPEAKABLE.sub(" ", text).split())


@dataclass
class SpeechJob:
    """One sentence (or one `say` text) on its way to the speaker."""

    text: str
    voice: str  # empty = the engine's voice
    request_id: str
    generation: int = 0
    on_done: Callable[[SpeechJob], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    success: bool = False
    error: str = ""
    duration_s: float = 0.0

    def finish(self, success: bool, error: str = "", duration_s: float = 0.0) -> None:
        if self.done.is_set():
            return  # finished once (e.g. stopped, then reached by the worker)
        self.success, self.error, self.duration_s = success, error, duration_s
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


@dataclass
class SpeechOutputStats:
    utterances: int = 0
    errors: int = 0
    stopped: int = 0
    accepted: int = 0  # sentences (and says) queued since the start
    dropped_queue_full: int = 0
    playback_failures: int = 0
    files: int = 0
    queued: int = 0
    speaking: bool = False
    audio_s_per_synthesis_s: float = 0.0
    last_error: str = ""


class SpeechOutput:
    """Queue -> back end -> audio output, on one worker thread (`start`, `close`).

    `make_backend(voice)` creates a back end for a voice (created once per voice, loaded on
    first use); `on_speaking(bool)` is called from the worker when speech starts and when the
    queue is empty and the last sound has ended; `on_audio(speech, request_id)` with each
    synthesised utterance before it is played. `warn`/`error` receive log lines.
    """

    def __init__(
        self,
        make_backend: Callable[[str], TextToSpeech],
        output: AudioOutput,
        voice: str,
        *,
        max_sentence_chars: int = 200,
        max_queued: int = MAX_QUEUED,
        on_speaking: Callable[[bool], None] | None = None,
        on_audio: Callable[[Speech, str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        error: Callable[[str], None] | None = None,
    ) -> None:
        self._make_backend = make_backend
        self.output = output
        self.voice = voice
        self.max_sentence_chars = max_sentence_chars
        self.max_queued = max_queued
        self._on_speaking = on_speaking or (lambda _speaking: None)
        self._on_audio = on_audio or (lambda _speech, _request_id: None)
        self._warn = warn or (lambda _line: None)
        self._error = error or (lambda _line: None)
        self._backends: dict[str, TextToSpeech] = {}
        self._backends_lock = threading.Lock()
        # Back ends replaced by set_backend_factory: the worker may still be using one, so
        # they are closed by the worker before its next sentence, or at close().
        self._retired: list[TextToSpeech] = []

        self._lock = threading.Lock()
        # A ValueError for max_queued < 1.
        self._jobs = BoundedQueue[SpeechJob]("sentences", max_queued, FullPolicy.DROP_OLDEST)
        self._generation = 0
        self._splitters: OrderedDict[str, SentenceSplitter] = OrderedDict()
        self._muted: deque[str] = deque(maxlen=64)  # stopped answers whose chunks still come
        self._speaking = False
        self._quiet_at: float | None = None  # monotonic: "speaking" ends then (_take)
        self._stats = SpeechOutputStats()
        self._playback_reported = False
        self._audio_s = 0.0
        self._synth_s = 0.0
        self._worker = WorkerThread[SpeechJob](
            "tts-worker",
            take=self._take,
            process=self._speak,
            wait_s=self._wait_s,
            on_error=self._job_failed,
            cond=threading.Condition(self._lock),
        )

    # ---- life ----------------------------------------------------------------------------

    def check_voice(self, voice: str = "") -> None:
        """Create and load the back end for a voice now; raises TTSBackendError naming what
        is missing (the engine program, a voice)."""
        self._backend_for(voice or self.voice)

    def set_voice(self, voice: str) -> None:
        """The default voice from the next sentence on (`ros2 param set tts_node voice`);
        raises TTSBackendError, keeping the old voice, when this one cannot speak."""
        self.check_voice(voice)
        self.voice = voice

    def set_backend_factory(self, make_backend: Callable[[str], TextToSpeech]) -> None:
        """Back ends made by `make_backend` from the next sentence on (a new volume)."""
        with self._backends_lock:
            self._make_backend = make_backend
            self._retired.extend(self._backends.values())
            self._backends = {}

    def start(self) -> None:
        self._worker.start()

    def close(self, reason: str = "shutting down") -> None:
        """Stop the worker (the sentence being spoken stops, later says are refused), drop
        the queue (jobs finish with `reason`), close the back ends once the worker left them."""
        self._worker.stop(5.0, then=self._close_backends)
        self.stop(reason)

    def _close_retired(self) -> None:
        with self._backends_lock:
            retired, self._retired = self._retired, []
        for backend in retired:
            backend.close()

    def _close_backends(self) -> None:
        with self._backends_lock:
            backends = list(self._backends.values()) + self._retired
            self._backends, self._retired = {}, []
        for backend in backends:
            backend.close()

    # ---- input ---------------------------------------------------------------------------

    def feed(self, request_id: str, text: str, is_final: bool) -> int:
        """A piece of a streamed answer; complete sentences are queued. Returns how many."""
        with self._lock:
            if request_id in self._muted:
                return 0
            splitter = self._splitters.get(request_id)
            if splitter is None:
                splitter = self._splitters[request_id] = SentenceSplitter(self.max_sentence_chars)
                while len(self._splitters) > MAX_OPEN_REQUESTS:
                    self._splitters.popitem(last=False)  # an answer that never finished
            sentences = splitter.feed(text)
            if is_final:
                sentences += splitter.finish()
                del self._splitters[request_id]
            dropped = [self._enqueue_locked(SpeechJob(s, "", request_id)) for s in sentences]
        self._finish_dropped(dropped)
        return len(sentences)

    def say(
        self,
        text: str,
        voice: str = "",
        interrupt: bool = False,
        on_done: Callable[[SpeechJob], None] | None = None,
    ) -> SpeechJob:
        """Queue a text to speak (after what is queued, or at once with `interrupt`).

        The job finishes when spoken (or failed, stopped, dropped); an empty text finishes
        at once with success=False.
        """
        job = SpeechJob(text.strip(), voice.strip(), "say", on_done=on_done)
        if not job.text:
            job.finish(False, "empty text")
            return job
        if interrupt:
            self.stop("interrupted by say")
        with self._lock:
            dropped = job if self._worker.stopping else self._enqueue_locked(job)
        if dropped is job:
            job.finish(False, "shutting down")
        else:
            self._finish_dropped([dropped])
        return job

    def stop(self, reason: str = "stopped") -> int:
        """Drop the queue and the answers being streamed; playback stops. Returns how many
        queued sentences were dropped."""
        with self._lock:
            self._generation += 1
            dropped = self._jobs.drain()
            self._muted.extend(self._splitters)
            self._splitters.clear()
            self._stats.stopped += len(dropped)
            if self._quiet_at is not None:  # stopped in the hold after a sentence: quiet now
                self._quiet_at = 0.0
                self._worker.cond.notify()
        for job in dropped:
            job.finish(False, reason)
        return len(dropped)

    def _enqueue_locked(self, job: SpeechJob) -> SpeechJob | None:
        """Queue a job; returns the job dropped to make room, if any."""
        job.generation = self._generation
        dropped = self._jobs.put(job)
        self._worker.cond.notify()
        return dropped

    def _finish_dropped(self, dropped: list[SpeechJob | None]) -> None:
        for job in dropped:
            if job is not None:
                job.finish(False, f"dropped: the speech queue is full ({self.max_queued} queued)")

    # ---- worker --------------------------------------------------------------------------

    def _cancelled(self, job: SpeechJob) -> bool:
        return job.generation != self._generation or self._worker.stopping

    def _set_speaking(self, speaking: bool) -> None:
        """Called with the lock held; the callback publishes."""
        if self._speaking != speaking:
            self._speaking = speaking
            self._on_speaking(speaking)

    def _take(self) -> SpeechJob | None:
        """With the lock held: the next sentence. With none, "speaking" ends SPEAKING_HOLD_S
        later (a pause between sentences of an answer still streaming is no end of speech)."""
        job, now = self._jobs.pop(), time.monotonic()
        if job is not None or not self._speaking:
            self._quiet_at = None
        elif self._quiet_at is None:
            self._quiet_at = now + SPEAKING_HOLD_S
        elif now >= self._quiet_at:
            self._set_speaking(False)
        return job

    def _wait_s(self) -> float | None:
        return None if self._quiet_at is None else max(0.0, self._quiet_at - time.monotonic())

    def _job_failed(self, job: SpeechJob, exc: Exception) -> None:
        self._record_error(f"{type(exc).__name__}: {exc}")
        job.finish(False, str(exc))

    def _backend_for(self, voice: str) -> TextToSpeech:
        with self._backends_lock:
            backend = self._backends.get(voice)
            if backend is None:
                try:
                    backend = self._make_backend(voice)
                except ValueError as exc:
                    raise TTSBackendError(str(exc)) from None
                backend.load()
                self._backends[voice] = backend
            return backend

    def _speak(self, job: SpeechJob) -> None:
        self._close_retired()  # between sentences no back end is in use
        text = speakable(job.text)
        if not text:
            job.finish(True)
            return
        started = time.monotonic()
        try:
            speech = self._backend_for(job.voice or self.voice).synthesize(text)
        except TTSBackendError as exc:
            self._record_error(str(exc))
            job.finish(False, str(exc))
            return
        synth_s = time.monotonic() - started
        if self._cancelled(job):
            job.finish(False, "stopped")
            return
        with self._lock:
            self._stats.utterances += 1
            self._audio_s += speech.duration_s
            self._synth_s += synth_s
            self._set_speaking(True)
        self._on_audio(speech, job.request_id)
        played = self._emit(speech, job)
        if played:
            job.finish(True, duration_s=speech.duration_s)
        else:
            job.finish(False, "stopped", speech.duration_s)

    def _emit(self, speech: Speech, job: SpeechJob) -> bool:
        """Play or write the audio; False when stopped on the way."""

        def cancelled() -> bool:
            return self._cancelled(job)

        try:
            return self.output.emit(speech.samples, speech.sample_rate, job.request_id, cancelled)
        except PlaybackError as exc:  # device busy or gone: keep speaking to audio_out
            self._record_playback_failure(str(exc))
        except OSError as exc:
            self._record_error(f"cannot write WAV: {exc}")
        return not cancelled()

    # ---- bookkeeping ---------------------------------------------------------------------

    def _record_playback_failure(self, error: str) -> None:
        """The first failure is logged; the rest are counted, since a device that fails once
        usually fails for every answer."""
        with self._lock:
            self._stats.playback_failures += 1
            self._stats.last_error = error
            first = not self._playback_reported
            self._playback_reported = True
        if first:
            self._warn(
                f"{error}; speech still goes to audio_out, further playback failures are "
                "only counted on /diagnostics"
            )

    def _record_error(self, error: str) -> None:
        with self._lock:
            self._stats.errors += 1
            self._stats.last_error = error
        self._error(error)

    def stats(self) -> SpeechOutputStats:
        with self._lock:
            stats = SpeechOutputStats(**vars(self._stats))
            stats.queued = len(self._jobs)
            stats.accepted = self._jobs.counts.accepted
            stats.dropped_queue_full = self._jobs.counts.dropped
            stats.speaking = self._speaking
            stats.audio_s_per_synthesis_s = (
                self._audio_s / self._synth_s if self._synth_s > 0 else 0.0
            )
        stats.files = self.output.files_written
        return stats
