"""VLM back end for an OpenAI-compatible vision chat server (vLLM, llama.cpp server, Ollama).

How a fleet of robots shares one GPU server: the image goes as a base64 data URI in an
`image_url` content part of `POST {base_url}/chat/completions`; the answer streams back as
server-sent events, and `cancel` closes the connection between events (the server then stops
generating). Standard library only (urllib): no extra runtime dependency.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

from smolfusion_ros.backends.vlm.base import VisionBackendError, VisionResult
from smolfusion_ros.backends.vlm.common import (
    DEFAULT_PROMPT,
    TokenCallback,
    image_data_uri,
    vision_messages,
    vlm_result,
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
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = -1,
        stream: bool = True,
        image_format: str = "jpeg",
        check_on_load: bool = True,
        system_prompt: str = "",
        default_prompt: str = DEFAULT_PROMPT,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._api_key_env = api_key_env
        self._timeout_s = float(timeout_s)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self._stream = bool(stream)
        self._image_format = image_format
        self._check_on_load = check_on_load
        self._system_prompt = system_prompt
        self._default_prompt = default_prompt
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model or self._base_url

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self._api_key_env, "") if self._api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _open(self, url: str, body: dict[str, Any] | None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            url, data=data, headers=self._headers(), method="POST" if data else "GET"
        )
        try:
            return urllib.request.urlopen(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(400).decode("utf-8", "replace").strip()
            except OSError:
                detail = ""
            raise VisionBackendError(
                f"VLM server {url} answered HTTP {exc.code} {exc.reason}"
                + (f": {detail}" if detail else "")
            ) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ConnectionRefusedError):
                why = "connection refused (is the server running, and is base_url right?)"
            elif isinstance(reason, TimeoutError):
                why = f"no answer within {self._timeout_s:g} s"
            else:
                why = str(reason)
            raise VisionBackendError(f"cannot reach the VLM server at {url}: {why}") from exc
        except TimeoutError as exc:
            raise VisionBackendError(
                f"VLM server {url} sent no answer within {self._timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise VisionBackendError(f"cannot reach the VLM server at {url}: {exc}") from exc

    def load(self) -> None:
        if not self._base_url.startswith(("http://", "https://")):
            raise VisionBackendError(
                f"base_url must start with http:// or https://, got {self._base_url!r}"
            )
        if not self._check_on_load:
            return
        url = f"{self._base_url}/models"
        with self._open(url, None) as response:
            raw = response.read()
        try:
            listed = json.loads(raw)
        except ValueError as exc:
            raise VisionBackendError(
                f"VLM server {url} sent malformed JSON: {raw[:200]!r}"
            ) from exc
        if not self._model and isinstance(listed, dict) and listed.get("data"):
            first = listed["data"][0]
            if isinstance(first, dict) and first.get("id"):
                self._model = str(first["id"])

    def _events(self, response: Any, url: str) -> Iterator[dict[str, Any]]:
        """The JSON payloads of a server-sent-event stream, until `data: [DONE]`."""
        for raw_line in response:
            line = raw_line.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments (": ping"), event names
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            try:
                event = json.loads(payload)
            except ValueError as exc:
                raise VisionBackendError(
                    f"VLM server {url} sent malformed JSON in its stream: {payload[:200]!r}"
                ) from exc
            if isinstance(event, dict) and event.get("error"):
                raise VisionBackendError(f"VLM server {url} reported: {event['error']}")
            yield event

    @staticmethod
    def _delta(event: dict[str, Any], key: str) -> str:
        try:
            part = event["choices"][0][key].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return ""
        return part if isinstance(part, str) else ""

    def describe(
        self,
        image_rgb: np.ndarray,
        prompt: str,
        cancel: threading.Event,
        max_tokens: int = 96,
        on_token: TokenCallback | None = None,
    ) -> VisionResult:
        """Answer `prompt` about the image; stops reading (and closes) once `cancel` is set."""
        if max_tokens < 1:
            raise VisionBackendError(f"max_tokens must be at least 1, got {max_tokens}")
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
        url = f"{self._base_url}/chat/completions"
        start = time.monotonic()
        if cancel.is_set():
            return vlm_result(self, "", start, 0, None, True)
        pieces: list[str] = []
        tokens = 0
        ttft = None
        cancelled = False
        with self._lock, self._open(url, body) as response:
            try:
                if self._stream:
                    for event in self._events(response, url):
                        if cancel.is_set():
                            cancelled = True
                            break
                        delta = self._delta(event, "delta")
                        if not delta:
                            continue
                        tokens += 1
                        if ttft is None:
                            ttft = time.monotonic() - start
                        pieces.append(delta)
                        if on_token is not None:
                            on_token(delta)
                else:
                    raw = response.read()
                    try:
                        answer = json.loads(raw)
                    except ValueError as exc:
                        raise VisionBackendError(
                            f"VLM server {url} sent malformed JSON: {raw[:200]!r}"
                        ) from exc
                    if not isinstance(answer, dict) or not answer.get("choices"):
                        raise VisionBackendError(
                            f"VLM server {url} sent no choices: {str(answer)[:200]}"
                        )
                    text = self._delta(answer, "message")
                    pieces.append(text)
                    tokens = int((answer.get("usage") or {}).get("completion_tokens", 0) or 0)
                    ttft = time.monotonic() - start
                    if on_token is not None and text:
                        on_token(text)
            except TimeoutError as exc:
                raise VisionBackendError(
                    f"VLM server {url} stalled for more than {self._timeout_s:g} s"
                ) from exc
        return vlm_result(self, "".join(pieces), start, tokens, ttft, cancelled)

    def close(self) -> None:
        """Nothing is held between requests."""
