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
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from smolfusion_ros.backends.vlm.base import VisionBackend, VisionResult
from smolfusion_ros.core.people import PersonTracker, PersonUpdate

log = logging.getLogger(__name__)

# While the LLM generates, how often the worker checks whether it may describe again.
LLM_BUSY_POLL_S = 0.05
CONCURRENCY_POLICIES = ("yield", "concurrent")


class VisionUnavailable(Exception):
    """No answer from the vision side; str(exc) says why (no frame, not loaded, busy...)."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # HxWx3 uint8 RGB
    stamp: float  # capture time (wall clock seconds)
    seq: int


class LatestFrame:
    """Holds only the newest frame; a frame replaced before it was used counts as dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.arrived = threading.Event()  # set on every put(); the vision worker waits on it
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
        self.arrived.set()
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
    produced_at: float  # wall clock
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


_Question = VisualQuestion


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
        # "concurrent": the scene loop does not wait for the LLM.
        self._llm_busy = llm_busy if concurrency == "yield" else (lambda: False)
        self._on_scene = on_scene
        self._people = person_tracker or PersonTracker()
        self._questions: queue.Queue[_Question] = queue.Queue(maxsize=max_pending_questions)
        self._background_cancel = threading.Event()
        self._in_background = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.load_error = ""
        self._scene: Scene | None = None
        self.stats = VisionStats()
        self._thread = threading.Thread(target=self._run, name="vision", daemon=True)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._background_cancel.set()
        self.frames.arrived.set()
        self._thread.join(timeout)
        while True:
            try:
                question = self._questions.get_nowait()
            except queue.Empty:
                break
            question.error = "the node is shutting down"
            question.done.set()
        self.backend.close()

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
        if scene is None or time.time() - scene.frame.stamp > self._max_scene_age_s:
            return ""
        return scene.result.text

    def yield_to_llm(self) -> None:
        """Cancel a running background description: an answer is about to be generated.
        (Policy "yield" only; with "concurrent" the description goes on beside the LLM.)"""
        if self._in_background and self.concurrency == "yield":
            self._background_cancel.set()

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
        try:
            self._questions.put_nowait(question)
        except queue.Full:
            raise VisionUnavailable("busy: too many visual questions are waiting") from None
        self._background_cancel.set()  # the person's question goes before the scene loop
        self.frames.arrived.set()  # wake the worker
        return question

    def withdraw(self, question: VisualQuestion) -> None:
        """Give up on a question: not started = never computed; running = cancelled."""
        question.cancel.set()

    # ------------------------------------------------------------------- worker
    def _run(self) -> None:
        try:
            self.backend.load()
        except Exception as exc:
            self.load_error = str(exc)
            log.error("vision back end failed to load: %s", exc)
            return
        self._ready.set()
        described_seq = 0
        next_scene_at = 0.0
        while not self._stop.is_set():
            # Sleep until a frame or a question arrives, the next scene is due, or (while the
            # LLM generates) the next check: no polling while the camera is quiet.
            self.frames.arrived.clear()
            try:
                self._answer(self._questions.get_nowait())
                continue
            except queue.Empty:
                pass
            frame = self.frames.newer_than(described_seq)
            wait = None if frame is None else max(0.0, next_scene_at - time.monotonic())
            if frame is not None and wait == 0.0 and self._llm_busy():
                wait = LLM_BUSY_POLL_S
            if wait is None or wait > 0.0:
                self.frames.arrived.wait(wait)
                continue
            if self._describe_scene(frame):
                described_seq = frame.seq
                next_scene_at = time.monotonic() + self._interval_s

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
        image, stamp = question.image, time.time()
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
        self._background_cancel.clear()
        if not self._questions.empty():  # a question arrived meanwhile: it goes first
            return False
        self._in_background = True
        try:
            result = self.backend.describe(
                frame.image, self._scene_prompt, self._background_cancel, self._max_tokens
            )
        except Exception as exc:
            self.stats.failures += 1
            log.warning("scene description failed: %s", exc)
            self.frames.mark_used(frame.seq)
            return True  # a frame the back end cannot handle is not retried
        finally:
            self._in_background = False
        if self._background_cancel.is_set():
            self.stats.preempted += 1
            return False
        self.frames.mark_used(frame.seq)
        person = self._people.update(result.has_person, result.person_count, time.time())
        scene = Scene(result, frame, time.time(), person)
        self._scene = scene
        self.stats.scenes += 1
        self.stats.last_latency_s = result.latency_s
        try:
            self._on_scene(scene)
        except Exception as exc:
            log.warning("publishing the scene failed: %s", exc)
        return True
