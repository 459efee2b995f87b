"""Test speech, synthesised with espeak-ng (installed by scripts/bootstrap.sh).

Small, stable API shared by the speech tests:
    synthesize_wav(text, path, voice="en-us", rate_wpm=160, sample_rate=None) -> Path
    read_wav(path) -> (int16 array of shape (frames, channels), sample_rate)
    write_wav(path, samples, rate) -> Path
    normalise(text) -> words; word_errors(reference, hypothesis) -> edit distance in words
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from smolfusion_ros.io.audio import parse_wav, resample, to_mono
from smolfusion_ros.io.audio import read_wav as _read_wav
from smolfusion_ros.io.audio import write_wav as _write_wav

__all__ = [
    "ESPEAK_RATE",
    "normalise",
    "read_wav",
    "synthesize_wav",
    "word_errors",
    "write_wav",
]

ESPEAK_RATE = 22050  # espeak-ng's own output rate


def synthesize_wav(
    text: str,
    path: str | Path,
    voice: str = "en-us",
    rate_wpm: int = 160,
    sample_rate: int | None = None,
) -> Path:
    """Speak `text` with espeak-ng into a mono 16-bit WAV (resampled when sample_rate is set)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is missing: sudo apt-get install espeak-ng")
    done = subprocess.run(
        [exe, "-v", voice, "-s", str(rate_wpm), "--stdout"],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"espeak-ng failed: {done.stderr.decode(errors='replace').strip()}")
    frames, rate = parse_wav(done.stdout)
    mono = to_mono(frames)
    if sample_rate and sample_rate != rate:
        mono, rate = resample(mono, rate, sample_rate), sample_rate
    return _write_wav(path, mono, rate)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(int16 array of shape (frames, channels), sample rate)."""
    return _read_wav(path)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> Path:
    """16-bit PCM; samples int16 or float32, 1-D (mono) or (frames, channels)."""
    return _write_wav(path, samples, rate)


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words (substitutions + deletions + insertions)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, 1):
            previous, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word)),
            )
    return row[-1]
