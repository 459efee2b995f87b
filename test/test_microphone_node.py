"""microphone_node as a separate process: a WAV file (or a missing device) -> AudioChunk stream."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import unique_namespace, wait_for
from speech_samples import read_wav, synthesize_wav, write_wav

from smolfusion_ros.io.audio import resample, rms, to_mono

pytestmark = pytest.mark.ros

MIC = "smolfusion_ros.nodes.microphone_node"
TEXT = "Hello robot, please tell me what you can see."


class AudioHarness:
    def __init__(self, node, namespace: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from smolfusion_ros.msg import AudioChunk

        self.namespace = namespace
        self.chunks: list[tuple[float, object]] = []
        self.diagnostics: list[object] = []
        self._lock = threading.Lock()
        node.create_subscription(AudioChunk, f"{namespace}/audio", self._on_audio, 100)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_audio(self, msg) -> None:
        with self._lock:
            self.chunks.append((time.monotonic(), msg))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if self.namespace in status.name and "microphone" in status.name:
                with self._lock:
                    self.diagnostics.append(status)

    def samples(self) -> np.ndarray:
        return np.concatenate([np.asarray(m.samples, dtype=np.int16) for _, m in self.chunks])


def play(ros_node, start_node, path, **params):
    namespace = unique_namespace("mic")
    harness = AudioHarness(ros_node, namespace)
    process = start_node(
        MIC,
        namespace,
        params={"autostart": True, "wav_file": str(path), "wait_for_subscriber_s": 10.0, **params},
        params_file=None,
    )
    return process, harness


def wait_until_finished(harness, process, expected: int, timeout: float = 15.0) -> None:
    assert wait_for(lambda: len(harness.chunks) >= expected, timeout), (
        f"{len(harness.chunks)} of {expected} chunks:\n{process.log}"
    )
    time.sleep(0.4)  # nothing more may come


def test_wav_file_is_published_in_real_time_chunks(ros_node, start_node, tmp_path):
    path = synthesize_wav(TEXT, tmp_path / "speech.wav", sample_rate=16000)
    original, rate = read_wav(path)
    assert rate == 16000
    duration = len(original) / rate
    process, harness = play(ros_node, start_node, path)
    expected = int(np.ceil(len(original) / 1600))
    wait_until_finished(harness, process, expected)
    assert len(harness.chunks) == expected, "the file is played once, then nothing more"
    for _, msg in harness.chunks:
        assert msg.sample_rate == 16000 and msg.channels == 1 and len(msg.samples) == 1600
    published = harness.samples()
    assert abs(len(published) / 16000 - duration) <= 0.1
    np.testing.assert_array_equal(published[: len(original)], original[:, 0])
    arrivals = [t for t, _ in harness.chunks]
    assert arrivals[-1] - arrivals[0] >= 0.85 * (expected - 1) * 0.1, "faster than real time"
    stamps = [m.stamp.sec + m.stamp.nanosec * 1e-9 for _, m in harness.chunks]
    assert np.allclose(np.diff(stamps), 0.1, atol=0.002)
    # seq numbers the stream, so a listener can count chunks lost on the way.
    assert [m.seq for _, m in harness.chunks] == list(range(expected))
    assert wait_for(lambda: "finished" in process.log, 3), process.log
    assert process.alive()


def test_stereo_44k_file_becomes_mono_16k(ros_node, start_node, tmp_path):
    mono_path = synthesize_wav(TEXT, tmp_path / "mono44.wav", sample_rate=44100)
    mono, rate = read_wav(mono_path)
    assert rate == 44100
    stereo = np.concatenate([mono, (mono // 2)], axis=1)  # right channel at half level
    path = write_wav(tmp_path / "stereo44.wav", stereo, 44100)
    duration = len(mono) / 44100
    process, harness = play(ros_node, start_node, path, chunk_ms=50)
    expected = int(np.ceil(duration * 16000 / 800))
    wait_until_finished(harness, process, expected)
    assert len(harness.chunks) == expected
    assert all(m.sample_rate == 16000 and m.channels == 1 for _, m in harness.chunks)
    assert all(len(m.samples) == 800 for _, m in harness.chunks)
    published = harness.samples()
    assert abs(len(published) / 16000 - duration) <= 0.05
    reference = resample(to_mono(stereo), 44100, 16000)
    head = published[: len(reference)]
    assert rms(head) > 0.02
    assert np.max(np.abs(head.astype(int) - reference)) <= 1

    def last_values() -> dict[str, str]:
        return {kv.key: kv.value for kv in harness.diagnostics[-1].values}

    assert wait_for(
        lambda: harness.diagnostics and last_values()["chunks_published"] == str(expected), 3
    )
    assert harness.diagnostics[-1].level == b"\x00"  # OK: the file finished
    values = last_values()
    levels = [
        float(kv.value) for st in harness.diagnostics for kv in st.values if kv.key == "level_dbfs"
    ]
    assert max(levels) > -40, f"speech should be heard: {levels}"
    assert float(values["clipping_ratio"]) == 0.0
    assert "stereo44.wav" in values["source"]


def test_missing_wav_file_is_one_configuration_error(start_node, tmp_path):
    process = start_node(
        MIC,
        unique_namespace("mic"),
        params={"autostart": True, "wav_file": str(tmp_path / "nope.wav")},
        params_file=None,
    )
    assert process.wait(15) == 2
    final = [line for line in process.log_lines if "configuration error" in line]
    assert len(final) == 1 and "nope.wav" in final[0], process.log
    # The failed configure transition logs it too (managed.py); nothing else goes wrong.
    errors = [line for line in process.log_lines if "error" in line.lower()]
    assert len(errors) <= 2 and all("nope.wav" in line for line in errors), process.log
    assert "Traceback" not in process.log


def test_missing_device_is_said_once_then_retried_quietly(ros_node, start_node):
    """No such input: one WARN line naming the device and what to set, then retries counted on
    /diagnostics (ERROR level) without further log lines."""
    namespace = unique_namespace("mic")
    harness = AudioHarness(ros_node, namespace)
    process = start_node(
        MIC,
        namespace,
        params={"autostart": True, "device": "no-such-microphone-xyz", "diagnostics_period_s": 0.5},
        params_file=None,
    )

    def retries() -> int:
        if not harness.diagnostics:
            return 0
        values = {kv.key: kv.value for kv in harness.diagnostics[-1].values}
        return int(values.get("retries", 0))

    # Three failed opens: 4+ s, two retry periods after the first.
    assert wait_for(lambda: retries() >= 3, 15), process.log
    status = harness.diagnostics[-1]
    assert status.level == b"\x02", status
    values = {kv.key: kv.value for kv in status.values}
    assert "no-such-microphone-xyz" in values["last_error"]
    assert values["state"] == "retrying" and int(values["errors"]) >= 3
    assert "set device or wav_file" in status.message
    problems = [
        line for line in process.log_lines if line.startswith(("[WARN]", "[ERROR]", "[FATAL]"))
    ]
    assert len(problems) == 1, process.log
    assert "no-such-microphone-xyz" in problems[0]
    assert "`device`" in problems[0] and "`wav_file`" in problems[0]
    assert process.alive()
    assert harness.chunks == []
