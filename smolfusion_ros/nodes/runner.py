"""The short main() every node shares: init, build, spin multi-threaded, shut down cleanly.

Exit codes: 0 after SIGINT/SIGTERM (a clean stop on request, as `ros2 launch` expects);
2 when the configuration cannot work: a bad parameter or a missing or unusable model at
start-up (ConfigError), or a model that fails to load in the background (request_exit).
Either way one line on stderr, no traceback.

Shutdown order matters for callers: on SIGINT/SIGTERM the nodes first answer everything in
progress (a node's begin_shutdown(): streaming goals and queued requests end with
success=false, "the node is shutting down") while the executor still spins and the entities
still exist; only then does the executor stop and are the nodes destroyed. rclpy's own signal
handlers would shut the context down at once, before any result could be sent, so the
runner handles SIGINT and SIGTERM itself.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from smolfusion_ros.nodes.dds import use_large_frame_transport
from smolfusion_ros.nodes.managed import autostart
from smolfusion_ros.nodes.parameters import ConfigError

# The executor's thread pool never has fewer threads than this. Waiting service calls and
# action goals each hold an executor thread (the model work itself runs on the engine's
# thread); nodes say how many can wait at once (max_waiting_calls) and the pool gets
# FREE_THREADS more, so rejections, cancels, timers and topic callbacks always find a thread.
# (A ThreadPoolExecutor starts threads only when work needs them.)
EXECUTOR_THREADS = 16
FREE_THREADS = 8
# Shutdown: how long nodes get to answer what is in progress, and how long the executor keeps
# spinning afterwards so the last results (action results go out in an executor task) are
# sent and delivered before the entities go.
DRAIN_TIMEOUT_S = 5.0
RESULT_FLUSH_S = 0.3
CONFIG_ERROR_EXIT = 2


class _ExitRequest:
    """Set by a signal or by a node that cannot go on (request_exit); read by the runner."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.code = 0
        self.signals = 0
        self._lock = threading.Lock()

    def request(self, code: int, message: str = "") -> None:
        with self._lock:
            if self.event.is_set():
                return
            self.code = code
            if message:
                print(f"[smolfusion_ros] {message}", file=sys.stderr, flush=True)
            self.event.set()


_exit = _ExitRequest()


def request_exit(code: int, message: str = "") -> None:
    """Ask the runner to shut the process down cleanly and exit with `code` (any thread).

    `message` is printed as one line; used when a node finds it cannot work (e.g. its model
    failed to load), so it does not stay up looking alive while failing every request.
    """
    _exit.request(code, message)


def exit_requested() -> threading.Event:
    """Set once a signal or request_exit() asked the process to stop."""
    return _exit.event


def requested_exit_code() -> int:
    return _exit.code


def _on_signal(signum, _frame) -> None:
    _exit.signals += 1
    _exit.request(0)


def _on_signal_interrupting(signum, frame) -> None:
    """For a main thread busy elsewhere (the bringup's console waiting in input() or for an
    answer): request the orderly shutdown, then interrupt what the main thread is doing."""
    _on_signal(signum, frame)
    if _exit.signals == 1:  # a second Ctrl-C must not break the orderly shutdown under way
        raise KeyboardInterrupt


def install_signal_handlers(interrupt_main: bool = False) -> None:
    """SIGINT/SIGTERM start the orderly shutdown instead of rclpy's immediate one.

    interrupt_main: the handler also raises KeyboardInterrupt in the main thread.
    """
    try:
        from rclpy.signals import uninstall_signal_handlers

        uninstall_signal_handlers()
    except Exception:  # none installed (init with SignalHandlerOptions.NO) or an old rclpy
        pass
    if threading.current_thread() is threading.main_thread():
        handler = _on_signal_interrupting if interrupt_main else _on_signal
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def create_nodes(factories: Sequence[Callable[[], Node]]) -> list[Node] | None:
    """Build the nodes in an initialised rclpy context and bring managed nodes with
    autostart=true to active.

    On a configuration error (at construction or in an autostarted configure), print one
    clear line (not a traceback: the operator fixes a parameter or installs a model), destroy
    what was built, shut rclpy down, return None.
    """
    nodes: list[Node] = []
    try:
        for factory in factories:
            nodes.append(factory())
        # Managed nodes with autostart=true go to active now, before anything spins (the
        # bringup and `ros2 launch` both get here): nav2's lifecycle manager, in-process.
        problem = autostart(nodes)
        if problem is not None:
            raise ConfigError(problem)
    except ConfigError as exc:
        print(f"[smolfusion_ros] configuration error: {exc}", file=sys.stderr, flush=True)
        for node in nodes:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
        return None
    return nodes


def executor_threads(nodes: Sequence[Node]) -> int:
    waiting = sum(int(getattr(node, "max_waiting_calls", 0)) for node in nodes)
    return max(EXECUTOR_THREADS, waiting + FREE_THREADS)


def create_executor(nodes: Sequence[Node]) -> MultiThreadedExecutor:
    executor = MultiThreadedExecutor(num_threads=executor_threads(nodes))
    for node in nodes:
        executor.add_node(node)
    return executor


def _drain(nodes: Sequence[Node]) -> None:
    """Let nodes answer what is in progress while another thread still spins the executor."""
    draining = [n for n in nodes if hasattr(n, "begin_shutdown") and n.context.ok()]
    if not draining:
        return
    busy = [n for n in draining if not n.drained()]
    for node in draining:
        node.begin_shutdown()
    if not busy:
        return
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and not all(n.drained() for n in busy):
        time.sleep(0.01)
    time.sleep(RESULT_FLUSH_S)


def shutdown(executor: MultiThreadedExecutor, nodes: Sequence[Node]) -> None:
    """Answer what is in progress (while the executor, spun by another thread, still runs),
    stop spinning, let nodes release their resources (close()), destroy them, shut down."""
    _drain(nodes)
    executor.shutdown()
    for node in nodes:
        close = getattr(node, "close", None)
        if close:
            close()
        node.destroy_node()
    rclpy.try_shutdown()


def _spin(executor: MultiThreadedExecutor) -> None:
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError as exc:
        # executor.shutdown() (runner.shutdown, main thread) closed the thread pool while this
        # thread was handing it one more ready callback: "cannot schedule new futures after
        # shutdown". Harmless then; anything else is a real error.
        if not (_exit.event.is_set() and "after shutdown" in str(exc)):
            raise
    finally:
        _exit.request(_exit.code)  # the context went away: the main thread shuts down


def start_spinning(executor: MultiThreadedExecutor) -> threading.Thread:
    """Spin `executor` on a background thread that ends quietly when the runner shuts down."""
    spinner = threading.Thread(target=_spin, args=(executor,), name="executor", daemon=True)
    spinner.start()
    return spinner


def spin_until_shutdown(executor: MultiThreadedExecutor, nodes: Sequence[Node]) -> int:
    """Spin on a background thread until a signal, request_exit() or the context ends; then
    shut down in order. Returns the exit code."""
    install_signal_handlers()
    spinner = start_spinning(executor)
    try:
        # A plain wait in the main thread: Python runs the signal handlers while it waits.
        while not _exit.event.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        shutdown(executor, nodes)
        spinner.join(5)
    return _exit.code


def run_nodes(factories: Sequence[Callable[[], Node]], args: list[str] | None = None) -> int:
    """Build the nodes, spin them in one MultiThreadedExecutor and return an exit code."""
    from rclpy.signals import SignalHandlerOptions

    use_large_frame_transport()
    rclpy.init(
        args=args if args is not None else sys.argv,
        signal_handler_options=SignalHandlerOptions.NO,
    )
    install_signal_handlers()
    nodes = create_nodes(factories)
    if nodes is None:
        return CONFIG_ERROR_EXIT
    return spin_until_shutdown(create_executor(nodes), nodes)


def run_node(factory: Callable[[], Node]) -> None:
    sys.exit(run_nodes([factory]))
