"""tts_node: streamed answers in, speech out, sentence by sentence.

Subscribes:  response_stream (smolfusion_ros/ResponseChunk): text is gathered per request_id
             and every sentence is spoken as soon as it ends (. ! ? … and whitespace, or the
             final chunk); a sentence longer than max_sentence_chars is cut at a comma or space.
             Chunks whose source is not in speak_sources are ignored.
Publishes:   robot_speaking (std_msgs/Bool, reliable + transient_local, depth 1: True when
             speech starts, False when the queue is empty and playback has ended),
             audio_out (smolfusion_ros/AudioChunk, mono int16: each utterance as synthesised),
             /diagnostics (every diagnostics_period_s: utterances, queue (queued, accepted,
             dropped_queue_full), errors, synthesis speed)
Services:    say (smolfusion_ros/Say): speak a text (after what is queued, or at once when
             say_interrupts); the response comes when the text has been spoken, with its
             duration (success=false with the error when it could not be: empty text, unknown
             voice, stopped, dropped from a full queue). The callback is a coroutine that
             awaits the speech: no executor thread is held while the robot speaks.
             ~/stop (std_srvs/Trigger): drop the queue and stop playback (barge-in; the rest of
             the answers being spoken is dropped too).
Parameters:  backend ("espeak"), voice ("en-us"), rate_wpm (170), volume (1.0 = normal),
             output ("device" = play with sounddevice, "none", or a directory where each
             utterance is written as NNNNN_<request>.wav; without an output device the node
             says so once at start and on /diagnostics, and keeps publishing audio_out),
             pace_output (false: with "none" or a directory, take as long as the audio, like
             a speaker), speak_sources
             (["llm", "rule", "greeting"]), say_interrupts (false), max_sentence_chars (200),
             max_queued (64 sentences; when full the oldest queued sentence is dropped and
             counted as dropped_queue_full on /diagnostics), diagnostics_period_s (1.0)
             voice and volume take `ros2 param set` at once (from the next sentence; an
             unknown voice is refused with the reason); the others are read at configure.

The engine (sentence splitting, the bounded queue, synthesis and playback on one worker
thread) is core/speech_output.py; the outputs are io/audio_output.py. This node translates
messages to engine calls; callbacks never block.

A managed (lifecycle) node: configure checks the back end and voice and opens the output
(a missing espeak-ng, an unknown voice or an unusable output fail the transition with one
line), activate takes input, deactivate stops speaking (the queue is dropped, waiting `say`
calls answer "node deactivated"), cleanup closes the engine; parameters are read at each
configure. While not active, `say` and `~/stop` answer success=false, "node is inactive",
and response_stream is ignored. `autostart` (true in the profiles) brings it to active.
"""

from __future__ import annotations

import array
import threading

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from smolfusion_ros.backends.registry import create_tts_backend, tts_backend_names
from smolfusion_ros.backends.tts.base import Speech, TTSBackendError
from smolfusion_ros.core.speech_output import MAX_QUEUED, SpeechJob, SpeechOutput
from smolfusion_ros.io.audio_output import PlaybackError, open_output
from smolfusion_ros.msg import AudioChunk, ResponseChunk
from smolfusion_ros.nodes.diagnostics import (
    DIAGNOSTICS_PERIOD_SPEC,
    create_diagnostics,
    diagnostic_array,
)
from smolfusion_ros.nodes.managed import AUTOSTART_SPEC, ManagedNode
from smolfusion_ros.nodes.parameters import (
    LIVE,
    ConfigError,
    ParamSpec,
    between,
    declare_parameter_specs,
    one_of,
    read_parameters,
    watch_parameters,
)
from smolfusion_ros.nodes.runner import run_node
from smolfusion_ros.srv import Say

SPEAKING_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)

SAY_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of tts_node (the profile test checks the YAML files against it)."""
    return [
        AUTOSTART_SPEC,
        ParamSpec("backend", "espeak", "TTS back end name", one_of(*tts_backend_names())),
        ParamSpec("voice", "en-us", "voice of the back end (espeak-ng --voices)", applies=LIVE),
        ParamSpec("rate_wpm", 170, "speaking rate in words per minute", between(40, 600)),
        ParamSpec(
            "volume",
            1.0,
            "loudness, 1.0 = the engine's normal level",
            between(0.0, 2.0),
            applies=LIVE,
        ),
        ParamSpec("output", "device", "'device' (sound card), 'none' or a directory for WAVs"),
        ParamSpec("pace_output", False, "with 'none' or a directory, wait as long as the audio"),
        ParamSpec(
            "speak_sources", ["llm", "rule", "greeting"], "ResponseChunk sources that are spoken"
        ),
        ParamSpec("say_interrupts", False, "the say service stops what is being spoken"),
        ParamSpec(
            "max_sentence_chars", 200, "cut longer sentences at a comma/space", between(20, 5000)
        ),
        ParamSpec(
            "max_queued",
            MAX_QUEUED,
            "sentences waiting to be spoken; when full the oldest is dropped",
            between(1, 10000),
        ),
        DIAGNOSTICS_PERIOD_SPEC,
    ]


class TTSNode(ManagedNode):
    """Managed: configure creates the engine (back end checked, output opened), activate
    takes input, deactivate stops speaking (queue dropped, pending says answered), cleanup
    closes the engine. Entities live in every state; input is refused while inactive."""

    def __init__(self, node_name: str = "tts_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameter_specs(self, parameter_specs())
        watch_parameters(self, self._apply_live)
        self._tts_options: dict = {}
        self._speak_sources: set[str] = set()
        self._say_interrupts = False
        self._backend_name = ""
        self._pending_lock = threading.Lock()
        self._pending_says = 0
        self._speech: SpeechOutput | None = None

        self._speaking_pub = self.create_publisher(Bool, "robot_speaking", SPEAKING_QOS)
        self._audio_pub = self.create_publisher(AudioChunk, "audio_out", 10)
        self._diag_pub = create_diagnostics(self, self._publish_diagnostics)
        self._speaking_pub.publish(Bool(data=False))
        self.create_subscription(
            ResponseChunk,
            "response_stream",
            self._on_chunk,
            100,
            callback_group=MutuallyExclusiveCallbackGroup(),  # chunks stay in order
        )
        services = ReentrantCallbackGroup()
        # A burst of say calls waits in the node (each a suspended coroutine), so the request
        # queue must hold a burst too: the default depth (10) silently loses the rest.
        self.create_service(Say, "say", self._on_say, qos_profile=SAY_QOS, callback_group=services)
        self.create_service(Trigger, "~/stop", self._on_stop, callback_group=services)

    # ---- lifecycle ---------------------------------------------------------------------------

    def configure(self) -> None:
        p = read_parameters(self, parameter_specs())
        self._speak_sources = set(p["speak_sources"])
        self._say_interrupts = p["say_interrupts"]
        self._speech = self._create_engine(p)
        self._speech.start()  # idle until active: input is refused before
        self.get_logger().info(
            f"speaking with {p['backend']} voice {p['voice']} to {self._speech.output.label}"
        )

    def deactivate(self) -> None:
        # Silence now: what is being spoken stops, queued sentences and waiting says end.
        if self._speech is not None:
            self._speech.stop("node deactivated")

    def cleanup(self) -> None:
        speech, self._speech = self._speech, None
        if speech is not None:
            speech.close("node cleaned up")

    def _create_engine(self, p: dict) -> SpeechOutput:
        """The speech engine for these parameters; ConfigError on a missing engine, a bad
        voice or an output that cannot be opened."""
        backend = p["backend"]  # a registry name: its spec checked it
        options = {"rate_wpm": p["rate_wpm"], "volume": p["volume"]}
        try:
            output = open_output(p["output"], p["pace_output"])
        except PlaybackError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"parameter output={p['output']!r}: {exc}") from None
        if output.unavailable:
            # Said once, here; afterwards only /diagnostics shows it (no line per answer).
            self.get_logger().warning(
                f"{output.unavailable}: answers are not played, only published on "
                "audio_out (set output to 'none' or a WAV directory to choose that on "
                "purpose; restart after connecting a speaker)"
            )
        logger = self.get_logger()
        self._tts_options = {"backend": backend, **options}
        speech = SpeechOutput(
            self._backend_factory(),
            output,
            p["voice"],
            max_sentence_chars=p["max_sentence_chars"],
            max_queued=p["max_queued"],
            on_speaking=self._publish_speaking,
            on_audio=self._publish_audio,
            warn=logger.warning,
            error=lambda line: logger.error(line, throttle_duration_sec=5.0),
        )
        try:
            speech.check_voice()  # fail at start on a missing engine or a bad voice
        except TTSBackendError as exc:
            speech.close()
            raise ConfigError(str(exc)) from None
        self._backend_name = backend
        return speech

    def _backend_factory(self):
        options = dict(self._tts_options)
        backend = options.pop("backend")
        return lambda voice: create_tts_backend(backend, voice=voice, **options)

    def _apply_live(self, changes: dict) -> None:
        """`ros2 param set` of voice or volume: the engine uses it from the next sentence.
        Unconfigured, the next configure reads it. An unknown voice raises (the set is
        refused with the reason) and changes nothing. Runs on an executor thread: checking a
        voice speaks one word with espeak-ng (tens of milliseconds)."""
        with self._transition_lock:  # not while configure/cleanup swaps the engine
            speech = self._speech
            if speech is None:
                return
            if "voice" in changes:
                try:
                    speech.set_voice(changes["voice"])
                except TTSBackendError as exc:
                    raise ValueError(f"voice {changes['voice']!r}: {exc}") from None
            if "volume" in changes:
                self._tts_options["volume"] = changes["volume"]
                speech.set_backend_factory(self._backend_factory())

    # ---- input -------------------------------------------------------------------------------

    def _on_chunk(self, msg: ResponseChunk) -> None:
        speech = self._speech
        if speech is not None and self.is_active and msg.source in self._speak_sources:
            speech.feed(msg.request_id, msg.text, msg.is_final)

    async def _on_say(self, request: Say.Request, response: Say.Response) -> Say.Response:
        speech = self._speech
        if speech is None or not self.is_active:
            response.success, response.error = False, self.inactive_error()
            return response
        # A coroutine: while the text is spoken this callback is suspended on `spoken`, not
        # holding an executor thread. The worker completes the future; rclpy's Future then
        # wakes the executor (through its done callback), which resumes this coroutine.
        spoken: Future = Future(executor=self.executor)
        spoken.add_done_callback(lambda _future: None)  # makes set_result wake the executor

        def finished(job: SpeechJob) -> None:
            spoken.set_result(job)

        with self._pending_lock:
            self._pending_says += 1
        try:
            speech.say(request.text, request.voice, self._say_interrupts, finished)
            job: SpeechJob = await spoken
        finally:
            with self._pending_lock:
                self._pending_says -= 1
        response.success, response.error = job.success, job.error
        response.duration_s = float(job.duration_s)
        return response

    def _on_stop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        speech = self._speech
        if speech is None or not self.is_active:
            response.success, response.message = False, self.inactive_error()
            return response
        dropped = speech.stop("stopped")
        response.success = True
        response.message = f"stopped; {dropped} queued sentence(s) dropped"
        return response

    # ---- output ------------------------------------------------------------------------------

    def _publish_speaking(self, speaking: bool) -> None:
        self._speaking_pub.publish(Bool(data=speaking))

    def _publish_audio(self, speech: Speech, _request_id: str) -> None:
        samples = array.array("h")
        samples.frombytes(speech.samples.astype("<i2").tobytes())
        self._audio_pub.publish(
            AudioChunk(
                stamp=self.get_clock().now().to_msg(),
                sample_rate=speech.sample_rate,
                channels=1,
                samples=samples,
            )
        )

    def _publish_diagnostics(self) -> None:
        speech = self._speech
        if speech is None:  # unconfigured: the lifecycle state says why
            self._diag_pub.publish(
                diagnostic_array(self, "tts", DiagnosticStatus.OK, "not configured", "", {})
            )
            return
        stats = speech.stats()
        no_device = speech.output.unavailable
        level = DiagnosticStatus.WARN if stats.last_error or no_device else DiagnosticStatus.OK
        message = "speaking" if stats.speaking else "idle"
        if no_device:
            message += f"; {no_device}: not played, audio_out only"
        values = {
            "utterances": stats.utterances,
            "errors": stats.errors,
            "stopped": stats.stopped,
            "accepted": stats.accepted,
            "dropped_queue_full": stats.dropped_queue_full,
            "files": stats.files,
            "playback_failures": stats.playback_failures,
            "queued": stats.queued,
            "max_queued": speech.max_queued,
            "speaking": stats.speaking,
            "audio_s_per_synthesis_s": f"{stats.audio_s_per_synthesis_s:.1f}",
            "backend": self._backend_name,
            "voice": speech.voice,
            "output": speech.output.label,
            "output_device": no_device or "ok",
            "last_error": stats.last_error,
        }
        self._diag_pub.publish(
            diagnostic_array(self, "tts", level, message, self._backend_name, values)
        )

    # ---- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """The runner calls this while the executor still spins: pending `say` calls get
        their answer (success=false, "shutting down") before the node goes."""
        speech = self._speech
        if speech is not None:
            speech.stop("shutting down")

    def drained(self) -> bool:
        with self._pending_lock:
            return self._pending_says == 0

    def close(self) -> None:
        super().close()  # the shutdown transition: deactivate, cleanup


def main() -> None:
    run_node(TTSNode)


if __name__ == "__main__":
    main()
