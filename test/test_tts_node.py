"""tts_node as a separate process with espeak-ng, writing WAV files, over real DDS."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import unique_namespace, wait_for
from speech_samples import read_wav

from smolfusion_ros.io.audio import rms

pytestmark = pytest.mark.ros

TTS = "smolfusion_ros.nodes.tts_node"
FIRST = "Hello there, my friend, I am very happy to see you here today."
SECOND = "Goodbye now!"
LONG = "This is a rather long sentence that takes the robot a few seconds to say out loud."


class TTSHarness:
    """Publishes response_stream, calls say and ~/stop, collects robot_speaking and audio_out."""

    def __init__(self, node, namespace: str) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger

        from smolfusion_ros.msg import AudioChunk, ResponseChunk
        from smolfusion_ros.srv import Say

        self.node = node
        self.namespace = namespace
        self.speaking: list[bool] = []
        self.audio: list[object] = []
        self._lock = threading.Lock()
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.chunks = node.create_publisher(ResponseChunk, f"{namespace}/response_stream", 100)
        node.create_subscription(Bool, f"{namespace}/robot_speaking", self._on_speaking, latched)
        node.create_subscription(AudioChunk, f"{namespace}/audio_out", self._on_audio, 10)
        # Deep enough for a burst of calls (the default depth of 10 drops the rest).
        self.say_client = node.create_client(
            Say, f"{namespace}/say", qos_profile=QoSProfile(depth=100)
        )
        self.stop_client = node.create_client(Trigger, f"{namespace}/tts_node/stop")
        self._say, self._trigger = Say, Trigger

    def _on_speaking(self, msg) -> None:
        with self._lock:
            self.speaking.append(msg.data)

    def _on_audio(self, msg) -> None:
        with self._lock:
            self.audio.append(msg)

    def wait_ready(self, process, timeout: float = 20.0) -> None:
        ok = wait_for(
            lambda: (
                self.chunks.get_subscription_count() > 0
                and self.say_client.service_is_ready()
                and self.stop_client.service_is_ready()
            ),
            timeout,
        )
        assert ok, f"tts_node did not come up:\n{process.log}"

    def stream(self, request_id: str, text: str, source: str = "llm") -> None:
        """Publish `text` as ResponseChunks of a few characters each, then a final empty one."""
        from smolfusion_ros.msg import ResponseChunk

        pieces = [text[i : i + 4] for i in range(0, len(text), 4)] + [""]
        for seq, piece in enumerate(pieces):
            self.chunks.publish(
                ResponseChunk(
                    session_id="s",
                    request_id=request_id,
                    seq=seq,
                    text=piece,
                    is_final=seq == len(pieces) - 1,
                    source=source,
                )
            )
            time.sleep(0.005)

    def _call(self, client, request, timeout: float):
        future = client.call_async(request)
        assert wait_for(future.done, timeout), "service call timed out"
        return future.result()

    def say(self, text: str, voice: str = "", timeout: float = 20.0):
        return self._call(self.say_client, self._say.Request(text=text, voice=voice), timeout)

    def say_async(self, text: str):
        return self.say_client.call_async(self._say.Request(text=text, voice=""))

    def stop(self):
        return self._call(self.stop_client, self._trigger.Request(), 10.0)


def wav_files(directory) -> list:
    return sorted(p for p in directory.glob("*.wav"))


@pytest.fixture
def tts(ros_node, start_node, tmp_path):
    def start(**params):
        namespace = unique_namespace("tts")
        out = tmp_path / namespace.strip("/")
        process = start_node(
            TTS,
            namespace,
            params={"output": str(out), "autostart": True, **params},
            params_file=None,
        )
        harness = TTSHarness(ros_node, namespace)
        harness.wait_ready(process)
        return process, harness, out

    return start


def test_streamed_answer_is_spoken_sentence_by_sentence(tts):
    process, harness, out = tts()
    assert wait_for(lambda: harness.speaking == [False], 5), harness.speaking  # latched state
    harness.stream("ignored-1", "This comes from somewhere unwanted.", source="vision")
    harness.stream("req-1", f"{FIRST} {SECOND}")
    assert wait_for(lambda: len(wav_files(out)) >= 2, 15), process.log
    assert wait_for(lambda: harness.speaking[-1:] == [False] and len(harness.speaking) >= 3, 5)
    time.sleep(0.3)
    files = wav_files(out)
    assert len(files) == 2, files  # the "vision" answer was not spoken
    assert all("req-1" in f.name for f in files)
    durations = []
    for path, words in zip(files, (len(FIRST.split()), len(SECOND.split())), strict=True):
        samples, rate = read_wav(path)
        assert samples.shape[1] == 1 and rate > 8000
        assert rms(samples) > 0.02, f"{path.name} is (nearly) silent"
        duration = len(samples) / rate
        assert 0.15 * words <= duration <= 0.8 * words + 0.3, (path.name, duration, words)
        durations.append(duration)
    assert durations[0] > 2 * durations[1], "the long first sentence must come first"
    assert harness.speaking[:2] == [False, True] and harness.speaking[-1] is False
    assert len(harness.audio) == 2
    assert harness.audio[0].channels == 1 and len(harness.audio[0].samples) > 1000
    assert process.alive()


def test_say_returns_when_spoken_with_its_duration(tts):
    _process, harness, out = tts()
    response = harness.say("Hello, I am a robot.")
    assert response.success, response.error
    assert 0.5 < response.duration_s < 4.0
    assert len(wav_files(out)) == 1
    samples, rate = read_wav(wav_files(out)[0])
    assert len(samples) / rate == pytest.approx(response.duration_s, abs=0.01)


def test_say_rejects_empty_text_and_unknown_voices(tts):
    process, harness, out = tts()
    response = harness.say("   ")
    assert not response.success and "empty" in response.error
    response = harness.say("Hello.", voice="xx-no-such-voice")
    assert not response.success and "voice" in response.error, response.error
    response = harness.say("Hello.", voice="en-gb")  # another voice works
    assert response.success, response.error
    assert len(wav_files(out)) == 1
    assert process.alive()


def test_stop_drops_the_queue_and_the_rest_of_the_answer(tts):
    process, harness, out = tts(pace_output=True)  # each utterance takes as long as its audio
    sentences = [f"This is sentence number {n}, and it is quite long." for n in range(1, 7)]
    pending = harness.say_async("First I say this.")
    harness.stream("req-long", " ".join(sentences))
    assert wait_for(lambda: True in harness.speaking, 10), process.log
    time.sleep(0.3)
    response = harness.stop()
    assert response.success and "dropped" in response.message
    assert wait_for(pending.done, 5)
    assert not pending.result().success, "the say being spoken was stopped"
    assert wait_for(lambda: harness.speaking[-1:] == [False], 3), harness.speaking
    time.sleep(1.0)
    assert len(wav_files(out)) <= 2, [f.name for f in wav_files(out)]
    # The node still speaks afterwards.
    assert harness.say("Still here.").success
    assert process.alive()


def test_waiting_say_calls_hold_no_executor_thread(tts, ros_node):
    """More say calls wait than the node's executor has threads (16), and ~/stop still runs:
    each waiting call is a suspended coroutine, not a blocked thread."""
    from diagnostic_msgs.msg import DiagnosticArray

    process, harness, _out = tts(pace_output=True)  # each say takes as long as its audio
    queued: list[str] = []
    ros_node.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda msg: queued.extend(
            kv.value
            for s in msg.status
            if s.name.startswith(f"{harness.namespace}/")
            for kv in s.values
            if kv.key == "queued"
        ),
        10,
    )
    calls = 24
    pending = [harness.say_async(f"Number {n}. {LONG}") for n in range(calls)]
    # One is being spoken, the rest wait in the queue: all 24 calls were taken at once.
    assert wait_for(lambda: queued[-1:] == [str(calls - 1)], 60), (queued[-5:], process.log)
    response = harness.stop()
    assert response.success and f"{calls - 1} queued" in response.message, response.message
    assert wait_for(lambda: all(f.done() for f in pending), 20)
    results = [f.result() for f in pending]
    assert all(not r.success and r.error == "stopped" for r in results), [r.error for r in results]
    assert harness.say("Still here.").success
    assert process.alive()


def _has_output_device() -> bool:
    try:
        from smolfusion_ros.io.audio_output import AudioPlayer

        return not AudioPlayer().unavailable
    except Exception:
        return False


@pytest.mark.skipif(_has_output_device(), reason="needs a machine without an audio output device")
def test_without_a_sound_card_the_missing_device_is_reported_once(ros_node, start_node):
    """output=device on a machine with PortAudio but no sound card (this test machine)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    namespace = unique_namespace("ttsnocard")
    process = start_node(
        TTS, namespace, params={"output": "device", "autostart": True}, params_file=None
    )
    harness = TTSHarness(ros_node, namespace)
    harness.wait_ready(process)
    statuses = []
    ros_node.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda msg: statuses.extend(s for s in msg.status if s.name.startswith(namespace)),
        10,
    )
    # Answers further apart than any log throttle: each one used to log "playback failed".
    for n in range(3):
        if n:
            time.sleep(5.5)
        harness.stream(f"req-{n}", f"Answer number {n}.")
        assert wait_for(lambda n=n: len(harness.audio) == n + 1, 10), process.log
    assert process.alive()
    complaints = [
        line
        for line in process.log_lines
        if "output device" in line or "playback failed" in line or "[ERROR]" in line
    ]
    assert len(complaints) == 1, "\n".join(complaints)
    assert "no audio output device" in complaints[0] and "[WARN]" in complaints[0]

    def values() -> dict[str, str]:
        return {kv.key: kv.value for kv in statuses[-1].values} if statuses else {}

    assert wait_for(lambda: values().get("utterances") == "3", 5), values()
    assert values()["output_device"].startswith("no audio output device")
    assert statuses[-1].level == DiagnosticStatus.WARN
    assert "audio_out only" in statuses[-1].message
