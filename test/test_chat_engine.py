"""The chat engine with the real SmolLM2 model through llama.cpp, without ROS."""

from __future__ import annotations

import threading
import time

import pytest

from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend
from smolfusion_ros.catalogue import resolve_model
from smolfusion_ros.core.chat_engine import ChatEngine, EngineSettings, EngineState
from smolfusion_ros.core.personas import load_personas
from smolfusion_ros.core.requests import ChatRequest, RequestRejected
from smolfusion_ros.paths import config_path

pytestmark = pytest.mark.model

MODEL = resolve_model("smollm2-135m-instruct")
PERSONAS = load_personas(config_path("personas.yaml"))


class RecordingBackend(LlamaCppChatBackend):
    """The real llama.cpp back end, remembering the messages of each prompt it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[list[dict]] = []

    def stream_chat(self, messages, settings, cancel):
        self.prompts.append([dict(m) for m in messages])
        yield from super().stream_chat(messages, settings, cancel)


class GatedLoadBackend(LlamaCppChatBackend):
    """Stand-in for a slow load: the real back end, whose load() waits for a gate first.

    SmolLM2 loads in about 0.15 s, too fast to hit the loading window reliably.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def load(self) -> None:
        self.gate.wait(30)
        super().load()


def _engine(backend=None, **settings) -> ChatEngine:
    backend = backend or RecordingBackend(MODEL, n_ctx=1024, n_threads=2)
    engine = ChatEngine(
        backend, PERSONAS, settings=EngineSettings(temperature=0.0, seed=3, **settings)
    )
    engine.start()
    return engine


def _wait_ready(engine: ChatEngine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while engine.state is EngineState.LOADING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.state is EngineState.READY, engine.state_detail


@pytest.fixture(scope="module")
def engine():
    engine = _engine()
    _wait_ready(engine)
    yield engine
    engine.stop()


def ask(engine, text, session, max_tokens=24):
    result = engine.submit(ChatRequest(text=text, session_id=session, max_tokens=max_tokens)).wait(
        60
    )
    assert result is not None and result.success, result
    return result


def test_two_sessions_keep_separate_histories(engine):
    backend = engine.backend
    ask(engine, "My name is Alice.", "alice")
    ask(engine, "My name is Bob.", "bob")
    ask(engine, "What is my name?", "alice")
    alice_prompt = backend.prompts[-1]
    contents = [m["content"] for m in alice_prompt]
    assert "My name is Alice." in contents
    assert "My name is Bob." not in contents
    assert contents[-1] == "What is my name?"
    assert [m["role"] for m in alice_prompt] == ["system", "user", "assistant", "user"]
    ask(engine, "What is my name?", "bob")
    bob_contents = [m["content"] for m in backend.prompts[-1]]
    assert "My name is Bob." in bob_contents and "My name is Alice." not in bob_contents
    assert [t.text for t in engine.sessions.history("alice")][0::2] == [
        "My name is Alice.",
        "What is my name?",
    ]


def test_use_vision_always_is_refused_without_a_vision_back_end(engine):
    with pytest.raises(RequestRejected, match="no vision back end"):
        engine.submit(ChatRequest(text="What is this?", use_vision="always", max_tokens=4))


def test_persona_changes_the_system_prompt(engine):
    ask(engine, "Hello.", "persona-test")
    default_system = engine.backend.prompts[-1][0]["content"]
    engine.submit(
        ChatRequest(text="Hello.", session_id="persona-guide", persona="guide", max_tokens=8)
    ).wait(60)
    guide_system = engine.backend.prompts[-1][0]["content"]
    assert default_system.startswith("You are Smol")
    assert guide_system.startswith("You are a museum guide")


def test_tokens_stream_to_the_listener_in_order(engine):
    seen = []
    job = engine.submit(
        ChatRequest(text="Count from one to five.", session_id="count", max_tokens=32),
        listener=lambda _job, delta, partial, n: seen.append((delta, partial, n)),
    )
    result = job.wait(60)
    assert result.success
    assert (
        [n for *_, n in seen] == list(range(1, len(seen) + 1)) == list(range(1, result.tokens + 1))
    )
    assert "".join(d for d, *_ in seen).strip() == result.reply
    assert 0 < result.ttft_s < result.latency_s


def test_a_queued_job_cancelled_before_it_starts_generates_nothing(engine):
    started = threading.Event()
    first = engine.submit(
        ChatRequest(text="Tell a long story.", session_id="q1", max_tokens=200),
        listener=lambda *_: started.set(),
    )
    second = engine.submit(ChatRequest(text="Hello?", session_id="q2", max_tokens=20))
    second.cancel()
    assert started.wait(30)
    first.cancel()
    assert first.wait(10).cancelled
    result = second.wait(10)
    assert result.cancelled and result.tokens == 0 and not result.success


def test_overload_is_rejected_while_one_answer_runs():
    engine = _engine(max_pending=1)
    try:
        _wait_ready(engine)
        started = threading.Event()
        running = engine.submit(
            ChatRequest(text="Write a long poem.", session_id="a", max_tokens=300),
            listener=lambda *_: started.set(),
        )
        assert started.wait(30)
        queued = engine.submit(ChatRequest(text="Hi", session_id="b", max_tokens=4))
        with pytest.raises(RequestRejected, match="busy"):
            engine.submit(ChatRequest(text="Hi again", session_id="c", max_tokens=4))
        running.cancel()
        assert queued.wait(30).success
        assert engine.stats.rejected == 1
    finally:
        engine.stop()


def test_requests_while_loading_are_rejected_then_served():
    backend = GatedLoadBackend(MODEL, n_ctx=512, n_threads=2)
    engine = _engine(backend)
    try:
        with pytest.raises(RequestRejected, match="still loading"):
            engine.submit(ChatRequest(text="Hello", max_tokens=4))
        backend.gate.set()
        _wait_ready(engine)
        assert engine.submit(ChatRequest(text="Hello", max_tokens=4)).wait(30).success
    finally:
        backend.gate.set()
        engine.stop()


class CloseRecordingGatedBackend(GatedLoadBackend):
    """The gated stand-in for a slow load, recording when close() runs and whether a load was
    still in progress then (freeing a llama.cpp model under a running call crashes)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loading = False
        self.closed_while_loading: bool | None = None

    def load(self) -> None:
        self.loading = True
        try:
            super().load()
        finally:
            self.loading = False

    def close(self) -> None:
        if self.closed_while_loading is None:
            self.closed_while_loading = self.loading
        super().close()


def test_stop_during_a_slow_load_frees_the_model_only_after_the_load_returns():
    backend = CloseRecordingGatedBackend(MODEL, n_ctx=512, n_threads=2)
    engine = _engine(backend)
    try:
        deadline = time.monotonic() + 10
        while not backend.loading and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.loading
        engine.stop(timeout=0.2)  # the load is held at the gate: stop cannot wait for it
        assert backend.closed_while_loading is None, "closed under the running load"
        backend.gate.set()
        deadline = time.monotonic() + 60
        while backend.closed_while_loading is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.closed_while_loading is False, "never closed, or closed mid-load"
    finally:
        backend.gate.set()


def test_a_model_that_fails_to_load_gives_a_clear_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    engine = _engine(LlamaCppChatBackend(broken, n_ctx=256))
    try:
        deadline = time.monotonic() + 30
        while engine.state is EngineState.LOADING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.state is EngineState.FAILED
        with pytest.raises(RequestRejected, match="failed to load"):
            engine.submit(ChatRequest(text="Hello", max_tokens=4))
    finally:
        engine.stop()


def test_stop_fails_waiting_jobs_instead_of_leaving_them_hanging():
    engine = _engine(max_pending=3)
    _wait_ready(engine)
    started = threading.Event()
    running = engine.submit(
        ChatRequest(text="Write a long story.", session_id="a", max_tokens=400),
        listener=lambda *_: started.set(),
    )
    waiting = engine.submit(ChatRequest(text="Hi", session_id="b", max_tokens=4))
    assert started.wait(30)
    engine.stop()
    stopped = running.wait(5)
    assert stopped is not None and not stopped.success and "shutting down" in stopped.error
    result = waiting.wait(5)
    assert result is not None and not result.success
    with pytest.raises(RequestRejected, match="shutting down"):
        engine.submit(ChatRequest(text="Hi", max_tokens=4))


def test_a_stop_that_is_not_a_shutdown_tells_every_caller_its_own_reason():
    engine = _engine(max_pending=3)
    _wait_ready(engine)
    started = threading.Event()
    running = engine.submit(
        ChatRequest(text="Write a long story.", session_id="a", max_tokens=400),
        listener=lambda *_: started.set(),
    )
    waiting = engine.submit(ChatRequest(text="Hi", session_id="b", max_tokens=4))
    assert started.wait(60)
    engine.stop(reason="the node is being cleaned up")
    for job in (running, waiting):
        result = job.wait(60)
        assert result is not None and not result.success
        assert result.error == "the node is being cleaned up"
    with pytest.raises(RequestRejected, match="the node is being cleaned up"):
        engine.submit(ChatRequest(text="Hi", max_tokens=4))


def test_a_restarted_engine_continues_the_conversation_from_sqlite(tmp_path):
    from smolfusion_ros.memory.session_store import PersistentSessionStore
    from smolfusion_ros.memory.store import MemoryStore

    db = tmp_path / "memory.db"

    def engine_on_disk() -> ChatEngine:
        store = PersistentSessionStore(MemoryStore(db), window_turns=16)
        engine = ChatEngine(
            RecordingBackend(MODEL, n_ctx=1024, n_threads=2),
            PERSONAS,
            store,
            EngineSettings(temperature=0.0, seed=3),
        )
        engine.start()
        _wait_ready(engine)
        return engine

    first = engine_on_disk()
    ask(first, "My name is Carla and I like trains.", "carla")
    first.stop()

    second = engine_on_disk()
    try:
        ask(second, "What do I like?", "carla")
        contents = [m["content"] for m in second.backend.prompts[-1]]
        assert "My name is Carla and I like trains." in contents
        stored = MemoryStore(db).history("carla")
        assert [t.role for t in stored] == ["user", "assistant", "user", "assistant"]
        assert stored[1].latency_s > 0 and stored[1].source == "llm"
    finally:
        second.stop()


def test_a_question_that_cannot_fit_the_context_gets_an_error(engine):
    job = engine.submit(ChatRequest(text="hello " * 600, session_id="too-long", max_tokens=1000))
    result = job.wait(30)
    assert not result.success
    assert "do not fit the model's context of 1024 tokens" in result.error
    assert engine.sessions.history("too-long") == []


def _is_summary_request(messages) -> bool:
    from smolfusion_ros.core.summaries import SUMMARY_INSTRUCTIONS

    return messages[0]["content"] == SUMMARY_INSTRUCTIONS


class SummaryWatchingBackend(RecordingBackend):
    """The real back end; sets an event when a summary request starts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.summary_started = threading.Event()

    def stream_chat(self, messages, settings, cancel):
        if _is_summary_request(messages):
            self.summary_started.set()
        yield from super().stream_chat(messages, settings, cancel)


def _summarising_engine(tmp_path, **settings):
    from smolfusion_ros.memory.session_store import PersistentSessionStore
    from smolfusion_ros.memory.store import MemoryStore

    store = PersistentSessionStore(MemoryStore(tmp_path / "memory.db"), window_turns=4)
    backend = SummaryWatchingBackend(MODEL, n_ctx=2048, n_threads=2)
    engine = ChatEngine(
        backend, PERSONAS, store, EngineSettings(temperature=0.0, seed=3, **settings)
    )
    engine.start()
    _wait_ready(engine)
    return engine


def test_older_turns_are_folded_into_a_summary_that_the_prompt_carries(tmp_path):
    engine = _summarising_engine(tmp_path, summary_batch=2, summary_max_tokens=60)
    try:
        for question in (
            "My name is Ana.",
            "I live in Lisbon.",
            "I have a cat called Tom.",
            "I work as a nurse.",
        ):
            ask(engine, question, "ana", max_tokens=16)
        deadline = time.monotonic() + 150
        while not engine.sessions.summary("ana")[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        summary, up_to = engine.sessions.summary("ana")
        assert summary, "no summary was written"
        summary_prompts = [p for p in engine.backend.prompts if _is_summary_request(p)]
        assert "Person: My name is Ana." in summary_prompts[0][1]["content"]
        window_ids = [t.turn_id for t in engine.sessions.history("ana")]
        assert up_to < min(window_ids), "the summary covers only turns outside the window"
        ask(engine, "What do you know about me?", "ana", max_tokens=16)
        # The last answer's prompt (a further summary may have started after it).
        prompt = [p for p in engine.backend.prompts if not _is_summary_request(p)][-1]
        assert f"Earlier in this conversation: {summary}" in prompt[0]["content"]
        assert "My name is Ana." not in [m["content"] for m in prompt[1:]]
        assert engine.stats.summaries >= 1
    finally:
        engine.stop()


def test_a_request_preempts_a_running_summary(tmp_path):
    engine = _summarising_engine(tmp_path, summary_batch=2, summary_max_tokens=1000)
    try:
        for question in ("Tell me about whales.", "And dolphins?", "And sharks?"):
            ask(engine, question, "sea", max_tokens=24)
        assert engine.backend.summary_started.wait(120)
        result = engine.submit(
            ChatRequest(text="Quick: say hi.", session_id="other", max_tokens=8)
        ).wait(120)
        assert result.success
        # Not a time bound (the machine may be loaded): the summary, up to 1000 tokens, was
        # stopped for the request and not finished first.
        assert engine.stats.summaries_preempted == 1
        deadline = time.monotonic() + 200
        while not engine.sessions.summary("sea")[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.sessions.summary("sea")[0], "the preempted summary is written later"
    finally:
        engine.stop()
