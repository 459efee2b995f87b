"""Audio helpers without ROS (numpy only): channels, resampling, levels, chunks, WAV files.

Samples are int16 (PCM, full scale 32767) or float32 (full scale 1.0). Interleaved audio is a
1-D array with `channels` values per frame, or a 2-D array of shape (frames, channels).
Every function accepts empty input and returns an empty array of the right dtype.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

INT16_FULL_SCALE = 32767.0
SILENCE_DBFS = -120.0

# ---- conversions ---------------------------------------------------------------------------


def int16_to_float32(samples: np.ndarray) -> np.ndarray:
    return np.asarray(samples, dtype=np.int16).astype(np.float32) / INT16_FULL_SCALE


def float32_to_int16(samples: np.ndarray) -> np.ndarray:
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * INT16_FULL_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def to_mono(samples: np.ndarray, channels: int | None = None) -> np.ndarray:
    """Average the channels of interleaved audio; mono input comes back unchanged (1-D).

    `channels` is needed for 1-D interleaved input; a 2-D (frames, channels) array carries it.
    A trailing incomplete frame is dropped. The dtype is kept (int16 is rounded).
    """
    samples = np.asarray(samples)
    if samples.ndim == 2:
        frames = samples
    else:
        channels = int(channels or 1)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        usable = len(samples) - len(samples) % channels
        frames = samples[:usable].reshape(-1, channels)
    if frames.shape[1] == 1:
        return frames[:, 0].copy()
    mean = frames.astype(np.float64).mean(axis=1)
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(samples.dtype)
    return mean.astype(samples.dtype if samples.dtype.kind == "f" else np.float32)


# ---- levels --------------------------------------------------------------------------------


def _as_float(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / INT16_FULL_SCALE
    return samples.astype(np.float64)


def rms(samples: np.ndarray) -> float:
    """Root mean square, 0..1 of full scale (0.0 for empty input)."""
    x = _as_float(samples)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def peak(samples: np.ndarray) -> float:
    """Largest absolute value, 0..1 of full scale (0.0 for empty input)."""
    x = _as_float(samples)
    return float(np.max(np.abs(x))) if x.size else 0.0


def dbfs(level: float) -> float:
    """A 0..1 level in dB relative to full scale (SILENCE_DBFS for silence)."""
    return 20.0 * math.log10(level) if level > 10 ** (SILENCE_DBFS / 20) else SILENCE_DBFS


def rms_dbfs(samples: np.ndarray) -> float:
    return dbfs(rms(samples))


def clipping_ratio(samples: np.ndarray, threshold: float = 0.999) -> float:
    """Fraction of samples at or beyond `threshold` of full scale (0.0 for empty input)."""
    x = _as_float(samples)
    return float(np.count_nonzero(np.abs(x) >= threshold) / x.size) if x.size else 0.0


class LevelMeter:
    """rms, peak and clipping_ratio over many chunks (e.g. a diagnostics period), with the
    same definitions as the one-array functions above; `take` returns them and starts over."""

    def __init__(self, clip_threshold: float = 0.999) -> None:
        self.clip_threshold = clip_threshold
        self._reset()

    def _reset(self) -> None:
        self._sum_sq = 0.0
        self._count = 0
        self._peak = 0.0
        self._clipped = 0

    def add(self, samples: np.ndarray) -> None:
        x = _as_float(samples)
        if not x.size:
            return
        self._sum_sq += float(np.dot(x.ravel(), x.ravel()))
        self._count += x.size
        self._peak = max(self._peak, float(np.max(np.abs(x))))
        self._clipped += int(np.count_nonzero(np.abs(x) >= self.clip_threshold))

    def take(self) -> tuple[float, float, float]:
        """(rms, peak, clipping_ratio) since the last take; zeros when nothing came."""
        n = self._count
        levels = (
            (math.sqrt(self._sum_sq / n), self._peak, self._clipped / n) if n else (0.0, 0.0, 0.0)
        )
        self._reset()
        return levels


# ---- chunks --------------------------------------------------------------------------------


def speech_bounds(
    samples: np.ndarray, sample_rate: int, threshold_db: float = -45.0, window_ms: float = 10.0
) -> tuple[int, int]:
    """(first, end) sample indices of the audible part: windows louder than threshold_db.

    (0, 0) when nothing is louder. Used to find the real end of speech in a clip (espeak-ng and
    recordings carry silence at both ends) and to trim it.
    """
    x = _as_float(np.asarray(samples).reshape(-1))
    step = max(1, int(sample_rate * window_ms / 1000))
    count = len(x) // step
    if count == 0:
        return 0, 0
    levels = np.sqrt(np.mean(np.square(x[: count * step].reshape(count, step)), axis=1))
    loud = np.flatnonzero(levels >= 10 ** (threshold_db / 20))
    if len(loud) == 0:
        return 0, 0
    return int(loud[0] * step), int(min(len(x), (loud[-1] + 1) * step))


def trim_silence(samples: np.ndarray, sample_rate: int, threshold_db: float = -45.0) -> np.ndarray:
    """The audible part of a clip (speech_bounds), without the silence around it."""
    first, end = speech_bounds(samples, sample_rate, threshold_db)
    return samples[first:end]


def chunk(samples: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Consecutive views of `chunk_size` samples; the last one may be shorter."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    samples = np.asarray(samples)
    return [samples[i : i + chunk_size] for i in range(0, len(samples), chunk_size)]


# ---- resampling ----------------------------------------------------------------------------


class Resampler:
    """Streaming windowed-sinc resampler for mono audio at a rational ratio (polyphase).

    The low-pass cut-off sits just below the lower of the two Nyquist frequencies, so
    downsampling is anti-aliased. Feed blocks with process(); flush() returns the tail. The
    concatenated output equals resampling the whole signal at once (output length
    ceil(n * rate_out / rate_in)); float32 in -> float32 out, int16 in -> int16 out.
    """

    ZERO_CROSSINGS = 16
    CUTOFF = 0.94  # of the lower Nyquist frequency
    TABLE_LIMIT = 1 << 21  # filter coefficients kept in a table; beyond, computed per block

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        g = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self._fc = self.CUTOFF * min(1.0, self.up / self.down)  # in cycles per input sample x2
        self._half = int(math.ceil(self.ZERO_CROSSINGS / self._fc))
        self._offsets = np.arange(-self._half + 1, self._half + 1)  # taps relative to floor(t)
        self._table = None
        if self.up * len(self._offsets) <= self.TABLE_LIMIT:
            self._table = self._weights(np.arange(self.up) / self.up)
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(self._half, dtype=np.float32)  # leading zeros: the signal's past
        self._offset = -self._half  # absolute input index of _buf[0]
        self._n_in = 0  # real input samples received
        self._m = 0  # next output index

    def _weights(self, frac: np.ndarray) -> np.ndarray:
        d = frac[:, None] - self._offsets[None, :]
        window = 0.5 + 0.5 * np.cos(np.pi * np.clip(d / self._half, -1.0, 1.0))  # Hann
        h = self._fc * np.sinc(self._fc * d) * window
        return (h / h.sum(axis=1, keepdims=True)).astype(np.float32)

    def _produce(self, last_m: int) -> np.ndarray:
        if last_m < self._m:
            return np.zeros(0, dtype=np.float32)
        out = []
        block = 16384
        for start in range(self._m, last_m + 1, block):
            m = np.arange(start, min(start + block, last_m + 1), dtype=np.int64)
            num = m * self.down
            base = num // self.up
            phase = num % self.up
            w = self._table[phase] if self._table is not None else self._weights(phase / self.up)
            idx = (base - self._offset)[:, None] + self._offsets[None, :]
            out.append(np.einsum("ij,ij->i", self._buf[idx], w))
        self._m = last_m + 1
        # Keep only the input the next outputs still need.
        next_base = (self._m * self.down) // self.up
        drop = next_base - self._half + 1 - self._offset
        if drop > 0:
            self._buf = self._buf[drop:]
            self._offset += drop
        return np.concatenate(out).astype(np.float32)

    def _feed(self, x: np.ndarray) -> None:
        self._buf = np.concatenate([self._buf, x.astype(np.float32)])
        self._n_in += len(x)

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples)
        is_int = samples.dtype == np.int16
        self._feed(int16_to_float32(samples) if is_int else samples.astype(np.float32))
        last_input = self._offset + len(self._buf) - 1
        limit = last_input - self._half  # floor(t) must leave a full right half of taps
        last_m = (limit * self.up + self.up - 1) // self.down if limit >= 0 else -1
        out = self._produce(last_m)
        return float32_to_int16(out) if is_int else out

    def flush(self, dtype=np.float32) -> np.ndarray:
        """The remaining output (input padded with zeros); the stream is then reset."""
        total = -(-self._n_in * self.up // self.down)
        self._buf = np.concatenate([self._buf, np.zeros(self._half + 1, dtype=np.float32)])
        out = self._produce(total - 1)
        self.reset()
        return float32_to_int16(out) if np.dtype(dtype) == np.int16 else out


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono int16 or float32 audio; length ceil(n * rate_out / rate_in)."""
    samples = np.asarray(samples)
    dtype = np.int16 if samples.dtype == np.int16 else np.float32
    if samples.ndim != 1:
        raise ValueError("resample takes mono (1-D) audio; use to_mono first")
    if rate_in == rate_out or samples.size == 0:
        return samples.astype(dtype, copy=True)
    resampler = Resampler(rate_in, rate_out)
    head = resampler.process(samples)
    return np.concatenate([head, resampler.flush(dtype)]).astype(dtype)


# ---- WAV -----------------------------------------------------------------------------------


class WavError(ValueError):
    """Not a WAV file this module reads (PCM 8/16/24/32-bit or float32/64)."""


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """WAV bytes -> (int16 array of shape (frames, channels), sample rate).

    Tolerates the streaming headers of `espeak-ng --stdout` (sizes 0x7ffff000: the data runs
    to the end of the bytes) and odd chunks before `data`.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16:
                raise WavError("fmt chunk too short")
            fmt = struct.unpack("<HHIIHH", data[body : body + 16])
            if fmt[0] == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: real format in GUID
                fmt = (struct.unpack("<H", data[body + 24 : body + 26])[0], *fmt[1:])
        elif cid == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            end = min(body + size, len(data))
            return _decode_pcm(data[body:end], fmt)
        pos = body + size + (size & 1)
    raise WavError("no data chunk")


def _decode_pcm(raw: bytes, fmt: tuple) -> tuple[np.ndarray, int]:
    tag, channels, rate, _byte_rate, _align, bits = fmt
    if channels < 1 or rate < 1:
        raise WavError(f"bad header: {channels} channels at {rate} Hz")
    width = bits // 8
    frame = width * channels
    if frame == 0:
        raise WavError(f"unsupported sample size {bits} bits")
    raw = raw[: len(raw) - len(raw) % frame]
    if tag == 1 and bits == 16:
        x = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    elif tag == 1 and bits == 8:
        x = ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    elif tag == 1 and bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8  # sign from the top byte
        x = (v >> 16).astype(np.int16)
    elif tag == 1 and bits == 32:
        x = (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)
    elif tag == 3 and bits in (32, 64):
        x = float32_to_int16(np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8"))
    else:
        raise WavError(f"unsupported WAV format {tag} with {bits} bits")
    return x.reshape(-1, channels), int(rate)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file -> (int16 array of shape (frames, channels), sample rate)."""
    return parse_wav(Path(path).read_bytes())


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes; samples are int16 or float32, 1-D (mono) or (frames, channels)."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        samples = float32_to_int16(samples)
    frames = samples.reshape(len(samples), -1) if samples.ndim == 2 else samples.reshape(-1, 1)
    channels = frames.shape[1]
    raw = frames.astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(raw)) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * 2 * channels, 2 * channels, 16
    )
    return header + b"data" + struct.pack("<I", len(raw)) + raw


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(wav_bytes(samples, sample_rate))
    tmp.replace(path)  # readers never see a half-written file
    return path
