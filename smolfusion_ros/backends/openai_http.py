"""What the OpenAI-compatible back ends (LLM and VLM) share: one HTTP client, clear errors, SSE.

A robot of a fleet reaches the shared model server (vLLM, llama.cpp's llama-server, Ollama)
through `POST {base_url}/chat/completions` with `stream: true`: the answer comes back as
server-sent events, one `data: {json}` line per token, ended by `data: [DONE]`. This module
turns every way that can fail (refused, unreachable, slow, HTTP error, garbage, a stream cut
short) into one error line that names the server, marks which failures are worth a retry,
and closes a stream at once when the caller's cancel event is set, even while it is waiting
for the server (a watcher shuts the socket down, which wakes the blocked read; the server
sees the connection close and stops generating).

HTTP goes through httpx2 (the maintained successor of httpx, same API; pinned in
requirements/runtime.txt), or httpx where only that is installed (python3-httpx from apt).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

# Status codes that say "try again shortly" (overloaded, restarting, still loading its model).
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# How often the cancel watcher looks at the cancel event while a stream is open.
CANCEL_POLL_S = 0.01


def import_httpx() -> Any:
    """The HTTP client module: httpx2, else httpx; ImportError with the install line."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        pass
    try:
        import httpx

        return httpx
    except ImportError as exc:
        raise ImportError(
            "the OpenAI-compatible back ends need an HTTP client: pip install httpx2==2.16.2 "
            "(or apt install python3-httpx)"
        ) from exc


class OpenAIEndpoint:
    """One OpenAI-compatible server: JSON requests and SSE streams with errors of `error_type`.

    Errors carry `retryable` (True when the same request may succeed a moment later: the
    server is unreachable, timed out, overloaded or restarting) and `stage` ("connect",
    "status", "stream" or "data").
    """

    def __init__(
        self,
        base_url: str,
        *,
        what: str,
        error_type: type[Exception],
        api_key: str = "",
        api_key_env: str = "",
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.what = what
        self._error_type = error_type
        self._api_key = api_key
        self._api_key_env = api_key_env
        self.connect_timeout_s = float(connect_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self._client: Any = None
        self._client_lock = threading.Lock()

    # ----------------------------------------------------------------- plumbing
    def check_url(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise self.error(f"base_url must start with http:// or https://, got {self.base_url!r}")

    @property
    def root_url(self) -> str:
        """The server's root (base_url without a trailing /v1): llama-server's /health and
        /tokenize live there."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def error(self, message: str, *, retryable: bool = False, stage: str = "data") -> Exception:
        exc = self._error_type(message)
        exc.retryable = retryable  # type: ignore[attr-defined]
        exc.stage = stage  # type: ignore[attr-defined]
        return exc

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        key = self._api_key or (os.environ.get(self._api_key_env, "") if self._api_key_env else "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                httpx = import_httpx()
                self._httpx = httpx
                self._client = httpx.Client(
                    timeout=httpx.Timeout(
                        self.read_timeout_s, connect=self.connect_timeout_s, pool=None
                    ),
                    headers=self._headers(),
                    # A robot's few concurrent requests (chat, count_tokens) reuse connections.
                    limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
                    follow_redirects=True,
                    trust_env=False,  # a robot's proxy settings must not route a LAN server
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _transport_error(self, exc: Exception, url: str) -> Exception:
        """A one-line error for anything that went wrong below HTTP."""
        httpx = self._httpx
        if isinstance(exc, httpx.ConnectTimeout):
            why = f"no connection within {self.connect_timeout_s:g} s (is the host up?)"
            stage = "connect"
        elif isinstance(exc, httpx.ConnectError):
            text = str(exc)
            if "refused" in text.lower() or isinstance(exc.__context__, ConnectionRefusedError):
                why = "connection refused (is the server running, and is base_url right?)"
            else:
                why = text or type(exc).__name__
            stage = "connect"
        elif isinstance(exc, httpx.TimeoutException):
            why = f"no answer within {self.read_timeout_s:g} s"
            stage = "stream"
        else:
            why = str(exc) or type(exc).__name__
            stage = "stream"
        verb = "cannot reach" if stage == "connect" else "lost the connection to"
        return self.error(f"{verb} the {self.what} at {url}: {why}", retryable=True, stage=stage)

    def _status_error(self, response: Any, url: str) -> Exception:
        try:
            detail = response.read()[:400].decode("utf-8", "replace").strip()
        except Exception:  # the body is only a hint
            detail = ""
        detail = " ".join(detail.split())
        return self.error(
            f"{self.what} {url} answered HTTP {response.status_code} {response.reason_phrase}"
            + (f": {detail}" if detail else ""),
            retryable=response.status_code in RETRYABLE_STATUS,
            stage="status",
        )

    def _parse(self, raw: bytes | str, url: str, where: str = "") -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            shown = raw[:200] if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
            raise self.error(f"{self.what} {url} sent malformed JSON{where}: {shown!r}") from None

    # ----------------------------------------------------------------- requests
    def request_json(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, root: bool = False
    ) -> Any:
        """GET/POST `path` (under base_url, or the server root) and return the parsed JSON."""
        url = f"{self.root_url if root else self.base_url}{path}"
        client = self.client()
        try:
            response = client.request(method, url, json=body)
        except self._httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from exc
        if response.status_code >= 400:
            raise self._status_error(response, url)
        return self._parse(response.content, url)

    def stream_events(
        self,
        path: str,
        body: dict[str, Any],
        cancel: threading.Event,
        on_open: Callable[[], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """POST `body` with `stream: true` and yield each event's JSON payload until [DONE].

        Ends quietly (without [DONE]) when `cancel` is set, however the stream was cut.
        Raises `error_type` when the server cannot be reached, answers an HTTP error, sends
        garbage, reports an error event or ends the stream before [DONE]. Close the generator
        (or leave the for loop) to close the connection.
        """
        url = f"{self.base_url}{path}"
        client = self.client()
        httpx = self._httpx
        if cancel.is_set():
            return
        try:
            response = client.send(client.build_request("POST", url, json=body), stream=True)
        except httpx.HTTPError as exc:
            if cancel.is_set():
                return
            raise self._transport_error(exc, url) from exc
        done = threading.Event()
        watcher = threading.Thread(
            target=_close_on_cancel, args=(response, cancel, done), daemon=True
        )
        try:
            if response.status_code >= 400:
                raise self._status_error(response, url)
            if on_open is not None:
                on_open()
            watcher.start()
            for line in response.iter_lines():
                if cancel.is_set():
                    return
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event names
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                event = self._parse(payload, url, " in its stream")
                if isinstance(event, dict) and event.get("error"):
                    raise self.error(
                        f"{self.what} {url} reported: {_one_line(event['error'])}",
                        retryable=False,
                        stage="data",
                    )
                if not isinstance(event, dict):
                    raise self.error(
                        f"{self.what} {url} sent a non-object event: {payload[:200]!r}"
                    )
                yield event
            if cancel.is_set():
                return
            raise self.error(
                f"{self.what} {url} ended the stream without [DONE] (did it stop or restart?)",
                retryable=True,
                stage="stream",
            )
        except httpx.HTTPError as exc:
            if cancel.is_set():
                return  # the watcher closed it
            raise self._transport_error(exc, url) from exc
        finally:
            done.set()
            response.close()


def _close_on_cancel(response: Any, cancel: threading.Event, done: threading.Event) -> None:
    """Shut the stream's socket down once `cancel` is set (wakes a read blocked on it)."""
    while not done.is_set():
        if cancel.wait(CANCEL_POLL_S):
            break
    if done.is_set():
        return
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
            return
        except OSError:
            pass  # already closed
    # Best effort: the reader notices cancel at the next event anyway.
    with contextlib.suppress(Exception):
        response.close()


def _one_line(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("message") or json.dumps(value)
    return " ".join(str(value).split())[:300]


def delta_text(event: dict[str, Any], key: str = "delta") -> str:
    """The text of choice 0's `delta` (stream) or `message` (whole answer); "" if none."""
    try:
        part = event["choices"][0][key].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return part if isinstance(part, str) else ""
