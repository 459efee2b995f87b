"""smolfusion_ros.io.audio without ROS: channels, resampling, levels, chunks, WAV files."""

from __future__ import annotations

import numpy as np
import pytest

from smolfusion_ros.io import audio


def sine(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(
    ("rate_in", "rate_out"), [(44100, 16000), (16000, 44100), (22050, 16000), (48000, 8000)]
)
def test_resample_keeps_frequency_and_length(rate_in, rate_out):
    x = sine(440.0, rate_in)
    y = audio.resample(x, rate_in, rate_out)
    assert y.dtype == np.float32
    assert len(y) == -(-len(x) * rate_out // rate_in)
    assert abs(peak_frequency(y, rate_out) - 440.0) < 2.0
    reference = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(len(y)) / rate_out)
    assert np.max(np.abs(y[300:-300] - reference[300:-300])) < 1e-3


def test_resample_round_trip_of_int16_sine():
    x = audio.float32_to_int16(sine(1000.0, 16000))
    back = audio.resample(audio.resample(x, 16000, 44100), 44100, 16000)
    assert back.dtype == np.int16 and len(back) == len(x)
    assert abs(peak_frequency(back, 16000) - 1000.0) < 2.0
    assert np.max(np.abs(back[200:-200].astype(int) - x[200:-200])) < 40  # ~ -58 dBFS


def test_downsampling_filters_out_what_the_new_rate_cannot_hold():
    tone = sine(7000.0, 16000)  # above 4 kHz: would alias to 1 kHz without the low-pass
    assert audio.rms(audio.resample(tone, 16000, 8000)) < 0.01 * audio.rms(tone)


def test_streaming_resampler_matches_one_shot():
    x = sine(300.0, 44100, 0.5)
    whole = audio.resample(x, 44100, 16000)
    resampler = audio.Resampler(44100, 16000)
    parts = [resampler.process(piece) for piece in audio.chunk(x, 777)]
    streamed = np.concatenate([*parts, resampler.flush()])
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_stereo_to_mono_averages_interleaved_and_2d():
    interleaved = np.array([100, 300, -200, -400, 32767, 32767], dtype=np.int16)
    np.testing.assert_array_equal(audio.to_mono(interleaved, 2), [200, -300, 32767])
    frames = interleaved.reshape(-1, 2)
    np.testing.assert_array_equal(audio.to_mono(frames), [200, -300, 32767])
    assert audio.to_mono(frames).dtype == np.int16
    np.testing.assert_array_equal(audio.to_mono(np.array([1, 2, 3], np.int16)), [1, 2, 3])


def test_empty_input_everywhere():
    empty = np.zeros(0, dtype=np.int16)
    assert audio.to_mono(empty, 2).size == 0
    assert audio.resample(empty, 44100, 16000).dtype == np.int16
    assert audio.resample(np.zeros(0, np.float32), 8000, 16000).size == 0
    assert audio.rms(empty) == 0.0 and audio.peak(empty) == 0.0
    assert audio.clipping_ratio(empty) == 0.0
    assert audio.rms_dbfs(empty) == audio.SILENCE_DBFS
    assert audio.chunk(empty, 160) == []
    assert audio.float32_to_int16(np.zeros(0, np.float32)).dtype == np.int16


def test_int16_float32_conversion_clips_and_round_trips():
    x = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    f = audio.int16_to_float32(x)
    assert f.dtype == np.float32 and f.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(audio.float32_to_int16(f), x)  # exact round trip
    np.testing.assert_array_equal(
        audio.float32_to_int16(np.array([2.0, -2.0], np.float32)), [32767, -32768]
    )


def test_levels_and_clipping_ratio():
    x = audio.float32_to_int16(sine(100.0, 16000))
    assert audio.rms(x) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    assert audio.peak(x) == pytest.approx(0.5, rel=1e-3)
    assert audio.rms_dbfs(x) == pytest.approx(-9.03, abs=0.05)
    assert audio.clipping_ratio(x) == 0.0
    loud = np.clip(x.astype(np.int32) * 4, -32768, 32767).astype(np.int16)
    ratio = audio.clipping_ratio(loud)
    assert 0.3 < ratio < 0.8
    assert audio.clipping_ratio(np.array([32767, 0, -32768, 5], np.int16)) == 0.5


def test_chunk_sizes():
    pieces = audio.chunk(np.arange(10), 4)
    assert [len(p) for p in pieces] == [4, 4, 2]
    with pytest.raises(ValueError):
        audio.chunk(np.arange(3), 0)


def test_wav_round_trip_and_streaming_header(tmp_path):
    stereo = np.stack([np.arange(-500, 500), np.arange(500, -500, -1)], axis=1).astype(np.int16)
    path = audio.write_wav(tmp_path / "s.wav", stereo, 44100)
    frames, rate = audio.read_wav(path)
    assert rate == 44100 and frames.shape == (1000, 2)
    np.testing.assert_array_equal(frames, stereo)
    # espeak-ng --stdout writes 0x7ffff000 as sizes: the data runs to the end.
    data = bytearray(audio.wav_bytes(stereo[:, 0], 22050))
    data[4:8] = data[40:44] = (0x7FFFF000).to_bytes(4, "little")
    mono, rate = audio.parse_wav(bytes(data))
    assert rate == 22050 and mono.shape == (1000, 1)
    with pytest.raises(audio.WavError):
        audio.parse_wav(b"not a wav file at all")


def test_speech_bounds_and_trim_find_the_audible_part():
    from smolfusion_ros.io.audio import speech_bounds, trim_silence

    rate = 16000
    t = np.arange(rate // 2) / rate
    tone = (0.2 * 32767 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    clip = np.concatenate([np.zeros(rate // 4, np.int16), tone, np.zeros(rate, np.int16)])
    first, end = speech_bounds(clip, rate)
    assert (
        abs(first - rate // 4) <= rate // 100 and abs(end - (rate // 4 + rate // 2)) <= rate // 100
    )
    assert len(trim_silence(clip, rate)) == end - first
    assert speech_bounds(np.zeros(rate, np.int16), rate) == (0, 0)
    assert speech_bounds(np.zeros(0, np.int16), rate) == (0, 0)
