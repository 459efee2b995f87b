"""tts_node: streamed answers in, speech out, sentence by sentence.

Subscribes:  response_stream (smolfusion_ros/ResponseChunk): text is gathered per request_id
             and every sentence is spoken as soon as it ends (. ! ? … and whitespace, or the
             final chunk); a sentence longer than max_sentence_chars is cut at a comma or space.
             Chunks whose source is not in speak_sources are ignored.
Publishes:   robot_speaking (std_msgs/Bool, reliable + transient_local, depth 1: True when
             speech starts, False when the queue is empty and playback has ended),
             audio_out (smolfusion_ros/AudioChunk, mono int16: each utterance as synthesised),
             /diagnostics (1 Hz: utterances, queue, errors, synthesis speed)
Services:    say (smolfusion_ros/Say): speak a text (after what is queued, or at once when
             say_interrupts), returns when spoken with its duration; ~/stop (std_srvs/Trigger):
             drop the queue and stop playback (barge-in; the rest of the answers being spoken
             is dropped too).
Parameters:  backend ("espeak"), voice ("en-us"), rate_wpm (170), volume (1.0 = normal),
             output ("device" = play with sounddevice, "none", or a directory where each
             utterance is written as NNNNN_<request>.wav; without an output device the node
             says so once at start and on /diagnostics, and keeps publishing audio_out),
             pace_output (false: with "none" or a directory, take as long as the audio, like
             a speaker), speak_sources
             (["llm", "rule", "greeting"]), say_interrupts (false), max_sentence_chars (200),
             diagnostics_period_s (1.0)

Synthesis and playback run on one worker thread fed by a queue; callbacks never block.
"""

from __future__ import annotations

import array
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from smolfusion_ros.backends.registry import create_tts_backend, tts_backend_names
from smolfusion_ros.backends.tts.base import Speech, TextToSpeech, TTSBackendError
from smolfusion_ros.backends.tts.playback import AudioPlayer, PlaybackError
from smolfusion_ros.io.audio import write_wav
from smolfusion_ros.msg import AudioChunk, ResponseChunk
from smolfusion_ros.nodes.conversions import stamp_from_wall
from smolfusion_ros.nodes.diagnostics import diagnostic_array
from smolfusion_ros.nodes.parameters import (
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameters,
)
from smolfusion_ros.nodes.runner import run_node
from smolfusion_ros.srv import Say

SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
SPEAKING_HOLD_S = 0.25  # robot_speaking stays True this long between queued sentences
MAX_OPEN_REQUESTS = 32
SAY_TIMEOUT_S = 300.0
UNSPEAKABLE = re.compile(r"[*#_`~|<>]+")

SPEAKING_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


class SentenceSplitter:
    """Streamed text in, complete sentences out (ROS-free)."""

    def __init__(self, max_chars: int = 200) -> None:
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out = []
        while True:
            match = SENTENCE_END.search(self._buf)
            if match:
                piece, self._buf = self._buf[: match.end()], self._buf[match.end() :]
            elif len(self._buf) > self.max_chars:
                cut = self._long_cut()
                if cut is None:
                    break
                piece, self._buf = self._buf[:cut], self._buf[cut:]
            else:
                break
            if piece.strip():
                out.append(piece.strip())
        return out

    def _long_cut(self) -> int | None:
        """Where to cut a long sentence: after the last comma, else the last space."""
        floor = self.max_chars // 2
        text = self._buf
        for i in range(len(text) - 2, floor - 1, -1):
            if text[i] in ",;:" and text[i + 1].isspace():
                return i + 2
        space = max((i for i in range(floor, len(text)) if text[i].isspace()), default=None)
        return None if space is None else space + 1

    def finish(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []


def speakable(text: str) -> str:
    """Drop markdown marks a voice would spell out."""
    return " ".join(UNSPEAKABLE.sub(" ", text).split())


@dataclass
class SpeechJob:
    text: str
    voice: str
    request_id: str
    generation: int
    done: threading.Event | None = None
    success: bool = False
    error: str = ""
    duration_s: float = 0.0

    def finish(self, success: bool, error: str = "", duration_s: float = 0.0) -> None:
        self.success, self.error, self.duration_s = success, error, duration_s
        if self.done is not None:
            self.done.set()


def _parameter_specs() -> list[ParamSpec]:
    return [
        ParamSpec("backend", "espeak", "TTS back end name"),
        ParamSpec("voice", "en-us", "voice of the back end (espeak-ng --voices)"),
        ParamSpec("rate_wpm", 170, "speaking rate in words per minute", between(40, 600)),
        ParamSpec("volume", 1.0, "loudness, 1.0 = the engine's normal level", between(0.0, 2.0)),
        ParamSpec("output", "device", "'device' (sound card), 'none' or a directory for WAVs"),
        ParamSpec("pace_output", False, "with 'none' or a directory, wait as long as the audio"),
        ParamSpec(
            "speak_sources", ["llm", "rule", "greeting"], "ResponseChunk sources that are spoken"
        ),
        ParamSpec("say_interrupts", False, "the say service stops what is being spoken"),
        ParamSpec(
            "max_sentence_chars", 200, "cut longer sentences at a comma/space", between(20, 5000)
        ),
        ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics messages", at_least(0.1)),
    ]


class TTSNode(Node):
    def __init__(self, node_name: str = "tts_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, _parameter_specs())
        if p["backend"] not in tts_backend_names():
            known = ", ".join(tts_backend_names())
            raise ConfigError(f"parameter backend={p['backend']!r}: known back ends: {known}")
        self._backend_name = p["backend"]
        self._voice = p["voice"]
        self._options = {"rate_wpm": p["rate_wpm"], "volume": p["volume"]}
        self._speak_sources = set(p["speak_sources"])
        self._say_interrupts = p["say_interrupts"]
        self._max_chars = p["max_sentence_chars"]
        self._pace = p["pace_output"]
        self._backends: dict[str, TextToSpeech] = {}
        try:
            self._backend_for(self._voice)  # fail at start on a missing engine or a bad voice
        except TTSBackendError as exc:
            raise ConfigError(str(exc)) from None

        self._output = p["output"].strip() or "none"
        self._out_dir: Path | None = None
        self._player: AudioPlayer | None = None
        if self._output == "device":
            try:
                self._player = AudioPlayer()
            except PlaybackError as exc:
                raise ConfigError(str(exc)) from None
            if self._player.unavailable:
                # Said once, here; afterwards only /diagnostics shows it (no line per answer).
                self.get_logger().warning(
                    f"{self._player.unavailable}: answers are not played, only published on "
                    "audio_out (set output to 'none' or a WAV directory to choose that on "
                    "purpose; restart after connecting a speaker)"
                )
        elif self._output != "none":
            self._out_dir = Path(self._output).expanduser()
            try:
                self._out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"parameter output={self._output!r}: {exc}") from None

        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._jobs: deque[SpeechJob] = deque()
        self._generation = 0
        self._splitters: OrderedDict[str, SentenceSplitter] = OrderedDict()
        self._muted: deque[str] = deque(maxlen=64)
        self._closing = False
        self._speaking = False
        self._stats = {
            "utterances": 0,
            "errors": 0,
            "stopped": 0,
            "files": 0,
            "playback_failures": 0,
        }
        self._playback_reported = False
        self._audio_s = 0.0
        self._synth_s = 0.0
        self._last_error = ""
        self._file_index = 0

        self._speaking_pub = self.create_publisher(Bool, "robot_speaking", SPEAKING_QOS)
        self._audio_pub = self.create_publisher(AudioChunk, "audio_out", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._speaking_pub.publish(Bool(data=False))
        self.create_subscription(
            ResponseChunk,
            "response_stream",
            self._on_chunk,
            100,
            callback_group=MutuallyExclusiveCallbackGroup(),  # chunks stay in order
        )
        services = ReentrantCallbackGroup()
        self.create_service(Say, "say", self._on_say, callback_group=services)
        self.create_service(Trigger, "~/stop", self._on_stop, callback_group=services)
        self.create_timer(
            p["diagnostics_period_s"], self._publish_diagnostics, MutuallyExclusiveCallbackGroup()
        )
        self._worker = threading.Thread(target=self._work, name="tts-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"speaking with {self._backend_name} voice {self._voice} to {self._output}"
        )

    # ---- input -------------------------------------------------------------------------------

    def _on_chunk(self, msg: ResponseChunk) -> None:
        if msg.source not in self._speak_sources:
            return
        request_id = msg.request_id
        with self._lock:
            if request_id in self._muted:
                return
            splitter = self._splitters.get(request_id)
            if splitter is None:
                splitter = self._splitters[request_id] = SentenceSplitter(self._max_chars)
                while len(self._splitters) > MAX_OPEN_REQUESTS:
                    self._splitters.popitem(last=False)  # an answer that never finished
            sentences = splitter.feed(msg.text)
            if msg.is_final:
                sentences += splitter.finish()
                del self._splitters[request_id]
            for sentence in sentences:
                self._enqueue_locked(SpeechJob(sentence, "", request_id, self._generation))

    def _enqueue_locked(self, job: SpeechJob) -> None:
        self._jobs.append(job)
        self._cv.notify()

    def _on_say(self, request: Say.Request, response: Say.Response) -> Say.Response:
        text = request.text.strip()
        if not text:
            response.success, response.error = False, "empty text"
            return response
        if self._say_interrupts:
            self._stop_all("interrupted by say")
        with self._lock:
            job = SpeechJob(
                text, request.voice.strip(), "say", self._generation, done=threading.Event()
            )
            self._enqueue_locked(job)
        if not job.done.wait(SAY_TIMEOUT_S):
            response.success, response.error = False, "timed out waiting to speak"
            return response
        response.success, response.error = job.success, job.error
        response.duration_s = float(job.duration_s)
        return response

    def _on_stop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        dropped = self._stop_all("stopped")
        response.success = True
        response.message = f"stopped; {dropped} queued sentence(s) dropped"
        return response

    def _stop_all(self, reason: str) -> int:
        """Drop the queue and the answers being streamed; the worker stops playback."""
        with self._lock:
            self._generation += 1
            dropped = list(self._jobs)
            self._jobs.clear()
            self._muted.extend(self._splitters)
            self._splitters.clear()
            self._stats["stopped"] += len(dropped)
            self._cv.notify_all()
        for job in dropped:
            job.finish(False, reason)
        return len(dropped)

    # ---- worker ------------------------------------------------------------------------------

    def _cancelled(self, job: SpeechJob) -> bool:
        return job.generation != self._generation or self._closing

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._jobs and self._speaking:
                    self._cv.wait(SPEAKING_HOLD_S)
                while not self._jobs and not self._closing:
                    if self._speaking:
                        self._speaking = False
                        self._speaking_pub.publish(Bool(data=False))
                    self._cv.wait(0.5)
                if self._closing:
                    return
                job = self._jobs.popleft()
            try:
                self._speak(job)
            except Exception as exc:  # never let one sentence stop the worker
                self._record_error(f"{type(exc).__name__}: {exc}")
                job.finish(False, str(exc))

    def _backend_for(self, voice: str) -> TextToSpeech:
        backend = self._backends.get(voice)
        if backend is None:
            try:
                backend = create_tts_backend(self._backend_name, voice=voice, **self._options)
            except ValueError as exc:
                raise TTSBackendError(str(exc)) from None
            backend.load()
            self._backends[voice] = backend
        return backend

    def _speak(self, job: SpeechJob) -> None:
        text = speakable(job.text)
        if not text:
            job.finish(True)
            return
        started = time.monotonic()
        try:
            speech = self._backend_for(job.voice or self._voice).synthesize(text)
        except TTSBackendError as exc:
            self._record_error(str(exc))
            job.finish(False, str(exc))
            return
        synth_s = time.monotonic() - started
        if self._cancelled(job):
            job.finish(False, "stopped")
            return
        with self._lock:
            self._stats["utterances"] += 1
            self._audio_s += speech.duration_s
            self._synth_s += synth_s
            if not self._speaking:
                self._speaking = True
                self._speaking_pub.publish(Bool(data=True))
        self._publish_audio(speech)
        played = self._output_speech(speech, job)
        if played:
            job.finish(True, duration_s=speech.duration_s)
        else:
            job.finish(False, "stopped", speech.duration_s)

    def _publish_audio(self, speech: Speech) -> None:
        samples = array.array("h")
        samples.frombytes(speech.samples.astype("<i2").tobytes())
        self._audio_pub.publish(
            AudioChunk(
                stamp=stamp_from_wall(),
                sample_rate=speech.sample_rate,
                channels=1,
                samples=samples,
            )
        )

    def _output_speech(self, speech: Speech, job: SpeechJob) -> bool:
        """Play or write the audio; False when stopped on the way."""
        if self._player is not None:
            return self._play(speech, job)
        if self._out_dir is not None:
            self._file_index += 1
            slug = re.sub(r"[^A-Za-z0-9_-]+", "_", job.request_id)[:40] or "say"
            try:
                write_wav(
                    self._out_dir / f"{self._file_index:05d}_{slug}.wav",
                    speech.samples,
                    speech.sample_rate,
                )
                with self._lock:
                    self._stats["files"] += 1
            except OSError as exc:
                self._record_error(f"cannot write WAV: {exc}")
        if self._pace:
            return self._wait_unless_cancelled(job, speech.duration_s)
        return not self._cancelled(job)

    def _wait_unless_cancelled(self, job: SpeechJob, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._cancelled(job):
                return False
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return not self._cancelled(job)

    def _play(self, speech: Speech, job: SpeechJob) -> bool:
        try:
            return self._player.play(
                speech.samples, speech.sample_rate, lambda: self._cancelled(job)
            )
        except PlaybackError as exc:  # device busy or gone: keep speaking to audio_out
            self._record_playback_failure(str(exc))
        return not self._cancelled(job)

    # ---- bookkeeping -------------------------------------------------------------------------

    def _record_playback_failure(self, error: str) -> None:
        """The first failure is logged; the rest are counted on /diagnostics, since a
        device that fails once usually fails for every answer."""
        with self._lock:
            self._stats["playback_failures"] += 1
            self._last_error = error
            first = not self._playback_reported
            self._playback_reported = True
        if first:
            self.get_logger().warning(
                f"{error}; speech still goes to audio_out, further playback failures are "
                "only counted on /diagnostics"
            )

    def _record_error(self, error: str) -> None:
        with self._lock:
            self._stats["errors"] += 1
            self._last_error = error
        self.get_logger().error(error, throttle_duration_sec=5.0)

    def _publish_diagnostics(self) -> None:
        with self._lock:
            stats = dict(self._stats)
            queued = len(self._jobs)
            speaking = self._speaking
            speed = self._audio_s / self._synth_s if self._synth_s > 0 else 0.0
            last_error = self._last_error
        no_device = self._player.unavailable if self._player is not None else ""
        level = DiagnosticStatus.WARN if last_error or no_device else DiagnosticStatus.OK
        message = "speaking" if speaking else "idle"
        if no_device:
            message += f"; {no_device}: not played, audio_out only"
        values = {
            **stats,
            "queued": queued,
            "speaking": speaking,
            "audio_s_per_synthesis_s": f"{speed:.1f}",
            "backend": self._backend_name,
            "voice": self._voice,
            "output": self._output,
            "output_device": no_device or "ok",
            "last_error": last_error,
        }
        self._diag_pub.publish(
            diagnostic_array(self, "tts", level, message, self._backend_name, values)
        )

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._cv.notify_all()
        self._worker.join(5)
        for job in list(self._jobs):
            job.finish(False, "shutting down")
        for backend in self._backends.values():
            backend.close()


def main() -> None:
    run_node(TTSNode)


if __name__ == "__main__":
    main()
