"""Memory latency with a large history: append and history fetch, p50 and p99.

    .venv/bin/python bench/bench_memory.py [--turns 100000] [--samples 500]

Fills a fresh SQLite file with --turns turns spread over 1,000 sessions (bulk, untimed),
then times, in one run:
  store      MemoryStore called in this process (synchronous=FULL and NORMAL): single appends,
             each committed to disk before it returns, and fetches of a session's last 20 turns;
  service    the same through memory_node's ~/append_turn and ~/get_history services, the node
             running as its own process on the FULL database (round trip over DDS on localhost).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 99)))

from smolfusion_ros.memory.store import MemoryStore  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fill(store: MemoryStore, turns: int, sessions: int) -> None:
    rows = [
        {
            "session_id": f"s{i % sessions}",
            "role": "user" if i % 2 == 0 else "assistant",
            "text": f"turn {i} about the weather, the kitchen and the robot",
            "source": "bench",
            "stamp": time.time(),
            "latency_s": 0.0,
            "persona": "",
            "request_id": "",
        }
        for i in range(turns)
    ]
    with store._write_transaction():  # bulk load is set-up, not what is measured
        store.db["turns"].insert_all(rows, batch_size=5000)


def measure(
    samples: int, append: Callable[[int, str], None], fetch: Callable[[str], None]
) -> dict[str, float]:
    appends, fetches = [], []
    started = time.perf_counter()
    for i in range(samples):
        session = f"s{random.randrange(1000)}"
        t0 = time.perf_counter()
        append(i, session)
        appends.append(time.perf_counter() - t0)
    rate = samples / (time.perf_counter() - started)
    for _ in range(samples):
        session = f"s{random.randrange(1000)}"
        t0 = time.perf_counter()
        fetch(session)
        fetches.append(time.perf_counter() - t0)
    return {
        "append_p50_ms": percentile(appends, 0.5) * 1e3,
        "append_p99_ms": percentile(appends, 0.99) * 1e3,
        "appends_per_s": rate,
        "history_p50_ms": percentile(fetches, 0.5) * 1e3,
        "history_p99_ms": percentile(fetches, 0.99) * 1e3,
    }


def report(label: str, stored: int, figures: dict[str, float]) -> None:
    print(
        f"{label:<22} stored={stored} append p50={figures['append_p50_ms']:.2f} ms "
        f"p99={figures['append_p99_ms']:.2f} ms rate={figures['appends_per_s']:.0f}/s | "
        f"history(20) p50={figures['history_p50_ms']:.2f} ms "
        f"p99={figures['history_p99_ms']:.2f} ms",
        flush=True,
    )


def bench_service(path: Path, samples: int) -> dict[str, float]:
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from smolfusion_ros.client import _wait_future
    from smolfusion_ros.msg import Turn
    from smolfusion_ros.srv import AppendTurn, GetHistory

    node_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smolfusion_ros.nodes.memory_node",
            "--ros-args",
            "-r",
            "__ns:=/bench_memory",
            "-p",
            f"database_path:={path}",
        ],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rclpy.init()
    node = rclpy.create_node("bench_memory_client")

    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        append_client = node.create_client(AppendTurn, "/bench_memory/memory_node/append_turn")
        history_client = node.create_client(GetHistory, "/bench_memory/memory_node/get_history")
        for client in (append_client, history_client):
            if not client.wait_for_service(timeout_sec=30):
                raise SystemExit("memory_node did not start")

        def call(client, request):
            for _attempt in range(20):  # the first reply after discovery can be lost
                try:
                    return _wait_future(client.call_async(request), 1.0, "memory")
                except Exception:
                    continue
            raise SystemExit("memory_node does not answer")

        call(history_client, GetHistory.Request(session_id="s0"))
        call(
            append_client,
            AppendTurn.Request(turn=Turn(session_id="warm", role="user", text="warm-up")),
        )

        def append(i: int, session: str) -> None:
            response = call(
                append_client,
                AppendTurn.Request(
                    turn=Turn(session_id=session, role="user", text=f"service turn {i}")
                ),
            )
            assert response.success, response.error

        def fetch(session: str) -> None:
            assert call(
                history_client, GetHistory.Request(session_id=session, max_turns=20)
            ).success

        return measure(samples, append, fetch)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        node_proc.send_signal(signal.SIGINT)
        try:
            node_proc.wait(10)
        except subprocess.TimeoutExpired:
            node_proc.kill()


def bench_store(path: Path, synchronous: str, args: argparse.Namespace) -> None:
    store = MemoryStore(path, synchronous=synchronous)
    fill(store, args.turns, 1000)
    figures = measure(
        args.samples,
        lambda i, session: store.append_turn(session, "user", f"new turn {i}"),
        lambda session: store.history(session, max_turns=20),
    )
    report(f"store {synchronous}", store.turn_count(), figures)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for synchronous in ("FULL", "NORMAL"):
            bench_store(Path(folder) / f"memory-{synchronous}.db", synchronous, args)
        path = Path(folder) / "memory-FULL.db"
        figures = bench_service(path, args.samples)
        report("memory_node service", MemoryStore(path).turn_count(), figures)


if __name__ == "__main__":
    main()
