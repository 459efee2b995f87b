"""First-token time over a conversation, with the real SmolLM2 model through llama.cpp.

Measured as prompt tokens the back end evaluated before the first answer token (what the KV
cache did not already hold): deterministic, unlike times on a shared 2-core machine.
"""

from __future__ import annotations

import threading
import time

import pytest
from images import photo
from test_chat_engine import MODEL, PERSONAS, RecordingBackend, _wait_ready

from smolfusion_ros.backends.vlm.perception import PerceptionBackend
from smolfusion_ros.core.chat_engine import ChatEngine, EngineSettings
from smolfusion_ros.core.requests import ChatRequest
from smolfusion_ros.core.scene import LatestFrame, VisionWorker
from smolfusion_ros.core.sessions import InMemorySessionStore
from smolfusion_ros.core.summaries import SUMMARY_INSTRUCTIONS

pytestmark = pytest.mark.model
QUESTIONS = (
    "What is a good name for a cat?",
    "How far away is the moon?",
    "Tell me one fact about whales.",
    "What should I cook tonight?",
    "How do plants grow?",
    "Which colour do you like?",
)


def _engine(cache_mb: int = 0, vision: VisionWorker | None = None, **settings) -> ChatEngine:
    backend = RecordingBackend(MODEL, n_ctx=2048, n_threads=2, session_cache_bytes=cache_mb << 20)
    engine = ChatEngine(
        backend,
        PERSONAS,
        InMemorySessionStore(window_turns=12),
        EngineSettings(temperature=0.0, seed=3, **({"summary_batch": 0} | settings)),
        vision=vision,
    )
    engine.start()
    _wait_ready(engine)
    return engine


def _ask(engine: ChatEngine, text: str, session: str, max_tokens: int = 24):
    result = engine.submit(ChatRequest(text=text, session_id=session, max_tokens=max_tokens)).wait(
        120
    )
    assert result is not None and result.success, result
    return result, engine.stats.last_prompt_tokens


def _prompt_tokens(engine: ChatEngine) -> tuple[int, int]:
    """(tokens of the whole last prompt, tokens of its last message) by the model's tokenizer."""
    messages = engine.backend.prompts[-1]
    count = engine.backend.count_tokens
    return sum(count(m["content"]) for m in messages), count(messages[-1]["content"])


def test_scene_changes_between_turns_do_not_re_evaluate_the_history():
    """The scene loop describes a changing camera between turns; each answer evaluates only
    its own new message (with the new scene), not the growing history."""
    worker = VisionWorker(PerceptionBackend(ocr=False), LatestFrame(), interval_s=0.05)
    worker.start()
    engine = _engine(vision=worker)
    views = [photo("astronaut.png"), photo("coffee.png")]
    try:
        evaluated, sizes = [], []
        for turn, question in enumerate(QUESTIONS):
            before = worker.stats.scenes
            worker.frames.put(views[turn % len(views)], time.time())
            deadline = time.monotonic() + 20
            while worker.stats.scenes == before and time.monotonic() < deadline:
                time.sleep(0.02)
            _result, tokens = _ask(engine, question, "camera")
            evaluated.append(tokens)
            sizes.append(_prompt_tokens(engine))
        scenes = [m["content"] for m in engine.backend.prompts[-1] if m["role"] == "user"]
        assert len({s.split("]")[0] for s in scenes}) > 1, "the scene text changed between turns"
        total, last_message = sizes[-1]
        assert total > 250, sizes
        for tokens, (_total, message) in zip(evaluated[1:], sizes[1:], strict=True):
            # The new message plus a few template tokens and the end of the previous answer.
            assert tokens <= message + 24, (evaluated, sizes)
        assert evaluated[-1] < total / 4, (evaluated, sizes)
    finally:
        engine.stop()
        worker.stop()


def test_switching_back_to_a_session_restores_its_state():
    """Two sessions interleave on one model: with the session cache, coming back to the
    first evaluates only the new message; without it, its whole history again."""
    measured = {}
    for cache_mb in (64, 0):
        engine = _engine(cache_mb)
        try:
            for question in QUESTIONS[:4]:
                _ask(engine, question, "alice")
            _ask(engine, "Hello, I am Bob.", "bob")
            result, tokens = _ask(engine, "What did we talk about?", "alice")
            total, message = _prompt_tokens(engine)
            measured[cache_mb] = (tokens, total, message, result.ttft_s)
            if cache_mb:
                assert engine.backend.session_restores >= 1
        finally:
            engine.stop()
    cached, uncached = measured[64], measured[0]
    assert cached[0] <= cached[2] + 24, measured
    assert uncached[0] > uncached[1] / 2, measured
    assert cached[0] * 3 < uncached[0], measured


def test_prefill_evaluates_the_prompt_without_answering_or_storing():
    engine = _engine()
    emitted = []
    engine.add_token_observer(lambda *args: emitted.append(args))
    try:
        for question in QUESTIONS[:3]:
            _ask(engine, question, "talk")
        history = engine.sessions.history("talk")
        seen = len(emitted)
        request = ChatRequest(text="And what about dogs?", session_id="talk", max_tokens=24)
        assert engine.prefill(request)
        deadline = time.monotonic() + 120
        while engine.stats.prefills == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats.prefills == 1
        assert engine.backend.prompt_tokens_evaluated > 10, "the new message was evaluated"
        assert engine.sessions.history("talk") == history, "a prefill stores nothing"
        assert len(emitted) == seen, "a prefill emits nothing"
        _result, tokens = _ask(engine, request.text, "talk")
        assert tokens <= 1, f"the prefilled prompt was evaluated again ({tokens} tokens)"
    finally:
        engine.stop()


def test_a_newer_prefill_replaces_an_older_pending_one():
    engine = _engine()
    try:
        started = threading.Event()
        running = engine.submit(
            ChatRequest(text="Write a long story about a ship.", session_id="p", max_tokens=120),
            listener=lambda *_: started.set(),
        )
        assert started.wait(60)  # the engine is busy: both prefills wait
        assert engine.prefill(ChatRequest(text="I like", session_id="p", max_tokens=8))
        assert engine.prefill(ChatRequest(text="I like trains.", session_id="p", max_tokens=8))
        assert running.wait(120).success
        deadline = time.monotonic() + 120
        while engine.stats.prefills == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats.prefills == 1 and engine.stats.prefills_preempted == 0
        assert engine.backend.prompts[-1][-1]["content"] == "I like trains."
    finally:
        engine.stop()


def test_a_request_preempts_a_running_prefill():
    engine = _engine()
    try:
        _ask(engine, QUESTIONS[0], "p")
        # No trailing space: the request's text is stripped before it reaches the prompt.
        long_text = (
            "Please listen carefully. " + "I like trains and boats and planes. " * 80
        ).strip()
        assert engine.prefill(ChatRequest(text=long_text, session_id="p", max_tokens=8))
        backend, deadline = engine.backend, time.monotonic() + 30
        while time.monotonic() < deadline and not (
            backend.prompts[-1][-1]["content"] == long_text
            and backend.prompt_tokens_evaluated >= 32
        ):
            time.sleep(0.002)
        result = engine.submit(
            ChatRequest(text="Quick: say hi.", session_id="other", max_tokens=8)
        ).wait(60)
        assert result.success
        assert engine.stats.prefills_preempted == 1 and engine.stats.prefills == 0
    finally:
        engine.stop()


class SummaryHookStore(InMemorySessionStore):
    """The real in-memory session store, calling `on_summary(session)` on the engine thread
    right after a summary is stored: a test submits its next question there, so that it is
    waiting before the engine can do any idle work (a person who answers at once)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_summary = None
        self.summaries: list[str] = []

    def set_summary(self, session_id: str, text: str, up_to_turn_id: int) -> None:
        super().set_summary(session_id, text, up_to_turn_id)
        self.summaries.append(text)
        hook, self.on_summary = self.on_summary, None
        if hook is not None:
            hook(session_id)


def _summarising_engine() -> ChatEngine:
    # Window 4 turns, folded 4 at a time: the third question's answer makes the first two
    # questions and answers due for the summary, and the next two questions still fit the
    # window under the previous summary.
    backend = RecordingBackend(MODEL, n_ctx=2048, n_threads=2, session_cache_bytes=64 << 20)
    engine = ChatEngine(
        backend,
        PERSONAS,
        SummaryHookStore(window_turns=4),
        EngineSettings(temperature=0.0, seed=3, summary_batch=4, summary_max_tokens=40),
    )
    engine.start()
    _wait_ready(engine)
    return engine


def _answer_prompts(engine: ChatEngine) -> list[list[dict]]:
    return [p for p in engine.backend.prompts if p[0]["content"] != SUMMARY_INSTRUCTIONS]


def _submit_when_summarised(engine: ChatEngine, text: str, session: str) -> list:
    submitted = []
    engine.sessions.on_summary = lambda _sid: submitted.append(
        engine.submit(ChatRequest(text=text, session_id=session, max_tokens=16))
    )
    return submitted


def test_a_new_summary_reaches_the_prompt_only_once_its_prefix_was_evaluated():
    """A question that arrives right after a summary was written (before any idle time)
    is asked with the previous prefix, which the KV cache holds, not with the new summary;
    the new prefix is evaluated in idle time under a side name, and the question after that
    gets the new summary, again evaluating only its own message."""
    engine = _summarising_engine()
    try:
        for question in QUESTIONS[:2]:
            _ask(engine, question, "s", max_tokens=16)
        submitted = _submit_when_summarised(engine, QUESTIONS[3], "s")
        _ask(engine, QUESTIONS[2], "s", max_tokens=16)  # the first two turns are now due
        before = _answer_prompts(engine)[-1][0]["content"]
        deadline = time.monotonic() + 120
        while not submitted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert submitted, "no summary was written"
        result = submitted[0].wait(120)
        assert result is not None and result.success, result
        tokens, (_total, message) = engine.stats.last_prompt_tokens, _prompt_tokens(engine)
        prompt = _answer_prompts(engine)[-1]
        assert prompt[0]["content"] == before, "the prompt kept its previous summary"
        assert QUESTIONS[0] in [m["content"] for m in prompt], "and the folded turns"
        assert tokens <= message + 24, (tokens, message)
        deadline = time.monotonic() + 120
        while engine.stats.summary_switches == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.stats.summary_switches == 1 and engine.stats.summary_switches_forced == 0
        _result, tokens = _ask(engine, QUESTIONS[4], "s", max_tokens=16)
        _total, message = _prompt_tokens(engine)
        prompt = _answer_prompts(engine)[-1]
        summary = engine.sessions.summary("s")[0]
        assert prompt[0]["content"].endswith(f"Earlier in this conversation: {summary}")
        assert QUESTIONS[0] not in [m["content"] for m in prompt]
        assert tokens <= message + 24, (tokens, message)
    finally:
        engine.stop()


def test_a_summary_switch_is_forced_when_the_previous_window_would_slide():
    """Questions arrive back to back, leaving no idle time for the new prefix: the prompt
    keeps the previous summary while the window still holds the turns, and switches to the
    new summary (forced) when keeping it would drop turns from the prompt."""
    engine = _summarising_engine()
    try:
        for question in QUESTIONS[:2]:
            _ask(engine, question, "s", max_tokens=16)
        chain: list = []

        def next_question(_job) -> None:  # on the engine thread, as the answer finishes
            if len(chain) < 3:
                text = QUESTIONS[3 + len(chain)]
                job = engine.submit(ChatRequest(text=text, session_id="s", max_tokens=16))
                chain.append(job)
                job.add_done_callback(next_question)

        engine.sessions.on_summary = lambda _sid: next_question(None)
        _ask(engine, QUESTIONS[2], "s", max_tokens=16)
        deadline = time.monotonic() + 120
        while len(chain) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(chain) == 3, "no summary was written"
        for job in chain:
            result = job.wait(120)
            assert result is not None and result.success, result
        prompts = _answer_prompts(engine)[-3:]
        summary = engine.sessions.summaries[0]
        # 6 and then 8 turns still fit the previous summary's window (4 + a block of 4)...
        for prompt in prompts[:2]:
            assert "Earlier in this conversation" not in prompt[0]["content"]
            assert prompt[1]["content"] == QUESTIONS[0]
        # ...10 do not: the window would slide, so the new summary comes in with it.
        assert prompts[2][0]["content"].endswith(f"Earlier in this conversation: {summary}")
        assert QUESTIONS[0] not in [m["content"] for m in prompts[2]]
        assert engine.stats.summary_switches_forced == 1
    finally:
        engine.stop()


def test_a_waiting_request_aborts_a_background_decode_and_the_prefix_stays_valid():
    """On the CPU a background prompt evaluation runs in n_batch chunks; setting the engine's
    Interrupt aborts the chunk being decoded (llama.cpp's abort callback) instead of waiting
    for it. The chunk is dropped from the KV cache, the chunks before it are kept: resuming
    evaluates only the rest, and the answer is the same as without the interruption."""
    from smolfusion_ros.backends.llm.base import GenerationSettings, Interrupt

    messages = [
        {"role": "system", "content": "You are a helpful robot."},
        {"role": "user", "content": "I like trains and boats and planes. " * 50},
    ]
    greedy = GenerationSettings(max_tokens=8, temperature=0.0, seed=0)
    plain = RecordingBackend(MODEL, n_ctx=2048, n_threads=2, n_batch=256)
    plain.load()
    try:
        expected = "".join(plain.stream_chat(messages, greedy, threading.Event()))
        total = plain.prompt_tokens_evaluated
    finally:
        plain.close()
    backend = RecordingBackend(MODEL, n_ctx=2048, n_threads=2, n_batch=256)
    backend.load()
    try:
        assert backend.abortable and backend.background_chunk == 256
        interrupt = Interrupt()

        def interrupt_during_the_second_chunk() -> None:
            deadline = time.monotonic() + 60
            while backend.tokens_evaluated_total < 256 and time.monotonic() < deadline:
                time.sleep(0.0005)
            interrupt.set()

        thread = threading.Thread(target=interrupt_during_the_second_chunk)
        thread.start()
        first = backend.prefill(messages, GenerationSettings(preemptible=True), interrupt)
        thread.join()
        assert backend.aborts == 1, "the second chunk was aborted, not finished"
        assert first == 256, "only the first chunk was kept"
        interrupt.clear()
        rest = backend.prefill(messages, GenerationSettings(preemptible=True), interrupt)
        assert first + rest == total, (first, rest, total)
        answer = "".join(backend.stream_chat(messages, greedy, threading.Event()))
        assert backend.prompt_tokens_evaluated <= 1
        assert answer == expected
    finally:
        backend.close()


def test_a_preempted_background_generation_goes_on_where_it_stopped():
    """A summary preempted by a request (in another session) is taken up again where it
    stopped, with its state restored: the same greedy text as without the interruption."""
    from smolfusion_ros.backends.llm.base import GenerationSettings, Interrupt

    messages = [
        {"role": "system", "content": "You write short stories."},
        {"role": "user", "content": "Write a story about a lighthouse keeper and a cat."},
    ]
    # Greedy without a repeat penalty: the penalty's token history starts afresh in the
    # resumed call, which may pick another (equally valid) word there.
    greedy = GenerationSettings(
        max_tokens=40, temperature=0.0, seed=0, repeat_penalty=1.0, preemptible=True
    )
    backend = RecordingBackend(MODEL, n_ctx=2048, n_threads=2, session_cache_bytes=64 << 20)
    backend.load()
    try:
        backend.use_session("story")
        expected = "".join(backend.stream_chat(messages, greedy, Interrupt()))
        backend.use_session("other")  # a fresh context for the interrupted run
        backend.use_session("story2")
        interrupt, first = Interrupt(), []
        for delta in backend.stream_chat(messages, greedy, interrupt):
            first.append(delta)
            if len(first) == 10:
                interrupt.set()  # a request arrived: stops before the next token
        assert len(first) == 10 and backend.resumes == 0
        backend.use_session("other")  # the request's answer, in its own session
        answer = GenerationSettings(max_tokens=8, temperature=0.0, seed=0)
        hello = [{"role": "user", "content": "Hi"}]
        assert "".join(backend.stream_chat(hello, answer, Interrupt()))
        backend.use_session("story2")
        again = "".join(backend.stream_chat(messages, greedy, Interrupt()))
        assert backend.resumes == 1
        assert backend.prompt_tokens_evaluated <= 1, "its state was restored, not re-evaluated"
        assert again.startswith("".join(first).strip()[:20])
        assert again.strip() == expected.strip()
    finally:
        backend.close()
