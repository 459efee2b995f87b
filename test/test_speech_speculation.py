"""Speculative early start in the segmenter (ROS-free).

A short pause after speech (vad.speculate_silence_ms) yields SpeculationDue with the turn's
audio so far; speech resuming discards it (a false start); the pause growing to the end of
the turn ends the utterance with that same audio (so its transcript is reused), sooner when
the speculative transcript looked complete (mark_complete, vad.end_silence_short_ms).

The state machine is driven by the real energy VAD over synthetic speech (tone bursts and
digital silence: exact window counts), then by the real Silero VAD over espeak-ng sentences
joined with a mid-sentence pause.
"""

from __future__ import annotations

import numpy as np
import pytest
from speech_samples import read_wav, synthesize_wav

from smolfusion_ros.core.speech import (
    SAMPLE_RATE,
    EnergyVad,
    SpeculationDiscarded,
    SpeculationDue,
    SpeechSegmenter,
    UtteranceEnded,
    VadConfig,
    looks_complete,
)
from smolfusion_ros.io.audio import resample, trim_silence

CONFIG = VadConfig(
    engine="energy",
    end_silence_ms=700,
    speculate_silence_ms=250,
    end_silence_short_ms=450,
    partial_interval_s=0.0,
)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.int16)


def run(seg: SpeechSegmenter, *pieces: np.ndarray, step: int = 1600) -> list:
    """Feed the pieces in 100 ms chunks; events in order."""
    audio = np.concatenate(pieces)
    events = []
    for i in range(0, len(audio), step):
        events += seg.feed(audio[i : i + step], SAMPLE_RATE)
    return events


def of(events, kind) -> list:
    return [e for e in events if isinstance(e, kind)]


def segmenter() -> SpeechSegmenter:
    return SpeechSegmenter(CONFIG, vad=EnergyVad())


def test_speculation_is_discarded_when_speech_resumes():
    seg = segmenter()
    events = run(seg, silence(0.5), tone(1.0), silence(0.4), tone(0.8), silence(1.2))
    names = [type(e).__name__ for e in events]
    assert names == [
        "SpeechStarted",
        "SpeculationDue",
        "SpeculationDiscarded",
        "SpeculationDue",
        "UtteranceEnded",
    ], names
    first, second = of(events, SpeculationDue)
    (discarded,) = of(events, SpeculationDiscarded)
    (final,) = of(events, UtteranceEnded)
    assert discarded.speculation == first.speculation == 0
    assert seg.false_starts == 1 and seg.speculations == 2
    # The discarded speculation held only the first burst; the final holds both.
    assert len(first.audio) < len(final.audio)
    assert final.reason == "silence" and final.speculation == second.speculation == 1
    # No speech since the second speculation: the final's audio is exactly its audio.
    np.testing.assert_array_equal(final.audio, second.audio)
    assert 0.24 <= second.trailing_silence_s <= 0.29


def test_a_pause_that_ends_the_turn_reuses_the_speculation_audio():
    seg = segmenter()
    events = run(seg, silence(0.5), tone(1.2), silence(1.2))
    (spec,) = of(events, SpeculationDue)
    (final,) = of(events, UtteranceEnded)
    assert final.speculation == spec.speculation and final.reason == "silence"
    np.testing.assert_array_equal(final.audio, spec.audio)
    assert seg.false_starts == 0 and seg.short_commits == 0
    assert 0.70 <= final.trailing_silence_s <= 0.74


def test_a_complete_looking_speculation_ends_the_turn_sooner():
    seg = segmenter()
    events = run(seg, silence(0.5), tone(1.2), silence(0.3))
    (spec,) = of(events, SpeculationDue)
    assert not of(events, UtteranceEnded)
    seg.mark_complete(spec.speculation)  # as the node does when the transcript ends a sentence
    events = run(seg, silence(1.0))
    (final,) = of(events, UtteranceEnded)
    assert final.reason == "short_silence" and final.speculation == spec.speculation
    assert 0.44 <= final.trailing_silence_s <= 0.52, final.trailing_silence_s
    assert seg.short_commits == 1


def test_marking_a_discarded_speculation_complete_changes_nothing():
    seg = segmenter()
    events = run(seg, silence(0.5), tone(1.0), silence(0.3), tone(0.5))
    (spec,) = of(events, SpeculationDue)
    assert of(events, SpeculationDiscarded)
    seg.mark_complete(spec.speculation)  # its transcript arrived late: the speech went on
    events = run(seg, silence(1.2))
    (final,) = of(events, UtteranceEnded)
    assert final.reason == "silence" and final.speculation == 1
    assert final.trailing_silence_s >= 0.70


def test_no_speculation_when_off_and_for_a_click():
    seg = SpeechSegmenter(
        VadConfig(engine="energy", end_silence_ms=700, partial_interval_s=0.0), vad=EnergyVad()
    )
    events = run(seg, silence(0.5), tone(1.0), silence(0.4), tone(0.8), silence(1.2))
    assert not of(events, SpeculationDue) and len(of(events, UtteranceEnded)) == 1
    seg = segmenter()
    events = run(seg, silence(0.5), tone(0.1), silence(1.0))  # shorter than min_speech_ms
    assert events == []


def test_reset_forgets_the_live_speculation():
    seg = segmenter()
    events = run(seg, silence(0.5), tone(1.0), silence(0.3))
    assert of(events, SpeculationDue)
    seg.reset()
    events = run(seg, tone(1.0), silence(1.2))
    (final,) = of(events, UtteranceEnded)
    assert not of(events, SpeculationDiscarded)
    assert final.speculation == 1  # the new pause's own speculation


def test_flush_mid_pause_keeps_the_speculation():
    seg = segmenter()
    events = run(seg, silence(0.5), tone(1.0), silence(0.3))
    (spec,) = of(events, SpeculationDue)
    (final,) = of(seg.flush(), UtteranceEnded)
    assert final.reason == "flush" and final.speculation == spec.speculation


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (dict(speculate_silence_ms=800, end_silence_ms=700), "speculate_silence_ms"),
        (dict(speculate_silence_ms=10), "speculate_silence_ms"),
        (dict(end_silence_short_ms=400), "end_silence_short_ms"),  # speculation off
        (dict(speculate_silence_ms=250, end_silence_short_ms=200), "end_silence_short_ms"),
        (dict(speculate_silence_ms=250, end_silence_short_ms=900), "end_silence_short_ms"),
    ],
)
def test_bad_speculation_config_is_rejected(config, needle):
    with pytest.raises(ValueError, match=needle):
        SpeechSegmenter(VadConfig(engine="energy", **config), vad=EnergyVad())


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("What is the weather like today?", True),
        ("Please bring me a glass of water.", True),
        ("Stop!", True),
        ("how do I get to the station", True),  # a question without its question mark
        ("Please bring me a glass of.", False),  # Whisper's full stop after a preposition
        ("I would like to go to the", False),
        ("Tell me about the weather and.", False),
        ("Well, I was thinking...", False),
        ("so the thing is,", False),
        ("bring me the cup", False),  # no punctuation, not a question
        ("Could you bring me?", False),  # "...the red cup" follows
        ("Please remind me.", False),
        ("Can you help me?", True),
        ("", False),
        ("   ", False),
    ],
)
def test_looks_complete(text, complete):
    assert looks_complete(text) is complete


def test_a_real_mid_sentence_pause_is_a_false_start_then_one_utterance(tmp_path):
    """espeak-ng: 'Please bring me a glass of water' + 450 ms + 'from the kitchen.'"""
    parts = []
    for i, text in enumerate(("Please bring me a glass of water", "from the kitchen.")):
        frames, rate = read_wav(synthesize_wav(text, tmp_path / f"{i}.wav"))
        clip = resample(frames[:, 0].copy(), rate, SAMPLE_RATE).astype(np.int16)
        parts.append(trim_silence(clip, SAMPLE_RATE))  # espeak-ng pads its output
    seg = SpeechSegmenter(
        VadConfig(end_silence_ms=700, speculate_silence_ms=250, end_silence_short_ms=450)
    )
    assert seg.vad.name == "silero"
    events = run(seg, silence(0.5), parts[0], silence(0.45), parts[1], silence(1.2))
    finals = of(events, UtteranceEnded)
    assert len(finals) == 1 and finals[0].reason == "silence"
    assert seg.false_starts >= 1, [type(e).__name__ for e in events]
    spoken = (len(parts[0]) + len(parts[1])) / SAMPLE_RATE  # the pause is inside the utterance
    assert finals[0].duration_s >= spoken


def test_commit_speculation_ends_the_turn_only_when_marked_and_the_pause_is_long_enough():
    """The caller learns the transcript looks complete after the pause grew: the turn ends
    at once (no further chunk needed), never before end_silence_short_ms of silence, never
    for a speculation that is not live or not marked complete."""
    seg = segmenter()
    (spec,) = of(run(seg, silence(0.5), tone(1.0), silence(0.3)), SpeculationDue)
    assert seg.commit_speculation(spec.speculation) is None  # not marked complete
    seg.mark_complete(spec.speculation)
    assert seg.commit_speculation(spec.speculation) is None  # 0.3 s < 450 ms of silence
    assert of(run(seg, silence(0.1)), UtteranceEnded) == []  # 0.4 s: still inside the pause
    seg.mark_complete(-1)  # (a newer transcript that does not look complete)
    assert of(run(seg, silence(0.1)), UtteranceEnded) == []  # 0.5 s, unmarked: no short end
    assert seg.commit_speculation(spec.speculation) is None
    seg.mark_complete(spec.speculation)
    final = seg.commit_speculation(spec.speculation)
    assert isinstance(final, UtteranceEnded)
    assert final.reason == "short_silence" and final.speculation == spec.speculation
    assert seg.short_commits == 1 and seg.state == "listening"
    assert seg.commit_speculation(spec.speculation) is None  # once only
    # A speculation discarded by speech resuming can never commit.
    events = run(seg, tone(1.0), silence(0.3), tone(0.5))
    (spec2,) = of(events, SpeculationDue)
    seg.mark_complete(spec2.speculation)
    run(seg, silence(0.3))
    assert seg.commit_speculation(spec2.speculation) is None
