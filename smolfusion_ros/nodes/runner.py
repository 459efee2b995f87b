"""The short main() every node shares: init, build, spin multi-threaded, shut down cleanly."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from smolfusion_ros.nodes.dds import use_large_frame_transport
from smolfusion_ros.nodes.parameters import ConfigError

# Waiting service calls and action goals each hold an executor thread (the model work itself
# runs on the engine's thread), so the pool is larger than the core count.
EXECUTOR_THREADS = 16


def create_nodes(factories: Sequence[Callable[[], Node]]) -> list[Node] | None:
    """Build the nodes in an initialised rclpy context.

    On a configuration error, print one clear line (not a traceback: the operator fixes a
    parameter or installs a model), destroy what was built, shut rclpy down, return None.
    """
    nodes: list[Node] = []
    try:
        for factory in factories:
            nodes.append(factory())
    except ConfigError as exc:
        print(f"[smolfusion_ros] configuration error: {exc}", file=sys.stderr, flush=True)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
        return None
    return nodes


def create_executor(nodes: Sequence[Node]) -> MultiThreadedExecutor:
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    for node in nodes:
        executor.add_node(node)
    return executor


def shutdown(executor: MultiThreadedExecutor, nodes: Sequence[Node]) -> None:
    """Stop spinning, let nodes release their resources (close()), destroy them, shut down."""
    executor.shutdown()
    for node in nodes:
        close = getattr(node, "close", None)
        if close:
            close()
        node.destroy_node()
    rclpy.try_shutdown()


def spin_until_shutdown(executor: MultiThreadedExecutor, nodes: Sequence[Node]) -> None:
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        shutdown(executor, nodes)


def run_nodes(factories: Sequence[Callable[[], Node]], args: list[str] | None = None) -> int:
    """Build the nodes, spin them in one MultiThreadedExecutor and return an exit code."""
    use_large_frame_transport()
    rclpy.init(args=args if args is not None else sys.argv)
    nodes = create_nodes(factories)
    if nodes is None:
        return 2
    spin_until_shutdown(create_executor(nodes), nodes)
    return 0


def run_node(factory: Callable[[], Node]) -> None:
    sys.exit(run_nodes([factory]))
