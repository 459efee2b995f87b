"""LLM back end for an OpenAI-compatible chat server: how a fleet of robots shares one model.

`POST {base_url}/chat/completions` with `stream: true`; each server-sent event carries one
token's text. The serving engine (vLLM on a GPU server, llama.cpp's `llama-server --parallel
N` on a CPU or Jetson) batches the requests of many robots; each robot keeps its own
conversation memory, persona and prompt and sends the whole prompt every turn.

Failure handling, for a robot that keeps running while the server comes and goes:
* load() checks the server (GET /models) but does not fail when it is unreachable: a robot
  may boot before its server. The back end then reports READY with a degraded health on
  /diagnostics, and every request tries the server again (retries with backoff).
* A request is retried (`retries` times, backoff doubling from `backoff_s`) only while no
  token has been emitted: a connection refused, a timeout, an HTTP 5xx/429, a stream that
  ended before its first token. After the first token an error ends the answer (repeating
  text the person already heard would be worse).
* Every failure is one LLMBackendError line naming the server; the chat engine turns it into
  success=false for that request only.
* cancel closes the HTTP stream at once, also while the server is still evaluating the prompt
  (openai_http's watcher), and the server stops generating for that connection.

Sessions (the protocol's use_session): the server owns the KV state. llama-server keeps each
slot's last prompt and, with `cache_prompt` (sent when `cache_prompt=True`), evaluates only
what follows the longest common prefix; it gives a request the slot whose cached prompt is
most similar, so a robot's next turn usually lands on its own previous prefix. Pinning a
session to a slot (id_slot) is not used: two robots pinned to one busy slot would queue
behind each other while other slots idle. There is no prefill hook (the engine then skips
speculative prefill): a remote prefill would spend a shared slot on a guess.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from smolfusion_ros.backends.llm.base import ChatMessage, GenerationSettings, LLMBackendError
from smolfusion_ros.backends.openai_http import OpenAIEndpoint, delta_text

# Characters per token for the estimate used when the server has no /tokenize (vLLM's and
# llama-server's exist; OpenAI's API has none). English text runs ~4 characters per token
# with SmolLM2's and Qwen's tokenizers; 3 over-counts, so a prompt that the estimate lets
# through fits the real context.
CHARS_PER_TOKEN_ESTIMATE = 3.0
# After /tokenize failed on the network, use the estimate for this long before trying again
# (count_tokens runs for every history turn; each must not wait for a dead server).
TOKENIZE_RETRY_S = 5.0
TOKEN_COUNT_CACHE = 2048
# Retry waits double from backoff_s up to this (a restarting server answers 503 for seconds).
MAX_BACKOFF_S = 2.0


class OpenAIChatBackend:
    """Chat completion through an OpenAI-compatible server, streamed, cancellable."""

    name = "openai"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080/v1",
        model: str = "",
        *,
        n_ctx: int = 2048,
        api_key: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        connect_timeout_s: float = 3.0,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.25,
        cache_prompt: bool = True,
        use_tokenize: bool = True,
    ) -> None:
        self._http = OpenAIEndpoint(
            base_url,
            what="LLM server",
            error_type=LLMBackendError,
            api_key=api_key,
            api_key_env=api_key_env,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=timeout_s,
        )
        self._model = model
        self._n_ctx = int(n_ctx)
        self.retries = max(0, int(retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self._cache_prompt = bool(cache_prompt)
        self._use_tokenize = bool(use_tokenize)
        self._tokenize_ok: bool | None = None  # unknown until tried
        self._tokenize_retry_at = 0.0
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._counts_lock = threading.Lock()
        self._session = ""
        # Health, for /diagnostics (read from the ROS thread; plain attribute writes).
        self.last_error = ""
        self.last_error_at = 0.0
        self.last_ok_at = 0.0
        self.requests = 0
        self.failures = 0
        self.retried = 0
        # Tokens the server evaluated for the last prompt (llama-server's timings.prompt_n):
        # how much of the prompt its slot cache did not already hold.
        self.prompt_tokens_evaluated = 0

    # ------------------------------------------------------------------ protocol
    @property
    def model_name(self) -> str:
        return self._model or self._http.base_url

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def context_size(self) -> int:
        """The `n_ctx` parameter: set it to the server's context per parallel slot
        (llama-server: -c divided by --parallel; vLLM: --max-model-len)."""
        return self._n_ctx

    def load(self) -> None:
        """Check the URL and, when the server answers, take the model name it serves.

        An unreachable server is not a load failure (the robot may boot first): it is
        recorded as the health, and requests try again. A server that answers, but wrongly
        (HTTP 4xx, not JSON), is a configuration error and raises.
        """
        self._http.check_url()
        try:
            self._http.client()
        except ImportError as exc:
            raise LLMBackendError(str(exc)) from exc
        try:
            self._discover_model()
        except LLMBackendError as exc:
            if not getattr(exc, "retryable", False):
                raise
            self._failed(str(exc))

    def _discover_model(self) -> None:
        listed = self._http.request_json("GET", "/models")
        self._ok()
        if self._model:
            return
        data = listed.get("data") if isinstance(listed, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("id"):
            self._model = str(data[0]["id"])

    def use_session(self, session_id: str) -> None:
        """The server owns the KV state (see the module docstring); remembered only."""
        self._session = session_id

    def count_tokens(self, text: str) -> int:
        """The server's token count (POST /tokenize, cached per text), else the estimate."""
        if not text:
            return 0
        with self._counts_lock:
            cached = self._counts.get(text)
            if cached is not None:
                self._counts.move_to_end(text)
                return cached
        count = self._tokenize(text)
        if count is None:
            return max(1, math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE))
        with self._counts_lock:
            self._counts[text] = count
            while len(self._counts) > TOKEN_COUNT_CACHE:
                self._counts.popitem(last=False)
        return count

    def _tokenize(self, text: str) -> int | None:
        if not self._use_tokenize or self._tokenize_ok is False:
            return None
        if time.monotonic() < self._tokenize_retry_at:
            return None
        try:
            answer = self._http.request_json(
                "POST", "/tokenize", {"content": text, "add_special": False}, root=True
            )
        except LLMBackendError as exc:
            if getattr(exc, "stage", "") == "status" and not getattr(exc, "retryable", False):
                self._tokenize_ok = False  # no /tokenize on this server (404): estimate
            else:
                self._tokenize_retry_at = time.monotonic() + TOKENIZE_RETRY_S
            return None
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            self._tokenize_ok = False
            return None
        self._tokenize_ok = True
        return len(tokens)

    def _body(self, messages: list[ChatMessage], settings: GenerationSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model or "default",
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": int(settings.max_tokens),
            "temperature": float(settings.temperature),
            "top_p": float(settings.top_p),
            "stream": True,
        }
        # Not in OpenAI's own API; vLLM and llama-server accept both.
        if settings.top_k > 0:
            body["top_k"] = int(settings.top_k)
        if settings.repeat_penalty != 1.0:
            body["repeat_penalty"] = float(settings.repeat_penalty)  # llama-server's name
            body["repetition_penalty"] = float(settings.repeat_penalty)  # vLLM's name
        if settings.seed >= 0:
            body["seed"] = int(settings.seed)
        if self._cache_prompt:
            body["cache_prompt"] = True
        return body

    def stream_chat(
        self,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        cancel: threading.Event,
    ) -> Iterator[str]:
        if settings.max_tokens < 1:
            raise LLMBackendError(f"max_tokens must be at least 1, got {settings.max_tokens}")
        if not self._model and self.last_ok_at == 0.0:
            # The server was down at load: learn the model name now (a vLLM server needs it).
            with contextlib.suppress(LLMBackendError):  # the request below reports it
                self._discover_model()
        body = self._body(messages, settings)
        self.requests += 1
        self.prompt_tokens_evaluated = 0
        attempt = 0
        while True:
            emitted = 0
            events = self._http.stream_events("/chat/completions", body, cancel)
            try:
                for event in events:
                    timings = event.get("timings")
                    if isinstance(timings, dict) and "prompt_n" in timings:
                        self.prompt_tokens_evaluated = int(timings["prompt_n"] or 0)
                    delta = delta_text(event)
                    if delta:
                        emitted += 1
                        yield delta
                self._ok()
                if not self._model:  # the server was down at load: learn its model name
                    with contextlib.suppress(LLMBackendError):
                        self._discover_model()
                return
            except LLMBackendError as exc:
                if cancel.is_set():
                    return
                retry = getattr(exc, "retryable", False) and emitted == 0 and attempt < self.retries
                if not retry:
                    message = str(exc)
                    if emitted:
                        message += f" (after {emitted} tokens)"
                    elif attempt:
                        message += f" ({attempt + 1} attempts)"
                    self._failed(message)
                    raise LLMBackendError(message) from exc
                self.retried += 1
                delay = min(MAX_BACKOFF_S, self.backoff_s * (2**attempt))
                attempt += 1
                if cancel.wait(delay):
                    return
            finally:
                events.close()  # closes the connection when the caller stops early

    # -------------------------------------------------------------------- health
    def _ok(self) -> None:
        self.last_ok_at = time.monotonic()

    def _failed(self, message: str) -> None:
        self.failures += 1
        self.last_error, self.last_error_at = message, time.monotonic()

    @property
    def healthy(self) -> bool:
        """False while the newest contact with the server (load check or request) failed."""
        return self.last_error_at == 0.0 or self.last_ok_at > self.last_error_at

    def health(self) -> dict[str, str]:
        """Key/values for /diagnostics (cheap: no network)."""
        return {
            "llm_server": self._http.base_url,
            "llm_server_ok": str(self.healthy),
            "llm_server_last_error": self.last_error,
            "llm_server_requests": str(self.requests),
            "llm_server_failures": str(self.failures),
            "llm_server_retries": str(self.retried),
        }

    def close(self) -> None:
        self._http.close()
