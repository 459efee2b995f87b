"""Run a whole profile in one process, with a console to talk to it.

    python -m smolfusion_ros.bringup                        # cpu_demo, interactive console
    python -m smolfusion_ros.bringup --ask "Hello" --ask "Who are you?"   # scripted
    echo "Hello" | python -m smolfusion_ros.bringup         # lines from stdin, scripted
    python -m smolfusion_ros.bringup --no-console           # nodes only, like ros2 launch

Every node of the profile (config/profiles.yaml) is added to one MultiThreadedExecutor (the
manual-composition pattern); parameters come from the profile's YAML, exactly as the launch
file passes them. The console is a client like any other: it sends `converse` goals and
prints the streamed answer with its time to first token and tokens per second.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable

import rclpy

from smolfusion_ros.core.profile import ProfileError, get_profile
from smolfusion_ros.nodes.dds import use_large_frame_transport
from smolfusion_ros.nodes.runner import (
    create_executor,
    create_nodes,
    exit_requested,
    install_signal_handlers,
    requested_exit_code,
    shutdown,
    spin_until_shutdown,
    start_spinning,
)


def _node_factories():
    # Imported here so `--help` works without building interfaces or loading models.
    from smolfusion_ros.nodes.camera_node import CameraNode
    from smolfusion_ros.nodes.fusion_node import FusionNode
    from smolfusion_ros.nodes.gateway_node import GatewayNode
    from smolfusion_ros.nodes.knowledge_node import KnowledgeNode
    from smolfusion_ros.nodes.memory_node import MemoryNode
    from smolfusion_ros.nodes.microphone_node import MicrophoneNode
    from smolfusion_ros.nodes.speech_node import SpeechNode
    from smolfusion_ros.nodes.text_input_node import TextInputNode
    from smolfusion_ros.nodes.tts_node import TTSNode

    return {
        "camera_node": CameraNode,
        "fusion_node": FusionNode,
        "gateway_node": GatewayNode,
        "knowledge_node": KnowledgeNode,
        "memory_node": MemoryNode,
        "microphone_node": MicrophoneNode,
        "speech_node": SpeechNode,
        "text_input_node": TextInputNode,
        "tts_node": TTSNode,
    }


class Console:
    """Sends each line as a converse goal and prints the streamed answer."""

    def __init__(self, client, session_id: str, persona: str, max_tokens: int, out=sys.stdout):
        self.client = client
        self.session_id = session_id
        self.persona = persona
        self.max_tokens = max_tokens
        self.out = out
        self.failures = 0

    def ask(self, text: str) -> bool:
        started = time.monotonic()
        printed = threading.Event()

        def on_feedback(feedback) -> None:
            if not printed.is_set():
                printed.set()
                self.out.write("robot> ")
            self.out.write(feedback.delta)
            self.out.flush()

        handle = self.client.converse(
            text,
            session_id=self.session_id,
            persona=self.persona,
            max_tokens=self.max_tokens,
            on_feedback=on_feedback,
        )
        result = handle.result(timeout=300)
        total = time.monotonic() - started
        if not result.success:
            self.failures += 1
            self.out.write(f"{'' if not printed.is_set() else chr(10)}error: {result.error}\n")
            return False
        ttft = (handle.first_feedback_at - started) if handle.first_feedback_at else result.ttft_s
        rate = (result.tokens - 1) / (total - ttft) if result.tokens > 1 and total > ttft else 0.0
        if not printed.is_set():
            self.out.write(f"robot> {result.reply}")
        self.out.write(
            f"\n  [first token {ttft:.2f} s | {result.tokens} tokens | "
            f"{rate:.0f} tokens/s | {total:.2f} s]\n"
        )
        self.out.flush()
        return True

    def command(self, line: str) -> bool:
        """Console commands; returns False to quit."""
        name, _, arg = line[1:].partition(" ")
        if name in ("quit", "exit", "q"):
            return False
        if name == "session" and arg:
            self.session_id = arg.strip()
        elif name == "persona":
            self.persona = arg.strip()
        else:
            self.out.write("commands: /session ID, /persona ID (empty = default), /quit\n")
        self.out.write(
            f"  [session {self.session_id or 'default'}, persona {self.persona or 'default'}]\n"
        )
        return True

    def run_lines(self, lines: Iterable[str], echo: bool) -> None:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            if echo:
                self.out.write(f"you> {line}\n")
            self.ask(line)

    def interactive(self) -> None:
        self.out.write("Type a question and press Enter (/quit to leave, /help for commands).\n")
        while True:
            try:
                line = input("you> ")
            except EOFError:
                return
            line = line.strip()
            if line.startswith("/"):
                if not self.command(line):
                    return
            elif line:
                self.ask(line)


def _announce_console(nodes, timeout_s: float = 120.0) -> None:
    """Print the web console's address once the models have loaded: llama.cpp silences the
    process's stdout and stderr while it loads, and a line printed then is lost."""
    from smolfusion_ros.core.chat_engine import EngineState

    engines = [node.engine for node in nodes if getattr(node, "engine", None) is not None]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(e.state is EngineState.LOADING for e in engines):
        time.sleep(0.05)
    for node in nodes:
        if getattr(node, "url", ""):  # gateway_node
            print(
                f"[smolfusion_ros] web console: {node.url} (API docs: {node.url}docs)", flush=True
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu_demo", help="profile from config/profiles.yaml")
    parser.add_argument("--ask", action="append", default=[], help="ask this and exit (repeat)")
    parser.add_argument("--script", help="file with one question per line")
    parser.add_argument("--session", default="console", help="session id for the console")
    parser.add_argument("--persona", default="", help="persona id (empty = default)")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--no-console", action="store_true", help="run the nodes only")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args, ros_args = parser.parse_known_args(argv)

    try:
        profile = get_profile(args.profile)
    except (ProfileError, FileNotFoundError) as exc:
        print(f"[smolfusion_ros] {exc}", file=sys.stderr)
        return 2
    use_large_frame_transport()
    from rclpy.signals import SignalHandlerOptions

    # The runner's signal handling, not rclpy's: on SIGINT/SIGTERM everything in progress is
    # answered before the nodes go (runner.shutdown), as for a node process.
    rclpy.init(
        args=[
            "bringup",
            "--ros-args",
            "--params-file",
            str(profile.parameters_file),
            *[a for a in ros_args if a != "--ros-args"],
        ],
        signal_handler_options=SignalHandlerOptions.NO,
    )
    install_signal_handlers(interrupt_main=not args.no_console)
    # Printed before the nodes start: llama.cpp silences stdout process-wide while loading.
    print(f"[smolfusion_ros] profile {profile.name}: {', '.join(profile.nodes)}", flush=True)
    factories = _node_factories()
    nodes = create_nodes([factories[name] for name in profile.nodes])
    if nodes is None:
        return 2
    threading.Thread(target=_announce_console, args=(nodes,), daemon=True).start()
    executor = create_executor(nodes)
    if args.no_console:
        return spin_until_shutdown(executor, nodes)

    from smolfusion_ros.client import SmolFusionClient

    console_node = rclpy.create_node("console")
    executor.add_node(console_node)
    start_spinning(executor)
    # A node that cannot go on (request_exit, e.g. its model failed to load) interrupts the
    # console as a signal would, so the process does not wait in input() for nothing.
    threading.Thread(target=_interrupt_on_exit_request, daemon=True).start()
    console = Console(
        SmolFusionClient(node=console_node), args.session, args.persona, args.max_tokens
    )
    code = 0
    try:
        console.client.wait_until_ready(args.ready_timeout)
        if args.ask or args.script:
            lines = list(args.ask)
            if args.script:
                with open(args.script, encoding="utf-8") as handle:
                    lines += handle.readlines()
            console.run_lines(lines, echo=True)
        elif sys.stdin.isatty():
            console.interactive()
        else:
            console.run_lines(sys.stdin, echo=True)
        code = 1 if console.failures else 0
    except KeyboardInterrupt:
        code = requested_exit_code()
    except Exception as exc:
        print(f"[smolfusion_ros] {exc}", file=sys.stderr)
        code = 1
    finally:
        console.client.close()
        shutdown(executor, [*nodes, console_node])
    return code


def _interrupt_on_exit_request() -> None:
    exit_requested().wait()
    if requested_exit_code() != 0:
        os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
