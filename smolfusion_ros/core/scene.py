"""The vision side of fusion: newest-frame holder, scene loop and visual questions.

One vision thread owns the vision back end. It answers visual questions first (a person is
waiting), and otherwise, every `interval_s`, describes the newest frame it has not described
yet. Frames are never queued: a new frame replaces the previous one (counted as dropped if
it was never described).

How the scene loop shares the machine with the language model is a policy
(`concurrency`): "yield" (small CPUs) - no background description starts while an answer is
being generated, and a running one is cancelled (and retried later) when an answer needs
the machine; "concurrent" (GPU profiles, CPUs with free cores) - the scene loop keeps
running beside the LLM, each with its own thread budget. Visual questions are answered in
either case; `ask_async` lets the chat engine serve other turns while the vision model looks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from smolfusion_ros.backends.vlm.base import VisionBackend, VisionResult
from smolfusion_ros.core.people import PersonTracker, PersonUpdate
from smolfusion_ros.core.worker import (
    BoundedQueue,
    FullPolicy,
    QueueCounts,
    QueueFull,
    WorkerThread,
)

log = logging.getLogger(__name__)

# While the LLM generates, how often the worker checks whether it may describe again.
LLM_BUSY_POLL_S = 0.05
CONCURRENCY_POLICIES = ("yield", "concurrent")


class VisionUnavailable(Exception):
    """No answer from the vision side; str(exc) says why (no frame, not loaded, busy...)."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # HxWx3 uint8 RGB
    stamp: float  # capture time (seconds on the node clock: the frame's header stamp)
    seq: int


class LatestFrame:
    """Holds only the newest frame; a frame replaced before it was used counts as dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Called after every put() (the vision worker's wake), outside the lock.
        self.on_arrival: Callable[[], None] = lambda: None
        self._frame: Frame | None = None
        self._seq = 0
        self._used_seq = 0
        self.dropped = 0

    def put(self, image: np.ndarray, stamp: float) -> int:
        with self._lock:
            if self._frame is not None and self._frame.seq > self._used_seq:
                self.dropped += 1
            self._seq += 1
            self._frame = Frame(image, stamp, self._seq)
            seq = self._seq
        self.on_arrival()
        return seq

    def latest(self) -> Frame | None:
        with self._lock:
            return self._frame

    def newer_than(self, seq: int) -> Frame | None:
        with self._lock:
            frame = self._frame
            return frame if frame is not None and frame.seq > seq else None

    def mark_used(self, seq: int) -> None:
        with self._lock:
            self._used_seq = max(self._used_seq, seq)


@dataclass(frozen=True)
class Scene:
    result: VisionResult
    frame: Frame
    produced_at: float  # the worker's `now` clock
    person: PersonUpdate


@dataclass
class VisualQuestion:
    """One question to the vision model; `done` is set when it is answered or failed."""

    prompt: str
    image: np.ndarray | None
    done: threading.Event
    result: VisionResult | None = None
    error: str = ""
    frame_stamp: float = 0.0
    # Called on the vision thread once done (answered, failed or withdrawn).
    on_done: Callable[[VisualQuestion], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def withdrawn(self) -> bool:
        return self.cancel.is_set()


@dataclass
class VisionStats:
    scenes: int = 0
    questions: int = 0
    preempted: int = 0
    failures: int = 0
    withdrawn: int = 0
    last_latency_s: float = 0.0


class VisionWorker:
    def __init__(
        self,
        backend: VisionBackend,
        frames: LatestFrame,
        *,
        interval_s: float = 2.0,
        scene_prompt: str = "",
        max_tokens: int = 96,
        max_scene_age_s: float = 30.0,
        llm_busy: Callable[[], bool] = lambda: False,
        on_scene: Callable[[Scene], None] = lambda _scene: None,
        person_tracker: PersonTracker | None = None,
        max_pending_questions: int = 4,
        concurrency: str = "yield",
        now: Callable[[], float] = time.time,
    ) -> None:
        if concurrency not in CONCURRENCY_POLICIES:
            raise ValueError(
                f"concurrency must be one of {', '.join(CONCURRENCY_POLICIES)}, got {concurrency!r}"
            )
        self.concurrency = concurrency
        self.backend = backend
        self.frames = frames
        self._interval_s = interval_s
        self._scene_prompt = scene_prompt
        self._max_tokens = max_tokens
        self._max_scene_age_s = max_scene_age_s
        # The clock frame stamps are on (the node clock: sim time under use_sim_time), so
        # freshness and question stamps agree with the frames' header stamps.
        self._now = now
        # "concurrent": the scene loop does not wait for the LLM.
        self._llm_busy = llm_busy if concurrency == "yield" else (lambda: False)
        self._on_scene = on_scene
        self._people = person_tracker or PersonTracker()
        # Set when a question arrives, the LLM needs the machine ("yield") or on stop: a
        # running scene description stops early (the worker's preempt event).
        self._background_cancel = threading.Event()
        self._worker: WorkerThread[VisualQuestion | Frame] = WorkerThread(
            "vision",
            take=self._take,
            process=self._process,
            wait_s=self._wait_s,
            setup=self._load,
            preempt=self._background_cancel,
        )
        # Guarded by the worker's cond, like the scene loop's position below.
        self._questions: BoundedQueue[VisualQuestion] = BoundedQueue(
            "visual questions", max_pending_questions, FullPolicy.REJECT
        )
        self._described_seq = 0
        self._next_scene_at = 0.0
        frames.on_arrival = self._worker.wake  # no polling while the camera is quiet
        self._ready = threading.Event()
        self.load_error = ""
        self._scene: Scene | None = None
        self.stats = VisionStats()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 5.0, reason: str = "the node is shutting down") -> None:
        """Stop the thread, fail the queued questions with `reason`, free the back end once
        no describe() runs any more (a slow one may outlast `timeout`)."""
        self._worker.stop(timeout, then=self.backend.close)
        with self._worker.cond:
            queued = self._questions.drain()
        for question in queued:
            question.error = reason
            question.done.set()

    @property
    def question_counts(self) -> QueueCounts:
        """Visual questions accepted and rejected (queue full), for /diagnostics."""
        return self._questions.counts

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # ------------------------------------------------------------------ queries
    @property
    def latest_scene(self) -> Scene | None:
        return self._scene

    def scene_text(self) -> str:
        """The newest scene description if it is fresh enough to tell the LLM, else ""."""
        scene = self._scene
        if scene is None or self._now() - scene.frame.stamp > self._max_scene_age_s:
            return ""
        return scene.result.text

    def yield_to_llm(self) -> None:
        """Cancel a running background description: an answer is about to be generated.
        (Policy "yield" only; with "concurrent" the description goes on beside the LLM.)"""
        with self._worker.cond:  # `current` and the cancel change together (see _take)
            if isinstance(self._worker.current, Frame) and self.concurrency == "yield":
                self._background_cancel.set()

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def set_interval(self, interval_s: float) -> None:
        """The scene loop's period from now on (`ros2 param set vision.interval_s`): the next
        scene is due `interval_s` after the last one, so a shorter period applies at once."""
        if not interval_s > 0.0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        with self._worker.cond:
            self._next_scene_at += interval_s - self._interval_s
            self._interval_s = interval_s
            self._worker.cond.notify_all()

    def ask(
        self, prompt: str, image: np.ndarray | None = None, timeout: float = 60.0
    ) -> tuple[VisionResult, float]:
        """Answer a question about `image` (None = the newest camera frame).

        Returns (result, frame stamp). Raises VisionUnavailable with the reason.
        """
        question = self.ask_async(prompt, image)
        if not question.done.wait(timeout):
            self.withdraw(question)
            raise VisionUnavailable(f"no visual answer within {timeout} s")
        if question.result is None:
            raise VisionUnavailable(question.error or "the vision model gave no answer")
        return question.result, question.frame_stamp

    def ask_async(
        self,
        prompt: str,
        image: np.ndarray | None = None,
        on_done: Callable[[VisualQuestion], None] | None = None,
    ) -> VisualQuestion:
        """Queue a question without waiting; `on_done(question)` runs on the vision thread
        when it is answered or failed. Raises VisionUnavailable when it cannot be asked."""
        if self.load_error:
            raise VisionUnavailable(f"the vision model failed to load: {self.load_error}")
        if not self.ready:
            raise VisionUnavailable("the vision model is still loading")
        if image is None and self.frames.latest() is None:
            raise VisionUnavailable("no camera frame has been received yet")
        question = VisualQuestion(prompt, image, threading.Event(), on_done=on_done)
        with self._worker.cond:
            try:
                self._questions.put(question)
            except QueueFull as exc:
                raise VisionUnavailable(str(exc)) from None
            self._background_cancel.set()  # the person's question goes before the scene loop
            self._worker.cond.notify_all()
        return question

    def withdraw(self, question: VisualQuestion) -> None:
        """Give up on a question: not started = never computed; running = cancelled."""
        question.cancel.set()

    # ------------------------------------------------------------------- worker
    def _load(self) -> bool:
        try:
            self.backend.load()
        except Exception as exc:
            self.load_error = str(exc)
            log.error("vision back end failed to load: %s", exc)
            return False
        self._ready.set()
        return True

    def _take(self) -> VisualQuestion | Frame | None:
        """Under the worker's cond: a question first (a person is waiting), else the newest
        undescribed frame once the next scene is due and the LLM lets it run."""
        if self._questions:
            return self._questions.pop()
        frame = self.frames.newer_than(self._described_seq)
        if frame is None or time.monotonic() < self._next_scene_at or self._llm_busy():
            return None
        # Cleared here, under the lock that ask_async and yield_to_llm set it under, so a
        # cancel that comes after this frame was taken is never lost.
        self._background_cancel.clear()
        return frame

    def _wait_s(self) -> float | None:
        """Until woken (a frame or a question), the next scene, or the next LLM check."""
        if self.frames.newer_than(self._described_seq) is None:
            return None
        due_in = self._next_scene_at - time.monotonic()
        return due_in if due_in > 0.0 else LLM_BUSY_POLL_S

    def _process(self, item: VisualQuestion | Frame) -> None:
        if isinstance(item, VisualQuestion):
            self._answer(item)
        elif self._describe_scene(item):
            self._described_seq = item.seq
            self._next_scene_at = time.monotonic() + self._interval_s

    def _answer(self, question: VisualQuestion) -> None:
        try:
            self._answer_question(question)
        finally:
            question.done.set()
            if question.on_done is not None:
                try:
                    question.on_done(question)
                except Exception as exc:
                    log.warning("a visual question's callback failed: %s", exc)

    def _answer_question(self, question: VisualQuestion) -> None:
        if question.withdrawn:  # its asker gave up before it started: never computed
            self.stats.withdrawn += 1
            question.error = "withdrawn"
            return
        image, stamp = question.image, self._now()
        if image is None:
            frame = self.frames.latest()
            if frame is None:
                question.error = "no camera frame has been received yet"
                return
            image, stamp = frame.image, frame.stamp
            self.frames.mark_used(frame.seq)
        try:
            result = self.backend.describe(
                image, question.prompt, question.cancel, self._max_tokens
            )
        except Exception as exc:  # bad image or back-end failure: the caller gets the reason
            self.stats.failures += 1
            question.error = f"vision failed: {exc}"
            return
        if question.withdrawn:
            self.stats.withdrawn += 1
            question.error = "withdrawn"
            return
        question.result = result
        question.frame_stamp = stamp
        self.stats.questions += 1
        self.stats.last_latency_s = result.latency_s

    def _describe_scene(self, frame: Frame) -> bool:
        """Describe `frame` for the scene loop; False when cancelled (to be retried)."""
        if self._background_cancel.is_set():  # a question (or the LLM) came first
            return False
        try:
            result = self.backend.describe(
                frame.image, self._scene_prompt, self._background_cancel, self._max_tokens
            )
        except Exception as exc:
            self.stats.failures += 1
            log.warning("scene description failed: %s", exc)
            self.frames.mark_used(frame.seq)
            return True  # a frame the back end cannot handle is not retried
        if self._background_cancel.is_set():
            self.stats.preempted += 1
            return False
        self.frames.mark_used(frame.seq)
        now = self._now()
        person = self._people.update(result.has_person, result.person_count, now)
        scene = Scene(result, frame, now, person)
        self._scene = scene
        self.stats.scenes += 1
        self.stats.last_latency_s = result.latency_s
        try:
            self._on_scene(scene)
        except Exception as exc:
            log.warning("publishing the scene failed: %s", exc)
        return True
