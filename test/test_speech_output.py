"""core/speech_output.py and io/audio_output.py without rclpy: real espeak-ng, real WAV files."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import wait_for

from smolfusion_ros.backends.registry import create_tts_backend
from smolfusion_ros.backends.tts.base import TTSBackendError
from smolfusion_ros.core.speech_output import SentenceSplitter, SpeechOutput, speakable
from smolfusion_ros.io.audio import read_wav, rms
from smolfusion_ros.io.audio_output import (
    AudioPlayer,
    DeviceOutput,
    NullOutput,
    PlaybackError,
    WavDirectoryOutput,
    open_output,
    wait_unless_cancelled,
)

LONG = "This is a rather long sentence that takes the robot a few seconds to say out loud."


def espeak(voice: str):
    return create_tts_backend("espeak", voice=voice, rate_wpm=170, volume=1.0)


class Recorder:
    """The engine's callbacks, collected."""

    def __init__(self) -> None:
        self.speaking: list[bool] = []
        self.audio: list[tuple[int, str]] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def kwargs(self) -> dict:
        return {
            "on_speaking": self.speaking.append,
            "on_audio": lambda speech, request_id: self.audio.append(
                (len(speech.samples), request_id)
            ),
            "warn": self.warnings.append,
            "error": self.errors.append,
        }


@pytest.fixture
def engine(tmp_path):
    made: list[SpeechOutput] = []

    def make(output=None, **kwargs) -> tuple[SpeechOutput, Recorder]:
        recorder = Recorder()
        speech = SpeechOutput(
            espeak,
            output if output is not None else WavDirectoryOutput(tmp_path / "wav"),
            "en-us",
            **recorder.kwargs(),
            **kwargs,
        )
        made.append(speech)
        return speech, recorder

    yield make
    for speech in made:
        speech.close()


def wav_files(directory) -> list:
    return sorted(directory.glob("*.wav"))


def test_sentence_splitter_ends_sentences_and_cuts_long_ones():
    splitter = SentenceSplitter(max_chars=200)
    out = []
    for token in ["Hi", " there", ". How", " are you?", " Well…", " ok", "3.5 is", " fine"]:
        out += splitter.feed(token)
    assert out == ["Hi there.", "How are you?", "Well…"]
    assert splitter.finish() == ["ok3.5 is fine"]
    long_text = ", ".join(f"item number {n}" for n in range(40))
    pieces = []
    for i in range(0, len(long_text), 3):
        pieces += splitter.feed(long_text[i : i + 3])
    pieces += splitter.finish()
    assert len(pieces) >= 3 and all(len(p) <= 215 for p in pieces)
    assert all(p.endswith(",") for p in pieces[:-1])
    assert " ".join(pieces) == long_text


def test_speakable_drops_markdown_marks():
    assert (
        speakable("**Hello** _there_, `robot` # one | two <b>") == "Hello there , robot one two b"
    )
    assert speakable("***") == ""


def test_streamed_answer_is_spoken_in_order_to_wav_files(engine, tmp_path):
    speech, recorder = engine()
    speech.start()
    text = "Hello there, my friend, I am happy to see you. Goodbye now!"
    queued = sum(speech.feed("req-1", text[i : i + 5], False) for i in range(0, len(text), 5))
    queued += speech.feed("req-1", "", True)
    assert queued == 2
    assert wait_for(lambda: speech.stats().files == 2 and recorder.speaking[-1:] == [False], 30)
    files = wav_files(tmp_path / "wav")
    assert [f.name for f in files] == ["00001_req-1.wav", "00002_req-1.wav"]
    first, rate = read_wav(files[0])
    second, _ = read_wav(files[1])
    assert rate == 22050 and rms(first) > 0.02 and rms(second) > 0.02
    assert len(first) > 2 * len(second), "the long first sentence comes first"
    assert recorder.speaking == [True, False]
    assert [request for _, request in recorder.audio] == ["req-1", "req-1"]
    stats = speech.stats()
    assert stats.utterances == 2 and stats.errors == 0 and stats.audio_s_per_synthesis_s > 1.0


def test_say_finishes_with_its_duration_and_reports_bad_input(engine, tmp_path):
    speech, recorder = engine()
    speech.start()
    done = threading.Event()
    job = speech.say("Hello, I am a robot.", on_done=lambda _job: done.set())
    assert done.wait(30) and job.success, job.error
    samples, rate = read_wav(wav_files(tmp_path / "wav")[0])
    assert job.duration_s == pytest.approx(len(samples) / rate, abs=0.01)
    empty = speech.say("   ")
    assert empty.done.is_set() and not empty.success and empty.error == "empty text"
    bad = speech.say("Hello.", voice="xx-no-such-voice")
    assert bad.done.wait(30) and not bad.success and "voice" in bad.error
    assert speech.stats().errors == 1 and "voice" in recorder.errors[0]
    other = speech.say("Hello.", voice="en-gb")  # another voice works
    assert other.done.wait(30) and other.success, other.error


def test_a_missing_voice_is_found_by_check_voice(engine):
    speech, _ = engine()
    speech.check_voice()
    with pytest.raises(TTSBackendError, match="voice"):
        speech.check_voice("xx-no-such-voice")


def test_a_full_queue_drops_the_oldest_and_counts_it(engine, tmp_path):
    speech, _ = engine(max_queued=2)  # not started yet: everything waits in the queue
    first = speech.say("One.")
    speech.feed("req", "Two. Three. Four.", True)
    assert first.done.is_set() and not first.success
    assert "queue is full" in first.error
    stats = speech.stats()
    assert stats.queued == 2 and stats.dropped_queue_full == 2 and stats.accepted == 4
    speech.start()
    assert wait_for(lambda: speech.stats().files == 2, 30)
    files = wav_files(tmp_path / "wav")
    assert [f.name for f in files] == ["00001_req.wav", "00002_req.wav"]  # three and four


def test_stop_ends_the_sentence_being_spoken_and_drops_the_queue(engine):
    speech, recorder = engine(output=NullOutput(pace=True))  # takes as long as the audio
    speech.start()
    speaking = speech.say(LONG)
    queued = [speech.say(f"Queued sentence {n}.") for n in range(3)]
    assert wait_for(lambda: True in recorder.speaking, 30)
    started = time.monotonic()
    assert speech.stop() == 3
    assert speaking.done.wait(5), "the sentence being spoken stops at once"
    assert time.monotonic() - started < 3.0
    assert not speaking.success and speaking.error == "stopped"
    assert all(not job.success and job.error == "stopped" for job in queued)
    assert wait_for(lambda: recorder.speaking[-1:] == [False], 5)
    assert speech.stats().stopped == 3
    after = speech.say("Still here.")
    assert after.done.wait(30) and after.success, after.error


def test_stop_mutes_the_rest_of_a_streamed_answer(engine, tmp_path):
    speech, _ = engine()
    speech.feed("req-a", "First sentence. Second", False)
    speech.stop()
    assert speech.feed("req-a", " part. Third sentence.", True) == 0
    speech.feed("req-b", "A new answer.", True)
    speech.start()
    assert wait_for(lambda: speech.stats().files == 1, 30)
    assert [f.name for f in wav_files(tmp_path / "wav")] == ["00001_req-b.wav"]


def test_speaking_holds_between_sentences_and_close_does_not_wait_for_the_hold(engine, monkeypatch):
    """A pause shorter than the hold is no end of speech; the hold (10 s here, 0.25 s in use,
    so that the gap between the two says never decides the outcome) ends on stop and does
    not delay close."""
    from smolfusion_ros.core import speech_output

    monkeypatch.setattr(speech_output, "SPEAKING_HOLD_S", 10.0)
    speech, recorder = engine()
    speech.start()
    first = speech.say("One.")
    assert first.done.wait(30) and first.success, first.error
    second = speech.say("Two.")  # queued after the first was spoken, within the hold
    assert second.done.wait(30) and second.success, second.error
    assert recorder.speaking == [True], "still speaking during the hold"
    speech.stop()  # a stop in the hold ends it: quiet well before the 10 s
    assert wait_for(lambda: recorder.speaking == [True, False], 5), recorder.speaking
    assert speech.say("Three.").done.wait(30)
    speech.close()  # joins the worker for up to 5 s: it is woken, not left in the hold
    assert not speech._worker.running


def test_close_finishes_queued_jobs_and_later_says(engine):
    speech, _ = engine()
    queued = speech.say("Never spoken.")
    speech.close()
    assert queued.done.is_set() and queued.error == "shutting down"
    late = speech.say("Too late.")
    assert late.done.is_set() and not late.success and late.error == "shutting down"


class FailingDevice:
    """Stand-in for a sound card that refuses every sound (no real device exists here)."""

    label = "device"
    unavailable = ""
    files_written = 0

    def emit(self, samples, sample_rate, label, cancelled) -> bool:
        raise PlaybackError("playback failed: device busy")


def test_playback_failures_on_a_stand_in_device_are_said_once_and_counted(engine):
    speech, recorder = engine(output=FailingDevice())
    speech.start()
    jobs = [speech.say(f"Answer number {n}.") for n in range(3)]
    assert all(job.done.wait(30) for job in jobs)
    assert all(job.success for job in jobs), "speech still counts as spoken (audio_out)"
    assert len(recorder.audio) == 3
    assert len(recorder.warnings) == 1 and "device busy" in recorder.warnings[0]
    stats = speech.stats()
    assert stats.playback_failures == 3 and "device busy" in stats.last_error


# ---- io/audio_output -------------------------------------------------------------------------


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def test_wav_directory_output_names_files_and_keeps_time_when_paced(tmp_path):
    output = open_output(str(tmp_path / "out"), pace=True)
    assert isinstance(output, WavDirectoryOutput) and not output.unavailable
    started = time.monotonic()
    assert output.emit(tone(0.4), 16000, "req/7 ü", lambda: False)
    assert time.monotonic() - started >= 0.38
    assert output.emit(tone(0.1), 16000, "", lambda: False)
    names = [p.name for p in sorted((tmp_path / "out").iterdir())]
    assert names == ["00001_req_7_.wav", "00002_say.wav"]  # no .part files left
    samples, rate = read_wav(tmp_path / "out" / names[0])
    assert rate == 16000 and np.array_equal(samples[:, 0], tone(0.4))
    assert output.files_written == 2


def test_paced_output_stops_when_cancelled():
    output = NullOutput(pace=True)
    stop_at = time.monotonic() + 0.2
    started = time.monotonic()
    assert not output.emit(tone(5.0), 16000, "x", lambda: time.monotonic() > stop_at)
    assert time.monotonic() - started < 2.0
    assert NullOutput(pace=False).emit(tone(5.0), 16000, "x", lambda: False)
    assert wait_unless_cancelled(0.0, lambda: False)


def test_a_directory_that_cannot_be_created_is_an_os_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        open_output(str(tmp_path / "file" / "sub"))


def _has_output_device() -> bool:
    try:
        return not AudioPlayer().unavailable
    except PlaybackError:
        return False


@pytest.mark.skipif(_has_output_device(), reason="needs a machine without an audio output device")
def test_device_output_without_a_sound_card_says_why_and_keeps_going():
    output = open_output("device")
    assert isinstance(output, DeviceOutput)
    assert output.unavailable.startswith("no audio output device")
    assert output.emit(tone(0.2), 16000, "x", lambda: False)  # nothing played, no error
    assert not output.emit(tone(0.2), 16000, "x", lambda: True)


def test_back_ends_replaced_by_a_new_factory_are_closed_before_the_next_sentence(engine):
    """A new volume (set_backend_factory) retires the old back ends; they are closed once
    the worker is between sentences, not kept until close()."""
    closed: list[str] = []

    def closing_espeak(voice: str):
        backend = espeak(voice)
        backend.close = lambda: closed.append(voice)  # records the close (espeak's is a no-op)
        return backend

    speech, _ = engine()
    speech.set_backend_factory(closing_espeak)
    speech.start()
    assert speech.say("First.").done.wait(30)
    speech.set_backend_factory(espeak)  # the en-us back end made above is retired
    assert closed == []
    job = speech.say("Second.")
    assert job.done.wait(30) and job.success, job.error
    assert closed == ["en-us"]
