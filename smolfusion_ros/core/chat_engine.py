"""The chat engine: loads the LLM in the background and answers requests on its own thread.

Nothing here runs on a ROS executor thread. Callers `submit()` a request and get a ChatJob
back at once; a single worker thread generates answers in order (llama.cpp contexts are not
thread-safe, and on small machines one model at a time is fastest). A bounded queue rejects
overload with a clear message instead of letting latency grow without limit.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from smolfusion_ros.backends.llm.base import GenerationSettings, LLMBackend
from smolfusion_ros.core.jobs import ChatJob, ChatResult, TokenListener
from smolfusion_ros.core.personas import PersonaBook
from smolfusion_ros.core.prompt import PromptTooLongError, build_messages
from smolfusion_ros.core.requests import (
    ChatRequest,
    RequestLimits,
    RequestRejected,
    normalise_request,
)
from smolfusion_ros.core.routing import VisualTurnClassifier
from smolfusion_ros.core.scene import VisionUnavailable, VisionWorker
from smolfusion_ros.core.sessions import InMemorySessionStore, SessionStore, TurnRecord
from smolfusion_ros.core.summaries import build_summary_messages

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.05


class EngineState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class EngineSettings:
    limits: RequestLimits = RequestLimits()
    max_pending: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    seed: int = -1
    # Fold older turns into a summary once this many are outside the window (0 = never).
    summary_batch: int = 6
    summary_max_tokens: int = 120
    vision_timeout_s: float = 30.0


@dataclass
class EngineStats:
    served: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0
    last_ttft_s: float = 0.0
    last_tokens_per_s: float = 0.0
    summaries: int = 0
    summaries_preempted: int = 0


class ChatEngine:
    def __init__(
        self,
        backend: LLMBackend,
        personas: PersonaBook,
        sessions: SessionStore | None = None,
        settings: EngineSettings | None = None,
        vision: VisionWorker | None = None,
        classifier: VisualTurnClassifier | None = None,
        on_loaded: Callable[[EngineState, str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.personas = personas
        self.sessions = sessions or InMemorySessionStore()
        self.settings = settings or EngineSettings()
        self._vision = vision
        self._classifier = classifier or VisualTurnClassifier()
        # Told once, from the engine thread, when loading ends (READY or FAILED, with detail).
        self._on_loaded = on_loaded or (lambda _state, _detail: None)
        self._queue: queue.Queue[ChatJob | None] = queue.Queue(maxsize=self.settings.max_pending)
        self._state = EngineState.LOADING
        self._state_detail = ""
        self._load_started = time.monotonic()
        self._observers: list[TokenListener] = []
        self._done_observers: list[Callable[[ChatJob], None]] = []
        self._current: ChatJob | None = None
        self._stop = threading.Event()
        # Sessions whose older turns wait to be folded into their summary; done when idle.
        self._summary_due: set[str] = set()
        # Set by submit(): background summary work yields to a person waiting for an answer.
        self._preempt = threading.Event()
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._run, name="chat-engine", daemon=True)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        current = self._current
        if current is not None:
            current.cancel()
        # Fail everything still queued so no caller waits forever.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(
                    job, ChatResult(False, "the node is shutting down", request_id=job.request_id)
                )
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)
        self._state = EngineState.STOPPED
        self.backend.close()

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def state_detail(self) -> str:
        return self._state_detail

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def add_token_observer(self, observer: TokenListener) -> None:
        """Called for every token of every answer (e.g. to publish response_stream)."""
        self._observers.append(observer)

    def add_done_observer(self, observer: Callable[[ChatJob], None]) -> None:
        """Called once per finished job, whatever its outcome."""
        self._done_observers.append(observer)

    # ------------------------------------------------------------------- submit
    def submit(self, request: ChatRequest, listener: TokenListener | None = None) -> ChatJob:
        """Validate and queue a request. Raises RequestRejected with the reason."""
        try:
            request = normalise_request(request, self.settings.limits)
            persona_id = request.persona
            if persona_id and self.personas.get(persona_id) is None:
                raise RequestRejected(
                    f"unknown persona {persona_id!r} (known: {', '.join(self.personas.ids())})"
                )
            if request.use_vision == "always" and self._vision is None:
                raise RequestRejected("use_vision=always, but this profile has no vision back end")
            self._check_ready()
            job = ChatJob(request, [*self._observers, *([listener] if listener else [])])
            for observer in self._done_observers:
                job.add_done_callback(observer)
            try:
                self._queue.put_nowait(job)
                self._preempt.set()
            except queue.Full:
                raise RequestRejected(
                    f"busy: {self.settings.max_pending} requests are already waiting; "
                    "try again shortly"
                ) from None
            return job
        except RequestRejected:
            self.stats.rejected += 1
            raise

    def _check_ready(self) -> None:
        if self._state is EngineState.LOADING:
            waited = time.monotonic() - self._load_started
            raise RequestRejected(f"the language model is still loading ({waited:.1f} s so far)")
        if self._state is EngineState.FAILED:
            raise RequestRejected(f"the language model failed to load: {self._state_detail}")
        if self._state is EngineState.STOPPED or self._stop.is_set():
            raise RequestRejected("the node is shutting down")

    # ------------------------------------------------------------------- worker
    def _run(self) -> None:
        try:
            self.backend.load()
        except Exception as exc:
            self._state_detail = str(exc)
            self._state = EngineState.FAILED
            self._on_loaded(self._state, self._state_detail)
            return
        self._state_detail = (
            f"{self.backend.model_name} loaded in {time.monotonic() - self._load_started:.2f} s"
        )
        self._state = EngineState.READY
        self._on_loaded(self._state, self._state_detail)
        while not self._stop.is_set():
            try:
                # Poll while summaries are due, so they run as soon as no one is waiting.
                job = self._queue.get(timeout=IDLE_POLL_S if self._summary_due else None)
            except queue.Empty:
                self._summarize_next()
                continue
            if job is None:
                break
            self._current = job
            try:
                self._answer(job)
            except Exception as exc:  # keep the worker alive whatever happens
                log.exception("generation failed")
                self._finish(
                    job, ChatResult(False, f"generation failed: {exc}", request_id=job.request_id)
                )
            finally:
                self._current = None

    def _answer(self, job: ChatJob) -> None:
        request = job.request
        if job.cancelled:
            self._finish(job, self._result(job, "", 0, None, cancelled=True))
            return
        persona_id = request.persona or self.sessions.persona_of(request.session_id)
        persona = self.personas.get(persona_id) or self.personas.get("")
        scene, scene_used = self._scene_for(request)
        try:
            messages = build_messages(
                persona.render_system_prompt(),
                self.sessions.history(request.session_id),
                request.text,
                scene_text=scene,
                summary_text=self.sessions.summary(request.session_id)[0],
                context_size=self.backend.context_size,
                reserve_tokens=request.max_tokens,
                count_tokens=self.backend.count_tokens,
            )
        except PromptTooLongError as exc:
            self._finish(job, ChatResult(False, str(exc), request_id=job.request_id))
            return
        settings = GenerationSettings(
            max_tokens=request.max_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            top_k=self.settings.top_k,
            repeat_penalty=self.settings.repeat_penalty,
            seed=self.settings.seed,
        )
        parts: list[str] = []
        first_token_at = None
        for delta in self.backend.stream_chat(messages, settings, job.cancel_event):
            if first_token_at is None:
                first_token_at = time.monotonic()
            parts.append(delta)
            job.emit(delta, "".join(parts), len(parts), self._listener_error)
        reply = "".join(parts).strip()
        cancelled = job.cancelled
        if reply or cancelled:
            turns = [TurnRecord("user", request.text, request.source, job.submitted_wall)]
            if reply:
                latency = time.monotonic() - job.submitted_at
                turns.append(TurnRecord("assistant", reply, "llm", time.time(), latency))
            self.sessions.append(request.session_id, persona.persona_id, *turns)
            if self._summary_needed(request.session_id):
                self._summary_due.add(request.session_id)
        self._finish(
            job,
            self._result(
                job, reply, len(parts), first_token_at, cancelled, persona.persona_id, scene_used
            ),
        )

    def _scene_for(self, request: ChatRequest) -> tuple[str, bool]:
        """What the LLM is told about the camera: a fresh answer from the vision model for a
        visual turn, else the newest scene description. (text, whether vision was used)"""
        if self._vision is None:
            return "", False
        self._vision.yield_to_llm()
        if not self._classifier.route(request.text, request.use_vision).visual:
            text = self._vision.scene_text() if request.use_vision != "never" else ""
            return text, bool(text)
        try:
            result, _stamp = self._vision.ask(request.text, timeout=self.settings.vision_timeout_s)
        except VisionUnavailable as exc:
            return f"nothing right now ({exc}); say so if the question needs sight", False
        return result.text, True

    def _summary_needed(self, session_id: str) -> bool:
        batch = self.settings.summary_batch
        return batch > 0 and len(self.sessions.turns_to_fold(session_id)) >= batch

    def _summarize_next(self) -> None:
        """Fold one due session's older turns into its summary; give way to any request."""
        session_id = self._summary_due.pop()
        turns = self.sessions.turns_to_fold(session_id)
        if len(turns) < max(1, self.settings.summary_batch):
            return
        self._preempt.clear()
        if not self._queue.empty():  # a request arrived meanwhile: it goes first
            self._summary_due.add(session_id)
            return
        previous, _ = self.sessions.summary(session_id)
        settings = GenerationSettings(
            max_tokens=self.settings.summary_max_tokens,
            temperature=0.2,
            top_p=self.settings.top_p,
            top_k=self.settings.top_k,
            repeat_penalty=self.settings.repeat_penalty,
            seed=self.settings.seed,
        )
        messages = build_summary_messages(previous, turns)
        try:
            parts = list(self.backend.stream_chat(messages, settings, self._preempt))
        except Exception as exc:
            log.warning("summary of session %s failed: %s", session_id, exc)
            return
        if self._preempt.is_set():
            self.stats.summaries_preempted += 1
            self._summary_due.add(session_id)  # try again when idle
            return
        text = "".join(parts).strip()
        if text:
            self.sessions.set_summary(session_id, text, turns[-1].turn_id)
            self.stats.summaries += 1

    def _result(
        self,
        job: ChatJob,
        reply: str,
        tokens: int,
        first_token_at: float | None,
        cancelled: bool,
        persona: str = "",
        scene_used: bool = False,
    ) -> ChatResult:
        now = time.monotonic()
        ttft = (first_token_at - job.submitted_at) if first_token_at else 0.0
        if not reply and not cancelled:
            return ChatResult(
                False,
                "the model produced no text",
                request_id=job.request_id,
                session_id=job.request.session_id,
                latency_s=now - job.submitted_at,
            )
        return ChatResult(
            success=not cancelled,
            error="cancelled" if cancelled else "",
            reply=reply,
            request_id=job.request_id,
            session_id=job.request.session_id,
            persona=persona,
            scene_used=scene_used,
            cancelled=cancelled,
            ttft_s=ttft,
            latency_s=now - job.submitted_at,
            tokens=tokens,
        )

    def _finish(self, job: ChatJob, result: ChatResult) -> None:
        if result.cancelled:
            self.stats.cancelled += 1
        elif result.success:
            self.stats.served += 1
            self.stats.last_ttft_s = result.ttft_s
            gen_time = result.latency_s - result.ttft_s
            if result.tokens > 1 and gen_time > 0:
                self.stats.last_tokens_per_s = (result.tokens - 1) / gen_time
        else:
            self.stats.failed += 1
        job.finish(result, self._listener_error)

    @staticmethod
    def _listener_error(exc: Exception) -> None:
        log.warning("a token or result listener failed: %s", exc)
