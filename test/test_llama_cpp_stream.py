"""The shared llama.cpp token loop (backends/llama_cpp_stream.py) on the real SmolLM2 GGUF.

Every test streams from a real `llama_cpp.Llama`. Where a test must act at an exact point
inside a decode step (cancel set by another thread while llama.cpp evaluates, an exception
from inside the evaluation), it wraps the instance's `eval` the way LlamaCppChatBackend
does; the evaluation itself is still llama.cpp's.
"""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
from test_chat_engine import MODEL

from smolfusion_ros.backends.llama_cpp_stream import TokenStream, chunk_text
from smolfusion_ros.backends.llm.base import GenerationSettings
from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend

pytestmark = pytest.mark.model

MESSAGES = [
    {"role": "system", "content": "You are a helpful robot."},
    {"role": "user", "content": "Tell me one fact about whales."},
]
PROMPT = "The three largest planets of the solar system are"
# Greedy and without repeat penalty: the text depends only on the model and the tokens.
GREEDY = dict(temperature=0.0, top_k=40, top_p=0.9, repeat_penalty=1.0, seed=3)
N_BATCH = 256  # the back end's default: the same evaluation shapes in both paths


@pytest.fixture(scope="module")
def llm():
    from llama_cpp import Llama

    model = Llama(
        model_path=str(MODEL), n_ctx=1024, n_threads=2, n_batch=N_BATCH, verbose=False, seed=0
    )
    yield model
    model.close()


def _stream(llm, kind: str, max_tokens: int, **extra):
    if kind == "chat":
        return llm.create_chat_completion(
            messages=MESSAGES, max_tokens=max_tokens, stream=True, **GREEDY, **extra
        )
    return llm.create_completion(PROMPT, max_tokens=max_tokens, stream=True, **GREEDY, **extra)


def _reference(llm, kind: str, max_tokens: int) -> str:
    """llama-cpp-python's own non-streamed answer, from an empty KV cache."""
    llm.reset()
    if kind == "chat":
        done = llm.create_chat_completion(messages=MESSAGES, max_tokens=max_tokens, **GREEDY)
        return done["choices"][0]["message"]["content"]
    return llm.create_completion(PROMPT, max_tokens=max_tokens, **GREEDY)["choices"][0]["text"]


def _kv_positions(llm) -> int:
    """Positions sequence 0 holds in llama.cpp's KV cache (what n_tokens must agree with)."""
    import llama_cpp

    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    return llama_cpp.llama_memory_seq_pos_max(memory, 0) + 1


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_streamed_text_equals_the_non_streamed_answer_under_greedy_decoding(llm, kind):
    reference = _reference(llm, kind, 32)
    llm.reset()
    tokens = TokenStream(_stream(llm, kind, 32), threading.Event())
    pieces = list(tokens)
    assert reference.strip() and "".join(pieces) == reference
    assert tokens.pieces == len(pieces) and not tokens.cancelled
    assert tokens.finish_reason in ("stop", "length")


def test_chunk_text_reads_completion_and_chat_chunks():
    assert chunk_text({"choices": [{"text": " whale", "finish_reason": None}]}) == " whale"
    assert chunk_text({"choices": [{"delta": {"content": " whale"}}]}) == " whale"
    assert chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert chunk_text({"choices": [{"delta": {}, "finish_reason": "stop"}]}) == ""


def test_cancel_set_by_the_caller_costs_no_further_decode_step(llm):
    """The caller sets cancel after the third piece: no fourth piece, no further evaluation,
    the stream is closed and the KV cache holds exactly the tokens n_tokens says."""
    llm.reset()
    cancel = threading.Event()
    stream = _stream(llm, "chat", 200)
    tokens = TokenStream(stream, cancel)
    seen, evaluated_at_cancel = [], None
    for piece in tokens:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()
            evaluated_at_cancel = llm.n_tokens
    assert len(seen) == 3 and tokens.cancelled
    assert llm.n_tokens == evaluated_at_cancel == _kv_positions(llm)
    assert inspect.getgeneratorstate(stream) == inspect.GEN_CLOSED
    # The state left behind is a valid prefix: the next answer is the one from an empty cache.
    again = "".join(TokenStream(_stream(llm, "chat", 32), threading.Event()))
    assert again == _reference(llm, "chat", 32)


def test_cancel_set_by_another_thread_during_a_decode_step_drops_its_token(llm):
    """While llama.cpp evaluates the fourth answer token, another thread sets cancel: that
    step completes, the token it leads to is not yielded, and nothing more is evaluated."""
    llm.reset()
    cancel = threading.Event()
    evaluate = llm.eval
    calls = []

    def eval_with_a_cancel_during_step_four(tokens) -> None:
        calls.append(len(tokens))
        if len(calls) == 4:  # prompt, then answer tokens 1, 2, 3: this one evaluates token 3
            setter = threading.Thread(target=cancel.set)
            setter.start()
            evaluate(tokens)
            setter.join(30)
        else:
            evaluate(tokens)

    llm.eval = eval_with_a_cancel_during_step_four
    try:
        stream = _stream(llm, "completion", 200)
        tokens = TokenStream(stream, cancel)
        seen = list(tokens)
    finally:
        del llm.eval
    assert tokens.cancelled and len(calls) == 4
    assert len(seen) == 3  # answer tokens 1-3; token 4, sampled after the cancel, is dropped
    assert llm.n_tokens == _kv_positions(llm)
    assert inspect.getgeneratorstate(stream) == inspect.GEN_CLOSED


class _Stop(Exception):
    pass


def test_an_interrupting_exception_from_the_evaluation_ends_the_stream_as_cancelled(llm):
    """The LLM back end's preemption: its eval raises between prompt chunks or decode steps."""
    llm.reset()
    evaluate = llm.eval
    calls = []

    def eval_stopping_at_step_three(tokens) -> None:
        calls.append(len(tokens))
        if len(calls) == 3:
            raise _Stop
        evaluate(tokens)

    llm.eval = eval_stopping_at_step_three
    try:
        tokens = TokenStream(
            _stream(llm, "completion", 200), threading.Event(), interrupted_by=(_Stop,)
        )
        seen = list(tokens)
        assert tokens.cancelled and len(seen) == 2
        # Any other exception is not a cancel: it reaches the caller, the stream is closed.
        calls.clear()
        llm.reset()
        stream = _stream(llm, "completion", 200)
        with pytest.raises(_Stop):
            list(TokenStream(stream, threading.Event()))
        assert inspect.getgeneratorstate(stream) == inspect.GEN_CLOSED
    finally:
        del llm.eval
    assert llm.n_tokens == _kv_positions(llm)
    assert "".join(TokenStream(_stream(llm, "completion", 24), threading.Event())) == (
        _reference(llm, "completion", 24)
    )


def test_on_first_chunk_runs_once_when_the_prompt_is_evaluated(llm):
    llm.reset()
    prompt_tokens = len(llm.tokenize(PROMPT.encode("utf-8")))
    seen_at = []
    tokens = TokenStream(
        _stream(llm, "completion", 8),
        threading.Event(),
        on_first_chunk=lambda: seen_at.append(llm.n_tokens),
    )
    pieces = list(tokens)
    assert seen_at == [prompt_tokens] and pieces and tokens.finish_reason == "length"


def test_caller_leaving_early_closes_the_stream(llm):
    """A caller that stops iterating (its own error, or leaving the loop) with `with` or
    close(): llama-cpp-python's generator is closed at once, not when garbage collected."""
    llm.reset()
    stream = _stream(llm, "chat", 200)
    with pytest.raises(KeyError), TokenStream(stream, threading.Event()) as tokens:
        for _piece in tokens:
            raise KeyError("the caller's own failure")
    assert inspect.getgeneratorstate(stream) == inspect.GEN_CLOSED
    assert llm.n_tokens == _kv_positions(llm)


# --- the back ends through the shared loop ------------------------------------------------------


def test_llm_backend_answer_equals_llama_cpp_non_streamed_answer(llm):
    backend = LlamaCppChatBackend(MODEL, n_ctx=1024, n_threads=2, n_batch=N_BATCH)
    backend.load()
    try:
        settings = GenerationSettings(max_tokens=32, **GREEDY)
        answer = "".join(backend.stream_chat(MESSAGES, settings, threading.Event()))
        assert answer == _reference(llm, "chat", 32)
        assert backend.prompt_tokens_evaluated > 10  # the whole prompt, counted until token 1
        # Cancelled after three pieces, then asked again: the same answer (clean state).
        cancel = threading.Event()
        seen = []
        for piece in backend.stream_chat(MESSAGES, settings, cancel):
            seen.append(piece)
            if len(seen) == 3:
                cancel.set()
        assert len(seen) == 3
        assert "".join(backend.stream_chat(MESSAGES, settings, threading.Event())) == answer
    finally:
        backend.close()


def test_vlm_backend_answer_equals_llama_cpp_non_streamed_answer():
    """Tiny RANDOMLY INITIALISED stand-in VLM (test/tiny_vlm.py; no real VLM weights here): the
    describe() text through the shared loop equals llama-cpp-python's non-streamed answer."""
    for module in ("torch", "transformers", "sentencepiece"):
        pytest.importorskip(module, reason="requirements/vlm-test.txt is not installed")
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler
    from tiny_vlm import build_tiny_vlm

    from smolfusion_ros.backends.vlm.common import image_data_uri, vision_messages
    from smolfusion_ros.backends.vlm.llama_cpp_vlm import LlamaCppVisionBackend

    tiny = build_tiny_vlm()
    image = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    prompt = "What do you see?"
    backend = LlamaCppVisionBackend(
        tiny.model_gguf, tiny.mmproj_gguf, n_ctx=1024, n_threads=2, seed=0
    )
    backend.load()
    try:
        pieces = []
        result = backend.describe(image, prompt, threading.Event(), 24, on_token=pieces.append)
    finally:
        backend.close()
    reference_llm = Llama(
        model_path=str(tiny.model_gguf),
        chat_handler=MTMDChatHandler(
            clip_model_path=str(tiny.mmproj_gguf), verbose=False, use_gpu=False
        ),
        n_ctx=1024,
        n_threads=2,
        n_threads_batch=2,
        n_batch=512,
        verbose=False,
    )
    try:
        done = reference_llm.create_chat_completion(
            messages=vision_messages(image_data_uri(image), prompt),
            max_tokens=24,
            temperature=0.0,
            top_p=0.95,
            top_k=40,
            repeat_penalty=1.1,
            seed=0,
        )
    finally:
        reference_llm.close()
    reference = done["choices"][0]["message"]["content"]
    assert reference.strip() and result.text == reference.strip()
    assert "".join(pieces) == reference and result.details["tokens"] == len(pieces)
