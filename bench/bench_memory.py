"""Memory store latency with a large history: append and history fetch, p50 and p99.

    .venv/bin/python bench/bench_memory.py [--turns 100000] [--samples 500]

Fills a fresh SQLite file with --turns turns spread over 1,000 sessions (bulk, untimed),
then times single appends (each committed to disk before it returns, synchronous=FULL and
NORMAL) and history fetches of the last 20 turns of random sessions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from smolfusion_ros.memory.store import MemoryStore


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for synchronous in ("FULL", "NORMAL"):
            path = Path(folder) / f"memory-{synchronous}.db"
            store = MemoryStore(path, synchronous=synchronous)
            fill(store, args.turns, 1000)
            appends, fetches = [], []
            started = time.perf_counter()
            for i in range(args.samples):
                session = f"s{random.randrange(1000)}"
                t0 = time.perf_counter()
                store.append_turn(session, "user", f"new turn {i}", source="bench")
                appends.append(time.perf_counter() - t0)
            append_wall = time.perf_counter() - started
            for _ in range(args.samples):
                session = f"s{random.randrange(1000)}"
                t0 = time.perf_counter()
                store.history(session, max_turns=20)
                fetches.append(time.perf_counter() - t0)
            print(
                f"synchronous={synchronous} stored={store.turn_count()} "
                f"append p50={percentile(appends, 0.5) * 1e3:.2f} ms "
                f"p99={percentile(appends, 0.99) * 1e3:.2f} ms "
                f"rate={args.samples / append_wall:.0f}/s | history(20) "
                f"p50={percentile(fetches, 0.5) * 1e3:.2f} ms "
                f"p99={percentile(fetches, 0.99) * 1e3:.2f} ms "
                f"mean={statistics.mean(fetches) * 1e3:.2f} ms"
            )
            store.close()


if __name__ == "__main__":
    main()
