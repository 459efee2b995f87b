"""VLM back ends (llama.cpp + mmproj, transformers, OpenAI-compatible HTTP) on a tiny stand-in.

No real VLM weights are reachable here, so every model test runs on a tiny RANDOMLY
INITIALISED SmolVLM-architecture model built by test/tiny_vlm.py (transformers format, and the
same model converted to GGUF + mmproj by llama.cpp's own converter). Its answers are
gibberish: these tests prove the code path (image encoding, prompts, projector, streaming,
cancellation, threading, HTTP), not answer quality.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from smolfusion_ros.backends.registry import create_vision_backend, vision_backend_names
from smolfusion_ros.backends.vlm.base import VisionBackendError
from smolfusion_ros.backends.vlm.common import image_data_uri
from smolfusion_ros.backends.vlm.llama_cpp_vlm import LlamaCppVisionBackend
from smolfusion_ros.backends.vlm.openai_vlm import OpenAIVisionBackend
from smolfusion_ros.backends.vlm.transformers_vlm import TransformersVisionBackend

PROMPT = "What do you see?"


def _image(seed: int, shape=(48, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cancel_after(cancel: threading.Event, n: int):
    seen = []

    def on_token(piece: str) -> None:
        seen.append(piece)
        if len(seen) >= n:
            cancel.set()

    return on_token


@pytest.fixture(scope="session")
def tiny_vlm():
    """The tiny random stand-in model (built once, cached on disk by the builder's hash)."""
    for module in ("torch", "transformers", "sentencepiece"):
        pytest.importorskip(module, reason="requirements/vlm-test.txt is not installed")
    from tiny_vlm import build_tiny_vlm

    start = time.monotonic()
    built = build_tiny_vlm()
    print(f"\ntiny random VLM ready in {time.monotonic() - start:.1f} s: {built.model_gguf.parent}")
    return built


# --- no model needed ---------------------------------------------------------------------------


def test_registry_lists_the_vlm_back_ends():
    names = vision_backend_names()
    for name in ("llama_cpp_vlm", "transformers_vlm", "openai_vlm"):
        assert name in names
    backend = create_vision_backend("openai_vlm", base_url="http://127.0.0.1:1/v1")
    assert backend.kind == "vlm" and backend.name == "openai_vlm"


def test_catalogue_documents_smolvlm_gguf_and_mmproj():
    from smolfusion_ros.catalogue import load_catalogue

    catalogue = load_catalogue(Path(__file__).resolve().parent.parent / "models/catalogue.yaml")
    for model_id in ("smolvlm-256m-instruct", "smolvlm-500m-instruct"):
        entry = catalogue[model_id]
        assert entry.kind == "vlm" and entry.backend == "llama_cpp_vlm"
        assert entry.licence == "Apache-2.0" and "ggml-org" in entry.download
        assert entry.source["type"] == "path" and entry.source["path"].endswith("Q8_0.gguf")
        assert entry.extra["mmproj"]["file"].startswith("mmproj-")


def test_image_data_uri_round_trips_png():
    import base64

    import cv2

    image = _image(1)
    uri = image_data_uri(image, "png")
    assert uri.startswith("data:image/png;base64,")
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",")[1]), np.uint8), 1)
    assert np.array_equal(decoded[:, :, ::-1], image)
    assert image_data_uri(image, "jpeg").startswith("data:image/jpeg;base64,")
    with pytest.raises(VisionBackendError, match="HxWx3"):
        image_data_uri(np.zeros((4, 4), np.uint8))


def test_llama_cpp_vlm_missing_mmproj_is_one_clear_error(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 60)
    missing = tmp_path / "mmproj-missing.gguf"
    with pytest.raises(VisionBackendError) as info:
        LlamaCppVisionBackend(model, missing).load()
    message = str(info.value)
    assert str(missing) in message and "mmproj_path" in message
    with pytest.raises(VisionBackendError, match="not set"):
        LlamaCppVisionBackend(model).load()
    with pytest.raises(VisionBackendError, match="does not exist"):
        LlamaCppVisionBackend(tmp_path / "nope.gguf", missing).load()


def test_transformers_vlm_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(VisionBackendError, match="config.json"):
        TransformersVisionBackend(tmp_path / "SmolVLM-256M-Instruct").load()


# --- llama.cpp on the converted tiny random model ------------------------------------------------


@pytest.fixture(scope="module")
def llama_vlm(tiny_vlm):
    backend = LlamaCppVisionBackend(
        tiny_vlm.model_gguf, tiny_vlm.mmproj_gguf, n_ctx=1024, n_threads=2, seed=0
    )
    backend.load()
    yield backend
    backend.close()


@pytest.mark.model
def test_llama_cpp_vlm_tiny_random_model_describes_an_image(llama_vlm):
    """Tiny random stand-in: proves the GGUF + mmproj code path, not answer quality."""
    pieces: list[str] = []
    result = llama_vlm.describe(_image(1), PROMPT, threading.Event(), 24, on_token=pieces.append)
    assert result.kind == "vlm" and result.model == "model.gguf"
    assert result.text and result.details["tokens"] == len(pieces) > 5
    assert result.details["cancelled"] is False and result.latency_s > 0


@pytest.mark.model
def test_llama_cpp_vlm_tiny_random_model_cancel_stops_mid_generation(llama_vlm):
    """Tiny random stand-in (never ends by itself): cancel stops it before the next token."""
    cancel = threading.Event()
    result = llama_vlm.describe(_image(2), PROMPT, cancel, 400, on_token=_cancel_after(cancel, 3))
    assert result.details["cancelled"] is True
    assert result.details["tokens"] == 3
    already = threading.Event()
    already.set()
    assert llama_vlm.describe(_image(2), PROMPT, already, 50).text == ""


@pytest.mark.model
def test_llama_cpp_vlm_tiny_random_model_sees_the_image(llama_vlm):
    """Tiny random stand-in, greedy with a fixed seed: the image changes the output."""
    first = llama_vlm.describe(_image(3), PROMPT, threading.Event(), 24).text
    again = llama_vlm.describe(_image(3), PROMPT, threading.Event(), 24).text
    other = llama_vlm.describe(_image(4), PROMPT, threading.Event(), 24).text
    assert first == again
    assert first != other


# --- transformers on the tiny random model --------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_vlm(tiny_vlm):
    backend = TransformersVisionBackend(tiny_vlm.hf_dir, seed=0, n_threads=2)
    backend.load()
    yield backend
    backend.close()


@pytest.mark.model
def test_transformers_vlm_tiny_random_model_describes_an_image(transformers_vlm):
    """Tiny random stand-in: proves the transformers code path, not answer quality."""
    pieces: list[str] = []
    result = transformers_vlm.describe(
        _image(1), PROMPT, threading.Event(), 24, on_token=pieces.append
    )
    assert result.kind == "vlm" and result.model == "hf"
    assert result.text and pieces and result.details["tokens"] == 24
    assert result.details["device"] in ("cpu", "cuda")
    assert result.details["cancelled"] is False


@pytest.mark.model
def test_transformers_vlm_tiny_random_model_cancel_stops_mid_generation(transformers_vlm):
    """Tiny random stand-in: cancel ends generate() through the stopping criterion."""
    cancel = threading.Event()
    start = time.monotonic()
    result = transformers_vlm.describe(
        _image(2), PROMPT, cancel, 2000, on_token=_cancel_after(cancel, 1)
    )
    assert result.details["cancelled"] is True
    assert result.details["tokens"] < 100
    assert time.monotonic() - start < 20


@pytest.mark.model
def test_transformers_vlm_tiny_random_model_sees_the_image(transformers_vlm):
    """Tiny random stand-in, greedy: the image changes the output, the same image does not."""
    first = transformers_vlm.describe(_image(3), PROMPT, threading.Event(), 24).text
    again = transformers_vlm.describe(_image(3), PROMPT, threading.Event(), 24).text
    other = transformers_vlm.describe(_image(4), PROMPT, threading.Event(), 24).text
    assert first == again
    assert first != other


# --- OpenAI-compatible HTTP: llama-cpp-python's own server on the tiny random model ---------------


@pytest.fixture(scope="module")
def llama_server(tiny_vlm, tmp_path_factory):
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] extras are not installed")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(tiny_vlm.model_gguf),
        "--clip_model_path",
        str(tiny_vlm.mmproj_gguf),
        "--chat_format",
        "mtmd",  # llama-cpp-python's generic multimodal handler (idefics3 projector)
        "--model_alias",
        "tiny-random-vlm",
        "--n_ctx",
        "1024",
        "--n_threads",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.model
def test_openai_vlm_against_llama_cpp_server_tiny_random_model(llama_server):
    """Real HTTP + SSE against llama-cpp-python's server on the tiny random stand-in."""
    backend = OpenAIVisionBackend(llama_server, seed=0, image_format="png", timeout_s=30)
    backend.load()
    assert backend.model_name == "tiny-random-vlm"  # taken from GET /models
    pieces: list[str] = []
    result = backend.describe(_image(1), PROMPT, threading.Event(), 20, on_token=pieces.append)
    assert result.kind == "vlm" and result.text
    assert result.details["tokens"] == len(pieces) > 5
    again = backend.describe(_image(1), PROMPT, threading.Event(), 20)
    other = backend.describe(_image(4), PROMPT, threading.Event(), 20)
    assert again.text == result.text and other.text != result.text
    plain = OpenAIVisionBackend(llama_server, seed=0, image_format="png", stream=False)
    plain.load()
    answer = plain.describe(_image(1), PROMPT, threading.Event(), 20)
    assert answer.text == result.text and answer.details["tokens"] == 20


@pytest.mark.model
def test_openai_vlm_cancel_closes_the_stream(llama_server):
    """Tiny random stand-in over HTTP: cancel stops reading and closes the connection."""
    backend = OpenAIVisionBackend(llama_server, seed=0, check_on_load=False)
    backend.load()
    cancel = threading.Event()
    result = backend.describe(_image(2), PROMPT, cancel, 400, on_token=_cancel_after(cancel, 3))
    assert result.details["cancelled"] is True and result.details["tokens"] == 3
    # The server is still fine afterwards.
    assert backend.describe(_image(2), PROMPT, threading.Event(), 5).text


def test_openai_vlm_connection_refused_is_a_clear_error():
    backend = OpenAIVisionBackend(f"http://127.0.0.1:{_free_port()}/v1", timeout_s=5)
    with pytest.raises(VisionBackendError, match="connection refused"):
        backend.load()
    with pytest.raises(VisionBackendError, match="connection refused"):
        backend.describe(_image(1), PROMPT, threading.Event(), 8)


class _BrokenServer(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/bad-json/"):
            self._send(200, b"{not json", "application/json")
        else:
            self._send(500, b'{"error": "model crashed"}', "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        if self.path.startswith("/bad-json/"):
            self._send(200, b'data: {"choices": [\n\n', "text/event-stream")
        else:
            self._send(500, b'{"error": "model crashed"}', "application/json")


@pytest.fixture
def broken_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_vlm_http_500_and_malformed_json_are_clear_errors(broken_server):
    backend = OpenAIVisionBackend(f"{broken_server}/v1", model="m", timeout_s=5)
    with pytest.raises(VisionBackendError, match="HTTP 500.*model crashed"):
        backend.load()
    with pytest.raises(VisionBackendError, match="HTTP 500"):
        backend.describe(_image(1), PROMPT, threading.Event(), 8)
    bad = OpenAIVisionBackend(f"{broken_server}/bad-json/v1", model="m", timeout_s=5)
    with pytest.raises(VisionBackendError, match="malformed JSON"):
        bad.load()
    with pytest.raises(VisionBackendError, match="malformed JSON"):
        bad.describe(_image(1), PROMPT, threading.Event(), 8)
