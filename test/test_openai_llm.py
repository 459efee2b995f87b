"""llm.backend openai against a real llama-server (llama.cpp's serving engine) on SmolLM2.

Failures a real server cannot be made to produce on demand (a stall before the first byte,
garbage, a stream cut after two tokens) come from small stand-in HTTP servers on loopback,
named so below. The robot-side node (fusion_node over DDS) is in test_fleet.py.
"""

from __future__ import annotations

import http.server
import json
import select
import threading
import time

import pytest
from llama_server import LlamaServer, free_port, llama_server_binary, smollm2_path

from smolfusion_ros.backends.llm.base import GenerationSettings, LLMBackendError
from smolfusion_ros.backends.llm.openai_backend import OpenAIChatBackend
from smolfusion_ros.backends.registry import create_llm_backend

# The first test that starts a server may build llama-server (about 15 minutes on 2 idle cores,
# once; cached afterwards): pytest-timeout counts the fixture's setup against that test.
BUILD_TIMEOUT_S = 3600
pytestmark = [pytest.mark.model, pytest.mark.timeout(BUILD_TIMEOUT_S)]

GREEDY = GenerationSettings(max_tokens=24, temperature=0.0, seed=1)
QUESTION = [
    {"role": "system", "content": "You are a friendly robot."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def binary():
    return llama_server_binary()


@pytest.fixture(scope="module")
def server(binary):
    # One slot: a generation the client abandoned would hold it and delay the next request.
    srv = LlamaServer(binary, smollm2_path(), parallel=1, ctx_per_slot=2048, threads=2)
    srv.start()
    yield srv
    srv.stop()


def _answer(backend: OpenAIChatBackend, settings=GREEDY, messages=QUESTION, cancel=None) -> str:
    return "".join(backend.stream_chat(messages, settings, cancel or threading.Event()))


def test_streams_an_answer_from_llama_server_and_counts_tokens_with_its_tokenizer(server):
    backend = create_llm_backend("openai", base_url=server.base_url, model_name="", n_ctx=2048)
    backend.load()
    assert backend.model_name == "smollm2-135m-instruct"  # from GET /v1/models (--alias)
    assert backend.healthy and backend.context_size == 2048
    pieces = list(backend.stream_chat(QUESTION, GREEDY, threading.Event()))
    assert len(pieces) > 3, "the answer should arrive token by token"
    assert "paris" in "".join(pieces).lower()
    assert "".join(pieces) == _answer(backend), "greedy answers repeat"
    # The same tokenizer as in-process llama.cpp: /tokenize counts what llama.cpp counts.
    from llama_cpp import Llama

    local = Llama(str(smollm2_path()), n_ctx=256, vocab_only=True, verbose=False)
    for text in ("Hello there, how are you?", "Die Katze schläft. 猫が寝ている。 🤖"):
        expected = len(local.tokenize(text.encode(), add_bos=False, special=True))
        assert backend.count_tokens(text) == expected
    assert backend.prompt_tokens_evaluated >= 0
    backend.close()


def test_cancel_mid_answer_frees_the_server_at_once(server):
    backend = OpenAIChatBackend(server.base_url, n_ctx=2048)
    backend.load()
    cancel = threading.Event()
    pieces: list[str] = []
    long = GenerationSettings(max_tokens=1000, temperature=0.7, seed=3)
    story = [{"role": "user", "content": "Write a very long story about a robot who paints."}]
    for piece in backend.stream_chat(story, long, cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
            cancelled_at = time.monotonic()
    ended = time.monotonic() - cancelled_at
    assert len(pieces) == 3 and ended < 0.05
    # The server has one slot: had it gone on generating the 1000 tokens, this would wait.
    start = time.monotonic()
    first = next(iter(backend.stream_chat(QUESTION, GREEDY, threading.Event())))
    assert first and time.monotonic() - start < 3.0
    backend.close()


def test_server_down_is_one_clear_line_after_bounded_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIChatBackend(url, retries=2, backoff_s=0.1)
    backend.load()  # a robot boots before its server: not a load failure...
    assert not backend.healthy  # ...but a degraded health for /diagnostics
    assert "connection refused" in backend.health()["llm_server_last_error"]
    start = time.monotonic()
    with pytest.raises(LLMBackendError) as info:
        _answer(backend)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "\n" not in message and url in message and "connection refused" in message
    assert "(3 attempts)" in message and backend.retried == 2
    assert 0.3 - 0.05 <= elapsed < 2.0  # backoff 0.1 s + 0.2 s, then it gives up


def test_request_sent_while_the_server_starts_is_answered_after_retries(binary):
    srv = LlamaServer(binary, smollm2_path(), parallel=1, ctx_per_slot=1024, threads=2)
    backend = OpenAIChatBackend(srv.base_url, retries=8, backoff_s=0.25)
    backend.load()
    assert not backend.healthy
    try:
        timer = threading.Timer(0.3, srv.start, kwargs={"wait": False})
        timer.start()
        answer = _answer(backend)  # refused, then 503 while loading, then answered
        timer.join()
        assert "paris" in answer.lower()
        assert backend.retried >= 1 and backend.healthy
        assert backend.model_name == "smollm2-135m-instruct"  # learned once it answered
    finally:
        srv.stop()


def test_api_key_is_sent_as_a_bearer_token(binary, monkeypatch):
    srv = LlamaServer(
        binary, smollm2_path(), parallel=1, ctx_per_slot=1024, extra=("--api-key", "s3cret")
    )
    srv.start()
    try:
        monkeypatch.delenv("SMOLFUSION_TEST_KEY", raising=False)
        anonymous = OpenAIChatBackend(srv.base_url, api_key_env="SMOLFUSION_TEST_KEY")
        with pytest.raises(LLMBackendError, match="HTTP 401") as info:
            _answer(anonymous)
        assert "attempts" not in str(info.value), "a 401 is not retried"
        monkeypatch.setenv("SMOLFUSION_TEST_KEY", "s3cret")
        keyed = OpenAIChatBackend(srv.base_url, api_key_env="SMOLFUSION_TEST_KEY")
        keyed.load()
        assert "paris" in _answer(keyed).lower()
    finally:
        srv.stop()


# --- stand-in servers for failures a real server does not produce on demand -----------------


class _StandIn(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions according to the server's `mode`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"data": [{"id": "stand-in"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        server = self.server
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server.requests += 1
        mode = server.mode
        if mode == "html":
            body = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        if mode == "garbage":
            self.wfile.write(b"data: {this is not json\n\n")
        elif mode == "two_then_cut":
            for word in ("Hello", " there"):
                event = {"choices": [{"delta": {"content": word}}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            # the connection closes here, without [DONE]: the server died mid-answer
        elif mode == "stall":
            self.wfile.flush()
            # Evaluating a long prompt: nothing to send. Watch for the client hanging up.
            start = time.monotonic()
            while time.monotonic() - start < 10:
                readable, _, _ = select.select([self.connection], [], [], 0.01)
                if readable and not self.connection.recv(1):
                    server.closed_at = time.monotonic()
                    return


@pytest.fixture
def stand_in():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.mode, server.requests, server.closed_at = "", 0, None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _stand_in_backend(server, **kwargs) -> OpenAIChatBackend:
    backend = OpenAIChatBackend(
        f"http://127.0.0.1:{server.server_address[1]}/v1", backoff_s=0.05, **kwargs
    )
    backend.load()
    return backend


def test_cancel_closes_the_connection_while_the_stalling_stand_in_has_sent_nothing(stand_in):
    stand_in.mode = "stall"
    backend = _stand_in_backend(stand_in)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    assert _answer(backend, cancel=cancel) == ""
    returned = time.monotonic()
    assert 0.28 <= returned - start < 0.4, "cancel must not wait for a token"
    assert wait_until(lambda: stand_in.closed_at is not None, 2), "the connection stayed open"
    assert stand_in.closed_at - start < 0.45
    assert backend.healthy, "a cancelled request is not a server failure"


def test_garbage_from_the_stand_in_is_a_clear_error_and_not_retried(stand_in):
    stand_in.mode = "garbage"
    backend = _stand_in_backend(stand_in, retries=3)
    with pytest.raises(LLMBackendError, match=r"sent malformed JSON in its stream: '\{this"):
        _answer(backend)
    assert stand_in.requests == 1 and not backend.healthy
    stand_in.mode = "html"  # an HTTP proxy's error page: retried (502), then reported
    stand_in.requests = 0
    with pytest.raises(LLMBackendError, match="HTTP 502 Bad Gateway: <html>.*4 attempts"):
        _answer(backend)
    assert stand_in.requests == 4


def test_a_stream_cut_after_tokens_is_an_error_and_never_retried(stand_in):
    stand_in.mode = "two_then_cut"
    backend = _stand_in_backend(stand_in, retries=3)
    pieces: list[str] = []
    with pytest.raises(LLMBackendError, match=r"without \[DONE\].*\(after 2 tokens\)"):
        for piece in backend.stream_chat(QUESTION, GREEDY, threading.Event()):
            pieces.append(piece)
    assert pieces == ["Hello", " there"]
    assert stand_in.requests == 1, "text the person already heard must not be generated twice"


def test_registry_and_bad_urls():
    with pytest.raises(ValueError, match="llm.base_url"):
        create_llm_backend("openai", base_url="", model_path=None)
    backend = create_llm_backend("openai", base_url="server:8080/v1")
    with pytest.raises(LLMBackendError, match="must start with http"):
        backend.load()
    # llama_cpp ignores the remote options the node passes to every back end.
    local = create_llm_backend(
        "llama_cpp", model_path=smollm2_path(), base_url="http://x/v1", retries=1
    )
    assert local.name == "llama_cpp"


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
