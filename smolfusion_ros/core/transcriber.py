"""The transcription worker and the partial / speculation / final policy (ROS-free).

`Transcriber` turns a stream of audio chunks into utterance results: it feeds the chunks to a
`SpeechSegmenter` (VAD) and hands its events to one `TranscriptionWorker` thread that runs the
speech-to-text back end, never the caller's thread (in speech_node: an executor thread).

Policy, in order of priority on the one worker:

* Finals are always transcribed, in order, unless the speculative transcript of the pause
  that ended the turn covers the same audio (no speech since it was taken): that transcript
  is the final, published at once without waiting for the worker.
* A speculation (a pause of `speculate_silence_ms`) is queued before everything but finals;
  a newer one replaces one still waiting, and speech resuming withdraws it (a false start).
  When its transcript looks complete (`looks_complete`) and the pause has already reached
  `end_silence_short_ms`, the turn is committed there and then, from the worker, instead of
  waiting for the next audio chunk (and only the final is published, not a speculative
  utterance that would be stale at once).
* A partial (a preview while the person speaks) runs only on an idle worker: partials never
  queue, and a skipped one is counted. A running partial cannot be interrupted, so when the
  last one took more than half of `partial_interval_s` (a slow or loaded machine; for the
  first preview of a turn, judged by the last full transcription), previews are skipped
  (partials_too_slow) rather than delay the speculation at the pause after them.

Queues are bounded: at most `max_finals` finals wait (a full queue drops the oldest, counted as
finals_dropped; finals_accepted counts the rest), at most one speculation and one partial.

Every turn keeps a timeline of times on the `now` clock (`last_timeline`; the wall clock unless
the node passes its own): the VAD's end of speech, the speculation queued / started / done, the
turn committed, the final started and published; it says where the time between the end of
speech and the utterance goes.

Thread safety: `feed`, `flush`, `tick`, `set_muted`, `set_enabled` may be called from any
thread (one lock guards the segmenter); results are delivered on the worker thread, or on the
caller's thread for a final that reuses a finished speculation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from smolfusion_ros.backends.stt.base import SpeechToText, Transcript
from smolfusion_ros.core.speech import (
    PartialDue,
    SpeculationDiscarded,
    SpeculationDue,
    SpeechSegmenter,
    UtteranceEnded,
    looks_complete,
)
from smolfusion_ros.core.worker import BoundedQueue, FullPolicy, WorkerThread

SPECULATION_CACHE = 4  # speculative transcripts kept for reuse (only the newest is ever used)
STREAM_GAP_MIN_S = 1.5  # audio silent this long mid-utterance ends it (a file or device stopped)
# Previews give way on a slow machine: a partial that took more than this share of
# partial_interval_s makes the next ones skip for PARTIAL_RETRY_S (then one is tried again).
# A running partial cannot be interrupted, and under a load of 12 on 2 cores partials took
# 1-2 s and delayed every speculation at the pause after them (bench_speech: 4/4 turns).
# Without a recent preview to judge by (the first of a turn), the last full transcription
# (final or speculation) does: a preview on a short window costs about a fifth of one.
PARTIAL_BUDGET = 0.5
PARTIAL_RETRY_S = 5.0
PARTIAL_SHARE = 0.25

PARTIAL, SPECULATION, FINAL = "partial", "speculation", "final"


@dataclass
class Job:
    """One transcription: a partial preview, a speculation at a pause, or a final."""

    kind: str  # PARTIAL | SPECULATION | FINAL
    audio: np.ndarray
    utterance: int
    generation: int  # Transcriber generation when queued: older partials/speculations are stale
    speculation: int = -1  # a speculation: its number; a final: the one whose text it may reuse
    reason: str = ""  # why a final ended (silence, short_silence, max_length, flush)
    audio_end: float = 0.0  # capture time (`now` clock) of the end of the chunk that ended it
    trailing_silence_s: float = 0.0  # audio between the end of speech and that chunk's end
    submitted: float = 0.0  # `now` clock times: queued, started on the worker, done
    started: float = 0.0
    finished: float = 0.0
    reused: bool = False  # a final that took its speculation's transcript
    # Wall times of this job's turn (shared by a final and the speculation it may reuse).
    timeline: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class UtteranceResult:
    """What the node publishes: a partial, a speculative or a final utterance."""

    text: str
    confidence: float
    locale: str
    utterance: int
    is_final: bool
    speculative: bool
    reused: bool = False  # a final that took its speculation's transcript
    reason: str = ""
    audio_s: float = 0.0
    compute_s: float = 0.0
    latency_s: float = -1.0  # finals: end of speech (by the chunks' stamps) -> published


class TranscriptionWorker:
    """One thread (core.worker) that transcribes, with the bounded queues described in the
    module doc; `_take` is the priority order."""

    def __init__(
        self,
        backend: SpeechToText,
        on_result: Callable[[Job, Transcript], None],
        on_error: Callable[[Job, str], None],
        max_finals: int = 8,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._on_result = on_result
        self._on_error = on_error
        self._now = now  # the Transcriber's clock: jobs' started/finished join its timeline
        self.max_finals = max(1, int(max_finals))
        self._finals = BoundedQueue[Job]("finals", self.max_finals, FullPolicy.DROP_OLDEST)
        self._speculation: Job | None = None
        self._partial: Job | None = None
        self._speculated: dict[int, Transcript] = {}  # speculation number -> transcript
        self._worker = WorkerThread[Job](
            "stt_worker", take=self._take, process=self._transcribe, on_error=self._failed
        )
        self._cond = self._worker.cond
        self._worker.start()

    @property
    def busy(self) -> bool:
        return self._worker.current is not None

    @property
    def running_kind(self) -> str:
        job = self._worker.current
        return job.kind if job is not None else ""

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._finals) + (self._speculation is not None) + (self._partial is not None)

    @property
    def finals_accepted(self) -> int:
        return self._finals.counts.accepted

    @property
    def finals_dropped(self) -> int:
        return self._finals.counts.dropped

    def submit_speculation(self, job: Job) -> None:
        with self._cond:
            # A preview of this utterance is pointless once its pause is being transcribed.
            self._partial = None
            self._speculation = job
            self._cond.notify()

    def discard_speculation(self, speculation: int) -> None:
        """Speech resumed: drop the job if it has not started, and its transcript."""
        with self._cond:
            if self._speculation is not None and self._speculation.speculation == speculation:
                self._speculation = None
            self._speculated.pop(speculation, None)

    def offer_partial(self, job: Job) -> bool:
        """Queue a preview only when the worker has nothing else to do."""
        with self._cond:
            if self.busy or self._finals or self._speculation or self._partial:
                return False
            self._partial = job
            self._cond.notify()
            return True

    def take_speculated(self, speculation: int) -> Transcript | None:
        """The finished transcript of `speculation` (removed), or None."""
        with self._cond:
            return self._speculated.pop(speculation, None) if speculation >= 0 else None

    def submit_final(self, job: Job) -> None:
        with self._cond:
            self._partial = None
            if self._speculation is not None and self._speculation.speculation != job.speculation:
                self._speculation = None  # a speculation this final does not reuse
            self._finals.put(job)  # full: the oldest final is dropped (counted)
            self._cond.notify()

    def _take(self) -> Job | None:
        """Called with the lock held: the next job by priority, or None."""
        final, job = self._finals.peek(), None
        if final is not None:
            # The speculation a final reuses runs first (it is the final's transcript).
            spec = self._speculation
            if spec is not None and spec.speculation == final.speculation:
                job, self._speculation = spec, None
            else:
                job = self._finals.pop()
        elif self._speculation is not None:
            job, self._speculation = self._speculation, None
        else:
            job, self._partial = self._partial, None
        if job is not None:
            job.started = self._now()
        return job

    def _transcribe(self, job: Job) -> None:
        with self._cond:
            reused = (
                self._speculated.pop(job.speculation, None)
                if job.kind == FINAL and job.speculation >= 0
                else None
            )
        if reused is not None:
            job.reused = True
            result = Transcript(reused.text, reused.confidence, reused.locale, reused.audio_s, 0.0)
        else:
            # A speculation is transcribed as a final (beam search): it may become one.
            result = self._backend.transcribe(job.audio, job.kind != PARTIAL)
        if job.kind == SPECULATION:
            with self._cond:
                self._speculated[job.speculation] = result
                while len(self._speculated) > SPECULATION_CACHE:
                    self._speculated.pop(next(iter(self._speculated)))
        job.finished = self._now()
        self._on_result(job, result)

    def _failed(self, job: Job, exc: Exception) -> None:
        """A failed transcription or result handler (job.finished is set once the transcript
        is there) is reported; the worker goes on."""
        where = "result handler: " if job.finished else ""
        self._on_error(job, f"{where}{type(exc).__name__}: {exc}")

    def stop(self, timeout: float = 30.0, then: Callable[[], None] | None = None) -> bool:
        """Drop what waits; wait up to `timeout` for a transcription in progress. `then`
        (closing the recogniser) runs once the worker has left it. True when it has."""
        with self._cond:
            self._finals.drain()
            self._speculation = self._partial = None
        return self._worker.stop(timeout, then=then)


class SequenceCheck:
    """Chunks lost on the way, by AudioChunk.seq (0, 1, 2, ... per stream).

    A publisher that leaves seq at 0 is not checked; a lower number than expected is a new
    stream (a restarted microphone), not a loss.
    """

    def __init__(self) -> None:
        self._next: int | None = None
        self.lost_chunks = 0
        self.stream_gaps = 0
        self.stream_restarts = 0

    def check(self, seq: int) -> None:
        expected, self._next = self._next, seq + 1
        if expected is None or (seq == 0 and expected == 1):
            return
        if seq > expected:
            self.lost_chunks += seq - expected
            self.stream_gaps += 1
        elif seq < expected:
            self.stream_restarts += 1


@dataclass
class _Counts:
    chunks: int = 0
    dropped_chunks: int = 0  # malformed chunks (count_error)
    muted_chunks: int = 0
    disabled_chunks: int = 0
    utterances: int = 0
    partials: int = 0
    partials_skipped: int = 0
    partials_too_slow: int = 0  # of those skipped: the last partial took too long
    empty_results: int = 0
    errors: int = 0
    speculations: int = 0
    false_starts: int = 0
    speculations_reused: int = 0
    speculation_waits: int = 0  # speculations queued while the worker was busy
    early_commits: int = 0  # turns committed by the worker as its speculation finished


class Transcriber:
    """Segmenter + worker + policy: audio chunks in, `UtteranceResult`s out (see module doc)."""

    def __init__(
        self,
        backend: SpeechToText,
        segmenter: SpeechSegmenter,
        publish: Callable[[UtteranceResult], None],
        on_error: Callable[[str], None] | None = None,
        language: str = "en",
        max_finals: int = 8,
        stream_gap_s: float | None = None,
        enabled: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        # The clock the chunks' stamps (audio_end) are on: the node clock in speech_node (sim
        # time under use_sim_time). Latencies and the timeline are measured on it too, because
        # they are differences from those stamps; the stream gap stays on time.monotonic.
        self._now = now
        self.segmenter = segmenter
        self._publish = publish
        self._report_error = on_error or (lambda _msg: None)
        self.language = language
        # Well above the end-of-speech silence: a chunk delayed by a busy machine or network
        # must not cut a sentence in two.
        self.stream_gap_s = (
            stream_gap_s
            if stream_gap_s is not None
            else max(STREAM_GAP_MIN_S, 2 * segmenter.config.end_silence_ms / 1000.0)
        )
        self._lock = threading.RLock()
        self._enabled = enabled
        self._muted = False
        self._generation = 0  # bumped on mute/disable: partials of older audio are dropped
        self._live_speculation = -1  # the speculation whose transcript may still be published
        self._last_partial_text: dict[int, str] = {}
        self._last_chunk_at: float | None = None  # monotonic
        self._last_audio_end = 0.0  # capture time (`now` clock) of the end of the last chunk
        self._partial_cost = 0.0  # seconds the last partial took on the worker
        self._full_cost = 0.0  # seconds the last final or speculation took
        self._partial_offered_at = -PARTIAL_RETRY_S  # monotonic
        self.counts = _Counts()
        self.sequence = SequenceCheck()
        self.audio_s = 0.0
        self.compute_s = 0.0
        self.last_rtf = 0.0
        self.last_latency_s = -1.0  # end of speech -> final published
        self.last_finalise_s = -1.0  # turn committed -> final published
        self.last_error = ""
        # Wall times of the turn in progress and of the last finished one (module doc).
        self._timeline: dict[str, float] = {}
        self.last_timeline: dict[str, float] = {}
        self.worker = TranscriptionWorker(
            backend, self._on_result, self._on_error, max_finals, now=now
        )

    # ---- input -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if not self._enabled:
            return "disabled"
        if self._muted:
            return "muted"
        return self.segmenter.state

    def feed(
        self,
        samples,
        sample_rate: int,
        channels: int = 1,
        seq: int = 0,
        audio_end: float | None = None,
    ) -> None:
        """One chunk of int16 PCM. `audio_end`: capture time (`now` clock) of its last sample, when
        the publisher stamped it (latency then includes transport). Raises AudioFormatError
        for a malformed chunk (nothing changes)."""
        now = self._now()
        with self._lock:
            self.counts.chunks += 1
            self.sequence.check(int(seq))
            if not self._enabled:
                self.counts.disabled_chunks += 1
                return
            if self._muted:
                self.counts.muted_chunks += 1
                return
            try:
                events = self.segmenter.feed(samples, sample_rate, channels)
            except Exception as exc:
                self.counts.dropped_chunks += 1
                self.last_error = f"bad audio chunk: {exc}"
                raise
            self._last_chunk_at = time.monotonic()
            self._last_audio_end = min(audio_end, now) if audio_end else now
            self._handle(events, self._last_audio_end, now)

    def tick(self) -> None:
        """Call periodically: audio that stopped mid-utterance (a file ended, a device
        vanished) finishes the utterance instead of waiting for silence that never comes."""
        with self._lock:
            if self.segmenter.state != "speech" or self._last_chunk_at is None:
                return
            if time.monotonic() - self._last_chunk_at < self.stream_gap_s:
                return
            now = self._now()
            self._handle(self.segmenter.flush(), now - self.stream_gap_s, now)

    def flush(self) -> None:
        """End of stream: finish the utterance in progress now."""
        with self._lock:
            now = self._now()
            self._handle(self.segmenter.flush(), now, now)

    def set_muted(self, muted: bool) -> None:
        """While muted (the robot speaks) audio is dropped; a change forgets the utterance in
        progress and starts from a clean VAD state."""
        with self._lock:
            if muted != self._muted:
                self._muted = muted
                self._forget()

    def set_enabled(self, enabled: bool) -> None:
        with self._lock:
            if enabled != self._enabled:
                self._enabled = enabled
                self._forget()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def _forget(self) -> None:
        self._generation += 1
        self._live_speculation = -1
        self.segmenter.reset()

    # ---- policy (called with the lock held) --------------------------------------------------

    def _handle(self, events, audio_end: float, now: float) -> None:
        for event in events:
            if isinstance(event, PartialDue):
                job = Job(PARTIAL, event.audio, event.utterance, self._generation, submitted=now)
                if self._partials_too_slow() or not self.worker.offer_partial(job):
                    self.counts.partials_skipped += 1
                else:
                    self._partial_offered_at = time.monotonic()
            elif isinstance(event, SpeculationDue):
                self.counts.speculations += 1
                self._live_speculation = event.speculation
                busy = self.worker.busy
                self.counts.speculation_waits += busy
                # A new timeline: the turn's final, if it reuses this speculation, shares it.
                self._timeline = {
                    "speech_end": audio_end - event.trailing_silence_s,
                    "spec_due": now,
                    "spec_waited_for_partial": float(self.worker.running_kind == PARTIAL),
                }
                self.worker.submit_speculation(
                    Job(
                        SPECULATION,
                        event.audio,
                        event.utterance,
                        self._generation,
                        speculation=event.speculation,
                        submitted=now,
                        timeline=self._timeline,
                    )
                )
            elif isinstance(event, SpeculationDiscarded):
                self.counts.false_starts += 1
                self._live_speculation = -1
                self.worker.discard_speculation(event.speculation)
            elif isinstance(event, UtteranceEnded):
                self._end_turn(event, audio_end, now)

    def _partials_too_slow(self) -> bool:
        budget = PARTIAL_BUDGET * self.segmenter.config.partial_interval_s
        recent = time.monotonic() - self._partial_offered_at < PARTIAL_RETRY_S
        cost = self._partial_cost if recent else PARTIAL_SHARE * self._full_cost
        if cost > budget:
            self.counts.partials_too_slow += 1
            return True
        return False

    def _end_turn(self, event: UtteranceEnded, audio_end: float, now: float) -> None:
        self._live_speculation = -1
        # The final shares its speculation's timeline; without one, a timeline of its own.
        timeline = self._timeline if event.speculation >= 0 else {}
        self._timeline = {}
        timeline["speech_end"] = audio_end - event.trailing_silence_s
        timeline["final_due"] = now
        job = Job(
            FINAL,
            event.audio,
            event.utterance,
            self._generation,
            speculation=event.speculation,
            reason=event.reason,
            audio_end=audio_end,
            trailing_silence_s=event.trailing_silence_s,
            submitted=now,
            timeline=timeline,
        )
        done = self.worker.take_speculated(event.speculation)
        if done is None:
            self.worker.submit_final(job)
            return
        # The speculation already has this turn's transcript: publish it now, without
        # waiting behind whatever the worker runs.
        job.reused = True
        job.started = job.finished = now
        self._deliver(job, Transcript(done.text, done.confidence, done.locale, done.audio_s, 0.0))

    # ---- results -----------------------------------------------------------------------------

    def _on_result(self, job: Job, result: Transcript) -> None:
        """On the worker thread."""
        with self._lock:  # how long transcriptions take now (_partials_too_slow)
            if job.kind == PARTIAL:
                self._partial_cost = result.compute_s
            elif not job.reused:
                self._full_cost = result.compute_s
        if job.kind != SPECULATION:
            self._deliver(job, result)
            return
        with self._lock:
            # Recorded also when the turn was committed before this finished (the final then
            # waits for it and reuses it): a discarded speculation's timeline is dropped.
            job.timeline.update(spec_start=job.started, spec_done=job.finished)
            live = job.generation == self._generation and job.speculation == self._live_speculation
            if live and looks_complete(result.text):
                # The pause may be the end of the turn: a shorter silence commits it, and
                # when the pause is that long already, it is committed now.
                self.segmenter.mark_complete(job.speculation)
                event = self.segmenter.commit_speculation(job.speculation)
                if event is not None:
                    # Only the final goes out: a speculative utterance just before it would
                    # start a prefill in fusion_node that the final preempts at once.
                    self.counts.early_commits += 1
                    self._account(result)
                    self._end_turn(event, self._last_audio_end, self._now())
                    return
        self._deliver(job, result)

    def _account(self, result: Transcript) -> None:
        self.audio_s += result.audio_s
        self.compute_s += result.compute_s
        if result.audio_s > 0:
            self.last_rtf = result.compute_s / result.audio_s

    def _deliver(self, job: Job, result: Transcript) -> None:
        text = result.text.strip()
        with self._lock:
            if not job.reused:  # a reused transcript was counted as its speculation
                self._account(result)
            stale = job.generation != self._generation
            if job.kind == SPECULATION:
                # Published only while no speech followed and the turn has not ended yet.
                if stale or not text or job.speculation != self._live_speculation:
                    return
            elif job.kind == PARTIAL:
                # Audio from before a mute or a disable, or a partial that changes nothing.
                if stale or not text or self._last_partial_text.get(job.utterance) == text:
                    return
                self._last_partial_text = {job.utterance: text}
                self.counts.partials += 1
            elif not text:
                self.counts.empty_results += 1
                return
            latency = -1.0
            if job.kind == FINAL:
                done = self._now()
                self.counts.utterances += 1
                self.counts.speculations_reused += job.reused
                self.last_finalise_s = done - job.submitted
                latency = done - (job.audio_end - job.trailing_silence_s)
                self.last_latency_s = latency
                job.timeline.update(final_start=job.started, published=done)
                self.last_timeline = dict(job.timeline)
        self._publish(
            UtteranceResult(
                text=text,
                confidence=float(result.confidence),
                locale=result.locale or self.language,
                utterance=job.utterance,
                is_final=job.kind == FINAL,
                speculative=job.kind == SPECULATION,
                reused=job.reused,
                reason=job.reason,
                audio_s=result.audio_s,
                compute_s=result.compute_s,
                latency_s=latency,
            )
        )

    def _on_error(self, job: Job, error: str) -> None:
        with self._lock:
            self.counts.errors += 1
            self.last_error = f"transcription failed: {error}"
        self._report_error(f"utterance {job.utterance}: transcription failed: {error}")

    def drop_chunk(self, error: str) -> None:
        """A malformed chunk the caller could not even decode: counted, never raised."""
        with self._lock:
            self.counts.chunks += 1
            self.counts.dropped_chunks += 1
            self.last_error = error

    # ---- diagnostics -------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "state": self.state,
                **vars(self.counts),
                "lost_chunks": self.sequence.lost_chunks,
                "stream_gaps": self.sequence.stream_gaps,
                "stream_restarts": self.sequence.stream_restarts,
                "queued_jobs": self.worker.pending,
                "finals_accepted": self.worker.finals_accepted,
                "finals_dropped": self.worker.finals_dropped,
                "max_queued_finals": self.worker.max_finals,
                "short_commits": self.segmenter.short_commits,
                "real_time_factor": round(self.compute_s / self.audio_s, 3)
                if self.audio_s
                else 0.0,
                "last_real_time_factor": round(self.last_rtf, 3),
                "last_latency_s": round(self.last_latency_s, 3),
                "last_transcribe_latency_s": round(self.last_finalise_s, 3),
                "last_error": self.last_error,
                **{f"turn.{k}": f"{v:.3f}" for k, v in self.last_timeline.items()},
            }

    def close(self, timeout: float = 30.0, then: Callable[[], None] | None = None) -> bool:
        """Stop transcribing (see TranscriptionWorker.stop); may be called again."""
        return self.worker.stop(timeout, then=then)
