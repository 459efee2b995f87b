"""The vision worker and visual turns with the real perception back end and the real LLM."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from images import photo, sign
from test_chat_engine import MODEL, PERSONAS, RecordingBackend, _wait_ready

from smolfusion_ros.backends.vlm.perception import PerceptionBackend
from smolfusion_ros.core.chat_engine import ChatEngine, EngineSettings
from smolfusion_ros.core.requests import ChatRequest
from smolfusion_ros.core.scene import LatestFrame, VisionUnavailable, VisionWorker

pytestmark = pytest.mark.model
ASTRONAUT = photo("astronaut.png")
COFFEE = photo("coffee.png")


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _worker(backend=None, **kwargs) -> VisionWorker:
    worker = VisionWorker(backend or PerceptionBackend(ocr=False), LatestFrame(), **kwargs)
    worker.start()
    assert _wait(lambda: worker.ready), worker.load_error
    return worker


class GatedPerception(PerceptionBackend):
    """Stand-in for a slow VLM: the real perception back end, held at a gate first.

    Perception takes ~0.1 s a frame; a VLM on a small CPU takes seconds. The gate makes the
    vision side "slow" deterministically.
    """

    def __init__(self) -> None:
        super().__init__(ocr=False)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def describe(self, image_rgb, prompt, cancel, max_tokens=96):
        self.entered.set()
        self.gate.wait(30)
        return super().describe(image_rgb, prompt, cancel, max_tokens)


def test_the_scene_loop_describes_the_newest_frame_and_drops_stale_ones():
    scenes = []
    worker = _worker(interval_s=0.5, on_scene=scenes.append)
    try:
        for i in range(20):  # far faster than the scene loop
            worker.frames.put(COFFEE if i < 19 else ASTRONAUT, time.time())
            time.sleep(0.01)
        assert _wait(lambda: any(s.result.has_person for s in scenes))
        time.sleep(0.7)
        assert len(scenes) <= 3, "frames must be sampled, never queued"
        assert worker.frames.dropped >= 15
        newest = scenes[-1]
        assert newest.frame.seq == 20 and newest.result.has_person
        assert newest.person.new_person, "the first person seen is new"
        assert "Perception summary" in worker.scene_text()
    finally:
        worker.stop()


class CountingFrames(LatestFrame):
    """The real newest-frame holder, counting how often the worker looks for a new frame."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def newer_than(self, seq):
        self.looks += 1
        return super().newer_than(seq)


def test_a_quiet_camera_costs_no_polling():
    frames = CountingFrames()
    scenes = []
    worker = VisionWorker(
        PerceptionBackend(ocr=False), frames, interval_s=0.05, on_scene=scenes.append
    )
    worker.start()
    try:
        assert _wait(lambda: worker.ready), worker.load_error
        frames.put(COFFEE, time.time())
        assert _wait(lambda: len(scenes) == 1)
        assert _wait(lambda: worker.latest_scene is not None)
        time.sleep(0.2)  # let the worker go back to sleep
        looks = frames.looks
        time.sleep(1.0)  # quiet camera: 20 scene periods, and nothing wakes the worker
        assert frames.looks - looks <= 2, "the worker polls while the camera is quiet"
        frames.put(ASTRONAUT, time.time())  # a frame wakes it at once
        assert _wait(lambda: len(scenes) == 2)
    finally:
        worker.stop()


def test_scene_work_waits_while_the_llm_generates():
    busy = threading.Event()
    busy.set()
    scenes = []
    worker = _worker(interval_s=0.05, llm_busy=busy.is_set, on_scene=scenes.append)
    try:
        worker.frames.put(ASTRONAUT, time.time())
        time.sleep(0.5)
        assert scenes == []
        busy.clear()
        assert _wait(lambda: len(scenes) == 1)
    finally:
        worker.stop()


def test_visual_questions_use_the_given_image_or_the_newest_frame():
    worker = _worker(interval_s=60)
    try:
        with pytest.raises(VisionUnavailable, match="no camera frame"):
            worker.ask("How many people?")
        result, _ = worker.ask("How many people?", COFFEE)
        assert not result.has_person
        worker.frames.put(ASTRONAUT, 123.0)
        result, stamp = worker.ask("How many people?")
        assert result.has_person and stamp == 123.0
        assert worker.stats.questions == 2
    finally:
        worker.stop()


def test_a_question_preempts_a_background_description():
    backend = GatedPerception()
    worker = _worker(backend, interval_s=0.01)
    try:
        worker.frames.put(ASTRONAUT, time.time())
        assert backend.entered.wait(10)
        answers = []
        asking = threading.Thread(target=lambda: answers.append(worker.ask("Who is there?")))
        asking.start()
        time.sleep(0.1)
        backend.gate.set()
        asking.join(20)
        assert answers and answers[0][0].has_person
        assert worker.stats.preempted == 1
    finally:
        backend.gate.set()
        worker.stop()


class CloseRecordingGatedPerception(GatedPerception):
    """The gated stand-in for a slow VLM, recording whether close() ran while a describe()
    was still running (freeing a llama.cpp model under a running call crashes)."""

    def __init__(self) -> None:
        super().__init__()
        self.describing = False
        self.closed_while_describing: bool | None = None

    def describe(self, image_rgb, prompt, cancel, max_tokens=96):
        self.describing = True
        try:
            return super().describe(image_rgb, prompt, cancel, max_tokens)
        finally:
            self.describing = False

    def close(self) -> None:
        if self.closed_while_describing is None:
            self.closed_while_describing = self.describing
        super().close()


def test_stop_frees_the_back_end_only_after_a_running_description_returns():
    backend = CloseRecordingGatedPerception()
    worker = _worker(backend, interval_s=0.01)
    try:
        worker.frames.put(ASTRONAUT, time.time())
        assert backend.entered.wait(10)
        worker.stop(timeout=0.2)  # the description is held at the gate: stop cannot wait
        assert backend.closed_while_describing is None, "closed under the running describe"
        backend.gate.set()
        assert _wait(lambda: backend.closed_while_describing is not None, 30)
        assert backend.closed_while_describing is False
    finally:
        backend.gate.set()


def test_a_full_question_queue_rejects_counts_and_stop_fails_the_queued_with_its_reason():
    backend = GatedPerception()
    worker = _worker(backend, interval_s=60, max_pending_questions=2)
    try:
        running = worker.ask_async("Who is there?", COFFEE)
        assert backend.entered.wait(10), "the first question is being answered"
        queued = [worker.ask_async(f"Question {i}", COFFEE) for i in range(2)]
        with pytest.raises(VisionUnavailable, match="busy: 2 visual questions are already"):
            worker.ask_async("One too many", COFFEE)
        counts = worker.question_counts
        assert (counts.accepted, counts.rejected) == (3, 1)
        worker.stop(timeout=0.2, reason="the node is being cleaned up")
        for question in queued:
            assert question.done.is_set() and question.error == "the node is being cleaned up"
        backend.gate.set()
        assert _wait(running.done.is_set), "the running question still ends"
    finally:
        backend.gate.set()
        worker.stop()


@pytest.fixture
def engine_with_vision():
    backend = GatedPerception()
    backend.gate.set()
    worker = _worker(backend, interval_s=60)
    llm = RecordingBackend(MODEL, n_ctx=1024, n_threads=2)
    engine = ChatEngine(
        llm,
        PERSONAS,
        settings=EngineSettings(temperature=0.0, seed=3, vision_timeout_s=120),
        vision=worker,
    )
    engine.start()
    _wait_ready(engine)
    yield engine, worker, backend
    backend.gate.set()
    engine.stop()
    worker.stop()


def test_a_visual_turn_answers_with_the_vision_result(engine_with_vision):
    engine, worker, _backend = engine_with_vision
    worker.frames.put(ASTRONAUT, time.time())
    result = engine.submit(
        ChatRequest(text="What do you see?", session_id="v", max_tokens=16)
    ).wait(120)
    assert result.success and result.scene_used
    question = engine.backend.prompts[-1][-1]["content"]
    assert question.startswith("[What you see right now: Perception summary")
    assert "1 person" in question and question.endswith("What do you see?")


def test_a_non_visual_answer_does_not_wait_for_the_vision_model(engine_with_vision):
    engine, worker, backend = engine_with_vision
    worker.frames.put(sign("OPEN"), time.time())
    backend.gate.clear()
    backend.entered.clear()
    answers = []
    asking = threading.Thread(target=lambda: answers.append(worker.ask("Read it")))
    asking.start()
    assert backend.entered.wait(10), "the vision model is now busy"
    started = time.monotonic()
    result = engine.submit(
        ChatRequest(text="What is the capital of Italy?", session_id="n", max_tokens=8)
    ).wait(120)
    elapsed = time.monotonic() - started
    assert result.success
    # The vision question is held at the gate (up to 30 s) until released below: an answer
    # that came while it still waits did not wait for it, however loaded the machine is.
    assert asking.is_alive(), f"the answer came after the vision model ({elapsed:.1f} s)"
    backend.gate.set()
    asking.join(20)
    assert answers and answers[0][0].kind == "perception"


def test_a_visual_turn_without_a_camera_image_says_so(engine_with_vision):
    engine, _worker, _backend = engine_with_vision
    result = engine.submit(
        ChatRequest(text="What am I holding?", session_id="dark", max_tokens=8)
    ).wait(120)
    assert result.success and not result.scene_used
    assert "no camera frame has been received yet" in engine.backend.prompts[-1][-1]["content"]


def test_a_visual_turn_does_not_block_a_later_non_visual_turn(engine_with_vision):
    """The vision model is slow (gated); a visual turn waits for it off the LLM's thread
    while a non-visual turn submitted after it is answered."""
    engine, worker, backend = engine_with_vision
    worker.frames.put(ASTRONAUT, time.time())
    backend.gate.clear()
    backend.entered.clear()
    visual = engine.submit(ChatRequest(text="What do you see?", session_id="vis", max_tokens=8))
    assert backend.entered.wait(10), "the vision model is looking"
    other = engine.submit(
        ChatRequest(text="What is the capital of Italy?", session_id="other", max_tokens=8)
    )
    result = other.wait(120)
    assert result.success and not visual.done, "the non-visual turn did not wait for vision"
    backend.gate.set()
    answer = visual.wait(120)
    assert answer.success and answer.scene_used
    assert "1 person" in engine.backend.prompts[-1][-1]["content"]


def test_a_visual_question_past_the_timeout_is_withdrawn(engine_with_vision):
    engine, worker, backend = engine_with_vision
    worker.frames.put(ASTRONAUT, time.time())
    backend.gate.clear()
    backend.entered.clear()
    blocker = threading.Thread(target=lambda: worker.ask("Who is there?", timeout=30))
    blocker.start()  # occupies the vision model, so the turn's question is still queued
    assert backend.entered.wait(10)
    engine.settings = dataclasses.replace(engine.settings, vision_timeout_s=0.5)
    result = engine.submit(
        ChatRequest(text="What am I holding?", session_id="late", max_tokens=8)
    ).wait(120)
    assert result.success and not result.scene_used
    assert "no visual answer within 0.5 s" in engine.backend.prompts[-1][-1]["content"]
    backend.gate.set()
    blocker.join(20)
    assert _wait(lambda: worker.stats.withdrawn == 1), "the withdrawn question never ran"
    assert worker.stats.questions == 1, "only the blocker's question was computed"
