"""HTTP helpers for the gateway tests: a running graph's gateway, plain-stdlib HTTP and SSE."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass

from conftest import NodeProcess, wait_for

GATEWAY = "smolfusion_ros.nodes.gateway_node"
_LISTENING = re.compile(r"gateway listening on http://([\d.]+):(\d+)/")


def gateway_port(process: NodeProcess, timeout: float = 60.0) -> int:
    """The port a gateway started with port:=0 logged."""
    found: list[int] = []

    def listening() -> bool:
        for line in process.log_lines:
            match = _LISTENING.search(line)
            if match:
                found.append(int(match.group(2)))
                return True
        return not process.alive()

    assert wait_for(listening, timeout, 0.1) and found, process.log[-3000:]
    return found[0]


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]):
    """(body, content type) of a multipart/form-data request."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, data, content_type) in files.items():
        parts.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Http:
    def __init__(self, port: int, host: str = "127.0.0.1", token: str = "") -> None:
        self.host, self.port, self.token = host, port, token

    def request(
        self,
        method: str,
        path: str,
        body=None,
        *,
        raw: bytes | None = None,
        content_type: str = "",
        timeout: float = 180.0,
        headers: dict | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        sent = dict(headers or {})
        if self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            content_type = "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> Reply:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw) -> Reply:
        return self.request("DELETE", path, **kw)

    def upload(self, path: str, fields: dict, files: dict, **kw) -> Reply:
        data, content_type = multipart(fields, files)
        return self.request("POST", path, raw=data, content_type=content_type, **kw)

    def stream(self, body: dict, timeout: float = 180.0):
        """POST /chat/stream; yields (event, data, seconds since the request) as they arrive.
        Closing the generator closes the connection (the client went away)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        started = time.monotonic()
        try:
            conn.request("POST", "/chat/stream", body=json.dumps(body).encode(), headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                yield "http_error", {"status": response.status, **json.loads(response.read())}, 0
                return
            event, data = "message", ""
            while True:
                line = response.fp.readline()
                if not line:
                    return
                line = line.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    yield event, json.loads(data), time.monotonic() - started
                    event, data = "message", ""
        finally:
            # Shut the socket down, not just close our file object: the server must see the
            # client go away at once.
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
