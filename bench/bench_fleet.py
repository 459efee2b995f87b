"""Many robots, one model server: llama-server --parallel N vs every robot running its own model.

For 1, 2, 4 and 8 robots talking at the same time, on this machine and with the same model
(SmolLM2-135M-Instruct Q4_1) and the same greedy questions:
  shared     one llama-server (scripts/build_llama_server.sh) with --parallel N (continuous
             batching) and every core's thread; each robot is a process with the project's
             remote back end (llm.backend openai) streaming over loopback HTTP.
  in-process each robot is a process with its own llama.cpp model (llm.backend llama_cpp), the
             cores split fairly: max(1, cores // N) threads each (stated in the output).
Every robot process loads first, then all start together and each asks `--chats` questions in a
row. Measured: aggregate tokens/s (all robots' streamed tokens / wall time from the start to
the last answer) and each robot's median and p95 first-token time. Setups alternate order per
repetition (shared first, then in-process first), so drift from other load hits both.

The HTTP hop: one robot through the remote back end vs in-process, both with every core,
total time per answer (median), same questions.

What this measures is the serving engine's batching against N independent models sharing the
same cores; the shared side includes the HTTP/SSE and JSON cost of every token. Targets: shared
aggregate tokens/s >= 1.5x in-process at 4 robots; one robot remote/in-process total <= 1.10x.

`--cores N` (default: all) is the server's thread count and the total the in-process robots
split. llama.cpp's threads wait for each other at every step: on a machine loaded by other
work, 2-thread runs (server or robot) slowed 10x here while 1-thread runs did not, so read the
load printed before and after, and measure on a quiet machine.

    .venv/bin/python bench/bench_fleet.py                  # 1, 2, 4, 8 robots, 2 repetitions
    .venv/bin/python bench/bench_fleet.py --robots 4 --reps 1 --chats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

SYSTEM = "You are a friendly robot in a museum. Answer in two or three sentences."
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "What do bees make, and how?",
    "How many legs does a spider have?",
    "What is the tallest mountain on Earth?",
    "Can you tell me a fun fact about octopuses?",
    "What is the boiling point of water?",
    "Who painted the Mona Lisa?",
    "What is photosynthesis?",
    "How far is the Moon from the Earth?",
    "What is the largest ocean?",
    "Why do leaves change colour in autumn?",
]


# ------------------------------------------------------------------------------- robot process
def robot_main(args: argparse.Namespace) -> None:
    """One robot: load its back end, say ready, wait for 'go', ask its questions, report."""
    import threading as _threading

    from smolfusion_ros.backends.llm.base import GenerationSettings

    if args.url:
        from smolfusion_ros.backends.llm.openai_backend import OpenAIChatBackend

        backend = OpenAIChatBackend(args.url, n_ctx=args.ctx, retries=0, timeout_s=600)
    else:
        from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend

        backend = LlamaCppChatBackend(args.model, n_ctx=args.ctx, n_threads=args.threads)
    backend.load()
    settings = GenerationSettings(max_tokens=args.max_tokens, temperature=0.0, seed=1)
    # Warm-up (not measured): the first evaluation of the shared system prompt.
    for _ in backend.stream_chat(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello"}],
        GenerationSettings(max_tokens=2, temperature=0.0),
        _threading.Event(),
    ):
        pass
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    chats = []
    for index in range(args.chats):
        question = QUESTIONS[(args.robot * args.chats + index) % len(QUESTIONS)]
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        start = time.monotonic()
        first = None
        tokens = 0
        for _delta in backend.stream_chat(messages, settings, _threading.Event()):
            if first is None:
                first = time.monotonic() - start
            tokens += 1
        chats.append({"ttft": first or 0.0, "total": time.monotonic() - start, "tokens": tokens})
    print(json.dumps({"chats": chats, "end": time.time()}), flush=True)
    backend.close()


# ------------------------------------------------------------------------------ orchestration
def run_robots(n: int, url: str, model: str, threads: int, opts) -> dict:
    procs = []
    for robot in range(n):
        cmd = [sys.executable, "-P", __file__, "--robot-worker", "--robot", str(robot)]
        cmd += ["--model", model, "--threads", str(threads), "--ctx", str(opts.ctx)]
        cmd += ["--chats", str(opts.chats), "--max-tokens", str(opts.max_tokens)]
        if url:
            cmd += ["--url", url]
        procs.append(
            subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    try:
        for proc in procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a robot process failed to start ({line!r})")
        start = time.time()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(proc.stdout.readline()) for proc in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    wall = max(r["end"] for r in reports) - start
    tokens = sum(c["tokens"] for r in reports for c in r["chats"])
    per_robot = [[c["ttft"] for c in r["chats"]] for r in reports]
    totals = [c["total"] for r in reports for c in r["chats"]]
    return {
        "tokens_per_s": tokens / wall,
        "tokens": tokens,
        "wall": wall,
        "ttft_median": [statistics.median(t) for t in per_robot],
        "ttft_p95": [percentile(t, 95) for t in per_robot],
        "total_median": statistics.median(totals),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def shared(n: int, binary, model: str, cores: int, opts) -> dict:
    from llama_server import LlamaServer

    extra = ("--poll", str(opts.poll)) if opts.poll >= 0 else ()
    server = LlamaServer(
        binary, Path(model), parallel=n, ctx_per_slot=opts.ctx, threads=cores, extra=extra
    )
    server.start()
    try:
        return run_robots(n, server.base_url, model, cores, opts)
    finally:
        server.stop()


def merge(runs: list[dict]) -> dict:
    """Repetitions together: tokens/s and ratios from the sums; first tokens from all chats."""
    return {
        "tokens_per_s": sum(r["tokens"] for r in runs) / sum(r["wall"] for r in runs),
        "ttft_median": [
            statistics.median(v) for v in zip(*(r["ttft_median"] for r in runs), strict=True)
        ],
        "ttft_p95": [max(v) for v in zip(*(r["ttft_p95"] for r in runs), strict=True)],
        "total_median": statistics.median(r["total_median"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--robots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--chats", type=int, default=3, help="questions per robot per run")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ctx", type=int, default=1024, help="context per robot / slot")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--poll",
        type=int,
        default=-1,
        help="llama-server --poll level (0-100; llama.cpp busy-waits at 50 by default, which "
        "starves clients that share the server's cores); -1 = llama.cpp's default",
    )
    # robot worker mode (internal)
    parser.add_argument("--robot-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--robot", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.robot_worker:
        robot_main(opts)
        return

    from llama_server import llama_server_binary, smollm2_path

    binary = llama_server_binary()
    model = str(smollm2_path())
    cores = opts.cores
    poll = "default" if opts.poll < 0 else str(opts.poll)
    print(
        f"model {Path(model).name}; {cores} cores; llama-server --poll {poll}; "
        f"load before: {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{opts.chats} questions per robot, {opts.max_tokens} tokens max, greedy; "
        f"{opts.reps} repetitions, order alternating\n"
    )
    results: dict[int, dict[str, list[dict]]] = {}
    for n in opts.robots:
        local_threads = max(1, cores // n)
        results[n] = {"shared": [], "local": []}
        for rep in range(opts.reps):
            order = ["shared", "local"] if rep % 2 == 0 else ["local", "shared"]
            for setup in order:
                if setup == "shared":
                    run = shared(n, binary, model, cores, opts)
                else:
                    run = run_robots(n, "", model, local_threads, opts)
                results[n][setup].append(run)
                print(
                    f"  {n} robots rep {rep + 1} {setup:6}: {run['tokens_per_s']:7.1f} tokens/s, "
                    f"wall {run['wall']:.1f} s",
                    flush=True,
                )
    print()
    header = (
        f"{'robots':>6} | {'shared tok/s':>12} | {'in-proc tok/s':>13} | {'ratio':>5} | "
        f"{'shared TTFT med/p95 (worst robot)':>34} | {'in-proc TTFT med/p95':>22} | threads"
    )
    print(header)
    print("-" * len(header))
    merged = {}
    for n, runs in results.items():
        s, loc = merge(runs["shared"]), merge(runs["local"])
        merged[n] = (s, loc)
        print(
            f"{n:>6} | {s['tokens_per_s']:>12.1f} | {loc['tokens_per_s']:>13.1f} | "
            f"{s['tokens_per_s'] / loc['tokens_per_s']:>5.2f} | "
            f"{max(s['ttft_median']):>15.3f} / {max(s['ttft_p95']):<16.3f} | "
            f"{max(loc['ttft_median']):>9.3f} / {max(loc['ttft_p95']):<10.3f} | "
            f"server {cores}, robot {max(1, cores // n)}"
        )
    print()
    if 4 in merged:
        s, loc = merged[4]
        ratio = s["tokens_per_s"] / loc["tokens_per_s"]
        verdict = "met" if ratio >= 1.5 else "NOT met"
        print(
            f"4 robots, shared/in-process aggregate tokens/s: {ratio:.2f}x "
            f"(target >= 1.5x: {verdict})"
        )
    if 1 in merged:
        s, loc = merged[1]
        ratio = s["total_median"] / loc["total_median"]
        verdict = "met" if ratio <= 1.10 else "NOT met"
        print(
            f"1 robot, remote/in-process total per answer: {s['total_median']:.3f} s / "
            f"{loc['total_median']:.3f} s = {ratio:.2f}x (target <= 1.10x: {verdict})"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}\n")
    print("Sizing a fleet (from these numbers, this machine, this model):")
    for budget in (0.5, 1.0, 2.0):
        fits = [n for n, (s, _l) in merged.items() if max(s["ttft_p95"]) <= budget]
        if fits:
            best = max(fits)
            s = merged[best][0]
            print(
                f"  first-token p95 <= {budget:.1f} s: up to {best} robots talking at once "
                f"(measured {max(s['ttft_p95']):.2f} s, {s['tokens_per_s']:.0f} tokens/s shared)"
            )
        else:
            print(f"  first-token p95 <= {budget:.1f} s: not reached even by 1 robot here")


if __name__ == "__main__":
    main()
