"""VLM back end for an OpenAI-compatible vision chat server (vLLM, llama.cpp server, Ollama).

How a fleet of robots shares one GPU server: the image goes as a base64 data URI in an
`image_url` content part of `POST {base_url}/chat/completions`; the answer streams back as
server-sent events, and `cancel` closes the connection at once (the server then stops
generating). HTTP, errors and the event stream are shared with the LLM back end
(backends/openai_http.py).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from smolfusion_ros.backends.openai_http import OpenAIEndpoint, delta_text
from smolfusion_ros.backends.vlm.base import VisionBackendError, VisionResult
from smolfusion_ros.backends.vlm.common import (
    DEFAULT_PROMPT,
    AnswerCollector,
    TokenCallback,
    image_data_uri,
    vision_messages,
)


class OpenAIVisionBackend:
    """Image + prompt -> text through an OpenAI-compatible `/v1/chat/completions` endpoint."""

    name = "openai_vlm"
    kind = "vlm"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080/v1",
        model: str = "",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 3.0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = -1,
        stream: bool = True,
        image_format: str = "jpeg",
        check_on_load: bool = True,
        tolerate_unreachable: bool = False,
        system_prompt: str = "",
        default_prompt: str = DEFAULT_PROMPT,
    ) -> None:
        self._http = OpenAIEndpoint(
            base_url,
            what="VLM server",
            error_type=VisionBackendError,
            api_key_env=api_key_env,
            connect_timeout_s=min(float(connect_timeout_s), float(timeout_s)),
            read_timeout_s=timeout_s,
        )
        self._model = model
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self._stream = bool(stream)
        self._image_format = image_format
        self._check_on_load = check_on_load
        # A robot may boot before its server: then load() succeeds, and the model name is
        # asked again on the first request.
        self._tolerate_unreachable = tolerate_unreachable
        self._listed = False
        self._system_prompt = system_prompt
        self._default_prompt = default_prompt
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model or self._http.base_url

    def load(self) -> None:
        self._http.check_url()
        try:
            self._http.client()
        except ImportError as exc:
            raise VisionBackendError(str(exc)) from exc
        if not self._check_on_load:
            return
        try:
            self._list_models()
        except VisionBackendError as exc:
            if not (self._tolerate_unreachable and getattr(exc, "retryable", False)):
                raise

    def _list_models(self) -> None:
        listed = self._http.request_json("GET", "/models")
        self._listed = True
        if not self._model and isinstance(listed, dict) and listed.get("data"):
            first = listed["data"][0]
            if isinstance(first, dict) and first.get("id"):
                self._model = str(first["id"])

    def describe(
        self,
        image_rgb: np.ndarray,
        prompt: str,
        cancel: threading.Event,
        max_tokens: int = 96,
        on_token: TokenCallback | None = None,
    ) -> VisionResult:
        """Answer `prompt` about the image; stops reading (and closes) once `cancel` is set."""
        answer = AnswerCollector(self, max_tokens, on_token)
        if self._check_on_load and not self._listed and not self._model:
            self._list_models()  # the server was down at load
        uri = image_data_uri(image_rgb, self._image_format)
        body: dict[str, Any] = {
            "model": self._model or "default",
            "messages": vision_messages(
                uri, prompt.strip() or self._default_prompt, self._system_prompt
            ),
            "max_tokens": int(max_tokens),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stream": self._stream,
        }
        if self.seed >= 0:
            body["seed"] = self.seed
        if cancel.is_set():
            return answer.result(True)
        with self._lock:
            if self._stream:
                for event in self._http.stream_events("/chat/completions", body, cancel):
                    answer.add(delta_text(event))
            else:
                reply = self._http.request_json("POST", "/chat/completions", body)
                if not isinstance(reply, dict) or not reply.get("choices"):
                    raise VisionBackendError(
                        f"VLM server {self._http.base_url}/chat/completions sent no choices: "
                        f"{str(reply)[:200]}"
                    )
                usage = int((reply.get("usage") or {}).get("completion_tokens", 0) or 0)
                answer.add(delta_text(reply, "message"), tokens=usage)
        return answer.result(cancel.is_set())

    def close(self) -> None:
        self._http.close()
