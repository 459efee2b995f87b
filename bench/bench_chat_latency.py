"""Latency of one answer through the fusion node versus llama-cpp-python called directly.

Both paths run in ONE run on the same machine, with the same GGUF model, the same llama.cpp
settings (n_ctx, n_threads, n_batch, top_p, top_k, repeat_penalty), greedy decoding
(temperature 0, fixed seed) and the SAME PROMPT, so both produce the same tokens, which the
bench checks pair by pair.

The same prompt: the node's prompt is the persona's system message plus one user message
that carries the turn's context block in front of the question (core.prompt). For cpu_demo
without a camera frame that block says "no camera image is available ..." (the engine's
grounding, so the model does not invent a scene). The bench does not copy that logic: it asks
the node once per question (a 4-token chat, before measuring) which scene text went into the
prompt (Chat.scene_text), builds the direct messages with core.prompt.build_messages from
that text and the persona's system prompt, and checks every measured ROS answer's
scene_text, knowledge_ids and source again: a pair whose prompts could differ is reported as
such, and the ratios are flagged as not comparable unless every pair answered the same
prompt with identical text.

Paths measured, all timed in this (client) process with time.monotonic():

* direct      - ``Llama.create_chat_completion(..., stream=True)`` in this process, exactly as
                the node's llama.cpp back end calls it; first token = first content delta.
* ROS action  - ``converse`` goal through SmolFusionClient; first token = first feedback
                message, total = until the result has arrived (goal sent -> result).
* ROS service - ``chat`` service round trip through SmolFusionClient (total only; the node's
                own ttft_s / latency_s from the response are reported alongside).

The node (``smolfusion_ros.nodes.fusion_node``) runs as a subprocess with
``--params-file config/cpu_demo.yaml`` (memory, the perception vision worker without frames,
rules, knowledge lookup without a knowledge_node) and the llm.* settings overridden to match
the direct baseline, on an isolated ROS domain (random ROS_DOMAIN_ID, discovery limited to
localhost).

Measurements are interleaved against drift. Each repetition answers two questions on both
paths: question A direct and through the action, question B direct and through the service
(which of direct / ROS goes first alternates per repetition). Both models therefore see the
same sequence of prompts, so llama.cpp's prompt-prefix cache is in the same state for the
paired calls. Every ROS call uses a new session id, so no history accumulates. The first
``--warmup`` repetitions (default 2) are discarded. Only one model generates at a time; an
idle model costs no CPU. On a 2-core machine llama.cpp slows down 10-100x when any other
process computes, so before each call the bench waits (up to ``--quiet-timeout`` s) until
other processes use < 10 % of the CPUs, and it counts the samples disturbed anyway.

Ratios (medians): total_ratio = ROS service total / direct total (target <= 1.10);
ttft_ratio = ROS action first token / direct first token (target <= 1.25). Raw samples and
summary go to bench/results/chat_latency.json; the node's log to bench/results/.

Where the time goes (--trace): the node then runs through bench/_chat_trace.py, which wraps
the engine's and the back end's methods in the node's process (nothing in the package
changes) and writes one timeline per request: submitted -> taken up by the engine thread ->
session switched (use_session: saving the previous session's KV state) -> back end called ->
first token, the prompt tokens evaluated and held in the KV cache, whether background work
(prefill, warm-up, summary) was running at submission, every background step, the action
server's goal/result requests and feedback on the same clock, and the node's CPU time up to
the first token (per thread with --trace-threads). With the client's own times (one monotonic clock)
it also splits off the hops: client call -> engine submission and node first token -> client.
Diagnostic switches (need --trace): --no-background (the engine does no idle work),
--action-delay-s S (every second goal reaches the engine S late, after the action protocol's
own messages: is the overlap what costs?), --eager-save (prototype: a session's KV state is
saved after its answer instead of inside the next request's first-token time). --settle-s
pauses before each call, as a person's pause would, so idle work can finish.

Run from the repository root (after ./scripts/bootstrap.sh):

    .venv/bin/python bench/bench_chat_latency.py                  # 10 repetitions
    .venv/bin/python bench/bench_chat_latency.py --reps 20 --max-tokens 128 --threads 2
    .venv/bin/python -P bench/bench_chat_latency.py --reps 24 --max-tokens 8 --trace \
        --action-delay-s 0.1 --eager-save           # where the first-token time goes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # bench/_common.py, also under `python -P`
from _common import CpuMonitor, load_text  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
PROMPTS = (
    "What is the capital of France?",
    "Tell me something about robots.",
    "How do I make tea?",
)
SEED = 42
NODE_MODULE = "smolfusion_ros.nodes.fusion_node"
TOTAL_TARGET = 1.10
TTFT_TARGET = 1.25
QUIET_THRESHOLD = 0.10  # wait before each call until others use < 10 % of all CPUs
DISTURBED = 0.15  # a sample during which others used more than this is "disturbed"


@dataclass
class Sample:
    path: str
    rep: int
    prompt: str
    ttft_s: float | None  # client-side first token (None: not observable on this path)
    total_s: float  # client-side total
    tokens: int
    reply: str
    server_ttft_s: float | None = None
    server_latency_s: float | None = None
    foreign_cpu: float = 0.0  # share of all CPUs used by other processes meanwhile (0..1)
    # CPU seconds this (client) process and the node process used during the call: on a
    # ROS path the client's is ROS overhead competing with the node's llama.cpp threads;
    # on the direct path the node's is idle work competing with the direct model.
    client_cpu_s: float = 0.0
    node_cpu_s: float = 0.0
    # Tokens evaluated before the first token (direct: counted here; ROS: see --trace).
    prompt_tokens_evaluated: int | None = None
    # time.monotonic() when the call began (CLOCK_MONOTONIC is one clock for all processes on
    # Linux, so --trace can place the node's timeline on the client's).
    started_at: float = 0.0
    # What went into the prompt besides the question: the scene text of the context block
    # (direct: the one the bench sent; ROS: the one the node reports it used), the knowledge
    # chunks the node added and whether the LLM answered at all (source "llm", not a rule).
    scene_text: str = ""
    knowledge_ids: list[str] = field(default_factory=list)
    source: str = "llm"


# --------------------------------------------------------------------------- setup
def isolate_ros_environment() -> dict[str, str]:
    """Private ROS domain on localhost; must run before rclpy is imported."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(100, 200))
    os.environ.pop("ROS_STATIC_PEERS", None)
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    return dict(os.environ)


def params_file() -> Path:
    checkout = ROOT / "config" / "cpu_demo.yaml"
    if checkout.is_file():
        return checkout
    from smolfusion_ros.paths import config_path

    return config_path("cpu_demo.yaml")


def llm_settings(args: argparse.Namespace, yaml_path: Path) -> dict:
    """llm.* from the demo profile, with greedy decoding and the command-line overrides."""
    from smolfusion_ros.core.profile import Profile

    # The same reader the bringup and the launch file use (keys are "/**/fusion_node").
    profile = Profile("bench", "", yaml_path, ("fusion_node",))
    llm = dict(profile.node_parameters("fusion_node")["llm"])
    llm.update(model=args.model, n_threads=args.threads, temperature=0.0, seed=SEED)
    llm["model_path"] = ""
    llm["n_gpu_layers"] = 0
    return llm


def start_node(
    llm: dict, yaml_path: Path, env: dict, log_path: Path, trace: Path | None = None
) -> subprocess.Popen:
    overrides = [
        "llm.model",
        "llm.n_ctx",
        "llm.n_threads",
        "llm.n_batch",
        "llm.n_gpu_layers",
        "llm.temperature",
        "llm.top_p",
        "llm.top_k",
        "llm.repeat_penalty",
        "llm.seed",
    ]
    # --trace: the same node through bench/_chat_trace.py, which wraps the engine's methods
    # in that process to write a per-request timeline (nothing in the package changes).
    entry = [str(ROOT / "bench" / "_chat_trace.py")] if trace else ["-m", NODE_MODULE]
    cmd = [
        sys.executable,
        *entry,
        "--ros-args",
        "--params-file",
        str(yaml_path),
    ]
    for name in overrides:
        value = llm[name.split(".", 1)[1]]
        if isinstance(value, float):
            value = repr(float(value))
        cmd += ["-p", f"{name}:={value}"]
    log_path.write_text(" ".join(cmd) + "\n")
    # Not the checkout root as cwd: `-m` would import the source tree, which lacks the
    # generated interfaces, instead of the package installed in the venv.
    # A fresh ROS_HOME: the node keeps conversations in its memory database, and history from
    # an earlier run would lengthen this run's prompts (the direct baseline has none).
    env = env | {"ROS_HOME": tempfile.mkdtemp(prefix="bench-chat-ros-home-")}
    if trace:
        trace.write_text("")
        env["SMOLFUSION_CHAT_TRACE"] = str(trace)
    with open(log_path, "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, env=env, cwd=log_path.parent, stdout=log, stderr=subprocess.STDOUT
        )


def process_cpu_s(pid: int) -> float:
    """CPU seconds all threads of `pid` ran so far (schedstat: ns resolution; a call lasts
    tens of ms and stat's ticks are 10 ms)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_node(client, proc: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> None:
    from smolfusion_ros.client import ClientError

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(
                f"fusion node exited with {proc.returncode}; log:\n" + log_path.read_text()[-3000:]
            )
        try:
            client.wait_for_servers(timeout=1.0)
            break
        except ClientError:
            if time.monotonic() > deadline:
                raise
    client.wait_until_ready(max(5.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------- one answer
def direct_answer(
    llm,
    messages: list[dict],
    settings: dict,
    max_tokens: int,
    rep: int,
    prompt: str,
    scene_text: str,
) -> Sample:
    """What LlamaCppChatBackend.stream_chat does, timed from the call to the last delta."""
    parts: list[str] = []
    first = prompt_evaluated = None
    evaluated = getattr(llm, "evaluated_tokens", None)
    if evaluated is not None:
        evaluated.clear()
    start = time.monotonic()
    stream = llm.create_chat_completion(
        messages=messages,
        max_tokens=max_tokens,
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        top_k=settings["top_k"],
        repeat_penalty=settings["repeat_penalty"],
        stream=True,
        seed=settings["seed"],
    )
    try:
        for chunk in stream:
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                if first is None:
                    first = time.monotonic()
                    prompt_evaluated = sum(evaluated) if evaluated is not None else None
                parts.append(delta)
    finally:
        stream.close()
    end = time.monotonic()
    return Sample(
        "direct",
        rep,
        prompt,
        (first or end) - start,
        end - start,
        len(parts),
        "".join(parts).strip(),
        scene_text=scene_text,
        prompt_tokens_evaluated=prompt_evaluated,
    )


def count_evaluations(llm) -> None:
    """Record how many tokens each llm.eval call evaluates (llama-cpp-python evaluates the
    part of the prompt its KV cache does not hold in one call before the first token), so the
    direct path's prompt work can be set beside the node's (--trace)."""
    llm.evaluated_tokens = []
    evaluate = llm.eval

    def counting_eval(tokens) -> None:
        llm.evaluated_tokens.append(len(tokens))
        evaluate(tokens)

    llm.eval = counting_eval


def ros_action_answer(client, text: str, session_id: str, max_tokens: int, rep: int) -> Sample:
    feedback_at: list[float] = []
    start = time.monotonic()
    handle = client.converse(
        text,
        session_id=session_id,
        max_tokens=max_tokens,
        on_feedback=lambda _fb: feedback_at.append(time.monotonic()),
    )
    result = handle.result(timeout=120.0)
    end = time.monotonic()
    if not result.success:
        raise RuntimeError(f"converse failed: {result.error}")
    first = min(feedback_at) if feedback_at else end
    return Sample(
        "ros_action",
        rep,
        text,
        first - start,
        end - start,
        result.tokens,
        result.reply,
        result.ttft_s,
        result.latency_s,
        scene_text=result.scene_text,
        knowledge_ids=list(result.knowledge_ids),
        source=result.source,
        started_at=start,
    )


def ros_service_answer(client, text: str, session_id: str, max_tokens: int, rep: int) -> Sample:
    start = time.monotonic()
    response = client.chat(text, session_id=session_id, max_tokens=max_tokens, timeout=120.0)
    end = time.monotonic()
    if not response.success:
        raise RuntimeError(f"chat failed: {response.error}")
    return Sample(
        "ros_service",
        rep,
        text,
        None,
        end - start,
        response.tokens,
        response.reply,
        response.ttft_s,
        response.latency_s,
        scene_text=response.scene_text,
        knowledge_ids=list(response.knowledge_ids),
        source=response.source,
        started_at=start,
    )


# ---------------------------------------------------------------- the same prompt
def probe_contexts(client, prompts: tuple[str, ...]) -> dict[str, str]:
    """The scene text the node puts into each question's context block, asked from the node.

    A short chat per question in a session of its own (so nothing accumulates in the
    sessions measured later). The node reports the scene text it used (Chat.scene_text): for
    cpu_demo without camera frames the engine's "no camera image is available" grounding.
    Questions answered by a rule instead of the LLM, or given knowledge chunks (which the
    response names by id only), cannot be reproduced directly: the bench stops with the reason.
    """
    contexts = {}
    for i, prompt in enumerate(prompts):
        # 4 tokens, not 1: a first token of only whitespace would be an empty reply (an error).
        response = client.chat(prompt, session_id=f"bench-probe-{i}", max_tokens=4, timeout=120.0)
        if not response.success:
            raise SystemExit(f"probe {prompt!r} failed: {response.error}")
        if response.source != "llm":
            raise SystemExit(f"{prompt!r} is answered by {response.source!r}, not the LLM")
        if response.knowledge_ids:
            raise SystemExit(
                f"{prompt!r} got knowledge chunks {list(response.knowledge_ids)}: the direct "
                "path cannot rebuild their text; run without a knowledge_node"
            )
        contexts[prompt] = response.scene_text
    return contexts


def direct_messages(llm, system_prompt: str, prompt: str, scene_text: str, max_tokens: int):
    """The node's messages for a first turn, built by the node's own prompt module."""
    from smolfusion_ros.core.prompt import build_messages

    return build_messages(
        system_prompt,
        [],
        prompt,
        scene_text=scene_text,
        context_size=llm.n_ctx(),
        reserve_tokens=max_tokens,
        count_tokens=lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=True)),
    )


def same_prompt(direct: Sample, ros: Sample) -> bool:
    """Did both paths evaluate the same messages? (persona + one context block + question)"""
    return (
        direct.prompt == ros.prompt
        and ros.source == "llm"
        and not ros.knowledge_ids
        and ros.scene_text == direct.scene_text
    )


# ------------------------------------------------------------------------- report
def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def summarise(samples: list[Sample]) -> dict:
    return {
        "n": len(samples),
        "ttft_s": median([s.ttft_s for s in samples]),
        "total_s": median([s.total_s for s in samples]),
        "server_ttft_s": median([s.server_ttft_s for s in samples]),
        "server_latency_s": median([s.server_latency_s for s in samples]),
        "tokens": median([s.tokens for s in samples]),
        "client_cpu_s": median([s.client_cpu_s for s in samples]),
        "node_cpu_s": median([s.node_cpu_s for s in samples]),
        "prompt_tokens_evaluated": median([s.prompt_tokens_evaluated for s in samples]),
    }


def print_table(rows: list[tuple[str, dict]]) -> None:
    header = (
        f"{'path':<34}{'n':>4}{'TTFT ms':>10}{'total ms':>10}"
        f"{'node TTFT':>11}{'node total':>12}{'tokens':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, s in rows:
        tokens = "-" if s["tokens"] is None else f"{s['tokens']:g}"
        print(
            f"{label:<34}{s['n']:>4}{ms(s['ttft_s']):>10}{ms(s['total_s']):>10}"
            f"{ms(s['server_ttft_s']):>11}{ms(s['server_latency_s']):>12}{tokens:>8}"
        )


def trace_summary(path: Path, warmup: int, samples: list[Sample]) -> dict:
    """Medians of the node's per-request timeline (bench/_chat_trace.py) by path, from
    submission (ms): taken up by the engine thread, session switched, back end called,
    first token; prompt tokens evaluated; background work running at submission; CPU ms
    per thread class up to the first token."""
    answers, background = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "answer":
            answers.append(record)
        elif record["kind"] == "background":
            background.append(record)
    out: dict = {"background_steps": {}}
    for record in background:
        what = record["what"].split(":", 1)[0]
        entry = out["background_steps"].setdefault(what, {"n": 0, "preempted": 0, "ms": []})
        entry["n"] += 1
        entry["preempted"] += int(record["preempted"])
        entry["ms"].append(record["ms"])
    for entry in out["background_steps"].values():
        entry["ms"] = median(entry["ms"])
    # The client's side of each traced request (same monotonic clock): the hop from the
    # call to the engine's submission, and from the node's first token to the client's.
    calls = {
        f"bench-{s.rep + warmup}-{s.path.removeprefix('ros_')}": s
        for s in samples
        if s.path.startswith("ros_")
    }
    for record in answers:
        call = calls.get(record["session"])
        if call is None or not call.started_at:
            continue
        record["call_to_submit_ms"] = (record["submitted"] - call.started_at) * 1000
        if call.ttft_s is not None and "first_token_ms" in record:
            record["node_first_token_to_client_ms"] = (
                call.started_at + call.ttft_s - record["submitted"]
            ) * 1000 - record["first_token_ms"]
    measured = {session for session, call in calls.items() if call.rep >= 0}
    # One group per path and diagnostic condition (--action-delay-s, --eager-save).
    groups = [
        (source, delayed, reused)
        for source in ("action", "service")
        for delayed in (False, True)
        for reused in (False, True)
    ]
    for source, delayed, reused in groups:
        rows = [
            r
            for r in answers
            if r["source"] == source
            and r.get("delayed", False) == delayed
            and bool(r.get("snapshot_reused")) == reused
            and r["session"] in measured
        ]
        if not rows:
            continue
        summary: dict = {"n": len(rows)}
        for key in (
            "taken_up_ms",
            "use_session_ms",
            "session_switched_ms",
            "backend_called_ms",
            "first_token_ms",
            "prompt_tokens_evaluated",
            "prompt_tokens",
            "n_tokens_cached",
            "call_to_submit_ms",
            "node_first_token_to_client_ms",
        ):
            summary[key] = median([r.get(key) for r in rows])
        summary["background_at_submit"] = sum(bool(r["background_running"]) for r in rows)
        summary["engine_busy_at_submit"] = sum(bool(r["engine_busy"]) for r in rows)
        classes = sorted({c for r in rows for c in r.get("cpu_to_first_token", {})})
        summary["cpu_ms_to_first_token"] = {
            c: round(1000 * median([r.get("cpu_to_first_token", {}).get(c, 0.0) for r in rows]), 2)
            for c in classes
        }
        summary["cpu_ms_to_first_token_total"] = round(
            1000 * median([sum(r.get("cpu_to_first_token", {}).values()) for r in rows]), 2
        )
        label = source + (" (submission delayed)" if delayed else "")
        label += " (KV snapshot reused)" if reused else ""
        out[label] = summary
    return out


def ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="measured repetitions (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="discarded repetitions before measuring (default 2)"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (default 64)")
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="model id from the catalogue (default smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="llama.cpp threads for both paths (default 2)"
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=60.0,
        help="longest wait for a quiet machine before each call, s (default 60)",
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=0.0,
        help="pause before each call once the machine is quiet, s (default 0): what a person's "
        "pause gives the node's idle work (session prefix, summaries) to finish",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the node through bench/_chat_trace.py: a per-request timeline inside the "
        "node (queue, session switch, first token, prompt tokens evaluated, background work "
        "running at submission, CPU per thread), summarised at the end",
    )
    parser.add_argument(
        "--no-background",
        action="store_true",
        help="with --trace: the node's engine does no background work (A/B of idle work)",
    )
    parser.add_argument(
        "--action-delay-s",
        type=float,
        default=0.0,
        help="with --trace: every second converse goal is submitted to the engine this many "
        "seconds late, after the action protocol's messages (diagnostic of CPU contention)",
    )
    parser.add_argument(
        "--eager-save",
        action="store_true",
        help="with --trace: prototype fix, the node saves a session's KV state right after "
        "half of the answers (drawn) instead of when the next request of another session starts",
    )
    parser.add_argument(
        "--trace-threads",
        action="store_true",
        help="with --trace: CPU per node thread up to the first token (reads /proc per thread, "
        "~1.5 ms on the request's path, which lengthens the hops measured)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR / "chat_latency.json",
        help="JSON results file (default bench/results/chat_latency.json)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    diagnostics = args.no_background or args.action_delay_s or args.eager_save or args.trace_threads
    if diagnostics and not args.trace:
        raise SystemExit(
            "--no-background, --action-delay-s, --eager-save and --trace-threads need --trace"
        )
    env = isolate_ros_environment()

    from llama_cpp import Llama

    from smolfusion_ros.catalogue import resolve_model
    from smolfusion_ros.client import SmolFusionClient
    from smolfusion_ros.core.personas import load_personas
    from smolfusion_ros.paths import config_path

    yaml_path = params_file()
    settings = llm_settings(args, yaml_path)
    model_path = resolve_model(args.model)
    system_prompt = load_personas(config_path("personas.yaml")).get("").render_system_prompt()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS_DIR / "chat_latency_fusion_node.log"

    print(
        f"model {model_path.name}, threads={settings['n_threads']}, n_ctx={settings['n_ctx']}, "
        f"n_batch={settings['n_batch']}, temperature=0, seed={SEED}, "
        f"max_tokens={args.max_tokens}, reps={args.reps} (+{args.warmup} warm-up), "
        f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, cpus={os.cpu_count()}"
    )
    load_start = load_text()
    print(load_start)

    trace_path = RESULTS_DIR / "chat_latency_trace.jsonl" if args.trace else None
    node_env = env | ({"SMOLFUSION_TRACE_NO_BACKGROUND": "1"} if args.no_background else {})
    if args.eager_save:
        node_env["SMOLFUSION_TRACE_EAGER_SAVE"] = "1"
    if args.trace_threads:
        node_env["SMOLFUSION_TRACE_THREAD_CPU"] = "1"
    if args.action_delay_s > 0:
        node_env["SMOLFUSION_TRACE_ACTION_DELAY_S"] = str(args.action_delay_s)
    proc = start_node(settings, yaml_path, node_env, log_path, trace_path)
    llm = client = None
    samples: list[Sample] = []
    waited = 0.0
    try:
        # The direct model loads while the node loads its own.
        llm = Llama(
            model_path=str(model_path),
            n_ctx=settings["n_ctx"],
            n_threads=settings["n_threads"],
            n_threads_batch=settings["n_threads"],
            n_batch=settings["n_batch"],
            n_gpu_layers=0,
            verbose=False,
        )
        count_evaluations(llm)
        client = SmolFusionClient()
        wait_for_node(client, proc, log_path)
        monitor = CpuMonitor([os.getpid(), proc.pid])
        contexts = probe_contexts(client, PROMPTS)
        for prompt, scene in contexts.items():
            print(f"node's context for {prompt!r}: {scene!r}")

        for rep in range(args.warmup + args.reps):
            prompt_a = PROMPTS[(2 * rep) % len(PROMPTS)]
            prompt_b = PROMPTS[(2 * rep + 1) % len(PROMPTS)]
            label = rep - args.warmup  # negative = warm-up

            def direct(prompt: str, label: int = label) -> Sample:
                scene = contexts[prompt]
                messages = direct_messages(llm, system_prompt, prompt, scene, args.max_tokens)
                return direct_answer(llm, messages, settings, args.max_tokens, label, prompt, scene)

            def action(prompt: str, label: int = label, rep: int = rep) -> Sample:
                return ros_action_answer(
                    client, prompt, f"bench-{rep}-action", args.max_tokens, label
                )

            def service(prompt: str, label: int = label, rep: int = rep) -> Sample:
                return ros_service_answer(
                    client, prompt, f"bench-{rep}-service", args.max_tokens, label
                )

            direct_first = rep % 2 == 0
            for prompt, ros_call, pair in (
                (prompt_a, action, "direct_vs_action"),
                (prompt_b, service, "direct_vs_service"),
            ):
                calls = (direct, ros_call) if direct_first else (ros_call, direct)
                for call in calls:
                    waited += monitor.wait_quiet(QUIET_THRESHOLD, args.quiet_timeout)
                    if args.settle_s > 0:
                        time.sleep(args.settle_s)
                    before = monitor.snapshot()
                    cpu_before = (time.process_time(), process_cpu_s(proc.pid))
                    sample = call(prompt)
                    sample.client_cpu_s = time.process_time() - cpu_before[0]
                    sample.node_cpu_s = process_cpu_s(proc.pid) - cpu_before[1]
                    sample.foreign_cpu = monitor.foreign(before, monitor.snapshot())
                    if sample.path == "direct":
                        sample.path = pair
                    samples.append(sample)
    finally:
        if client is not None:
            client.close()
        stop_node(proc)
        if llm is not None:
            llm.close()

    measured = [s for s in samples if s.rep >= 0]

    def by_path(path: str) -> list[Sample]:
        return [s for s in measured if s.path == path]

    direct_action, direct_service = by_path("direct_vs_action"), by_path("direct_vs_service")
    action, service = by_path("ros_action"), by_path("ros_service")
    summary = {
        "direct": summarise(direct_action + direct_service),
        "direct_vs_action": summarise(direct_action),
        "direct_vs_service": summarise(direct_service),
        "ros_action": summarise(action),
        "ros_service": summarise(service),
    }
    ratios = {
        "total_ratio": ratio(
            summary["ros_service"]["total_s"], summary["direct_vs_service"]["total_s"]
        ),
        "ttft_ratio": ratio(summary["ros_action"]["ttft_s"], summary["direct_vs_action"]["ttft_s"]),
        "action_total_ratio": ratio(
            summary["ros_action"]["total_s"], summary["direct_vs_action"]["total_s"]
        ),
    }
    # Same tokens? Pair each ROS answer with the direct answer to the same prompt and rep.
    pairs = [*zip(direct_action, action, strict=True), *zip(direct_service, service, strict=True)]
    token_match = sum(d.tokens == r.tokens for d, r in pairs)
    text_match = sum(d.reply == r.reply for d, r in pairs)
    prompt_match = sum(same_prompt(d, r) for d, r in pairs)
    identical = sum(
        same_prompt(d, r) and d.reply == r.reply and d.tokens == r.tokens for d, r in pairs
    )
    comparable = bool(pairs) and identical == len(pairs)
    # Per-pair ratios (same prompt, same repetition, back to back): robust against drift.
    paired = {
        "total_ratio": median(
            [ratio(r.total_s, d.total_s) for d, r in zip(direct_service, service, strict=True)]
        ),
        "ttft_ratio": median(
            [ratio(r.ttft_s, d.ttft_s) for d, r in zip(direct_action, action, strict=True)]
        ),
        "action_total_ratio": median(
            [ratio(r.total_s, d.total_s) for d, r in zip(direct_action, action, strict=True)]
        ),
    }
    disturbed = sum(s.foreign_cpu > DISTURBED for s in measured)

    print()
    print_table(
        [
            ("direct llama.cpp (all)", summary["direct"]),
            ("  direct, same prompts as action", summary["direct_vs_action"]),
            ("  direct, same prompts as service", summary["direct_vs_service"]),
            ("ROS converse action", summary["ros_action"]),
            ("ROS chat service", summary["ros_service"]),
        ]
    )
    print("(TTFT/total: client side; node TTFT/total: measured inside the node's engine)")
    print(
        "CPU ms during a call (median), client process / node process: "
        + "; ".join(
            f"{name} {ms(summary[name]['client_cpu_s'])} / {ms(summary[name]['node_cpu_s'])}"
            for name in ("direct_vs_action", "direct_vs_service", "ros_action", "ros_service")
        )
    )
    print(
        "prompt tokens evaluated before the first token (median), direct: "
        f"{summary['direct']['prompt_tokens_evaluated']} (node: see --trace)"
    )
    traced = None
    if trace_path is not None:
        traced = trace_summary(trace_path, args.warmup, samples)
        print(f"node timeline (--trace, {trace_path}):")
        for key, value in traced.items():
            print(f"  {key}: {value}")
    print()
    print(f"tokens per answer  direct/action : {[s.tokens for s in direct_action]}")
    print(f"                   ROS action    : {[s.tokens for s in action]}")
    print(f"                   direct/service: {[s.tokens for s in direct_service]}")
    print(f"                   ROS service   : {[s.tokens for s in service]}")
    print(
        f"same prompt (scene text, no knowledge, LLM answer): {prompt_match}/{len(pairs)}; "
        f"same token count: {token_match}/{len(pairs)}, same text: {text_match}/{len(pairs)}; "
        f"identical answers to the same prompt: {identical}/{len(pairs)}"
    )
    if not comparable:
        print(
            "NOT COMPARABLE: some pairs did not answer the same prompt with the same tokens, so "
            "the ratios below compare different work (see the samples in the JSON file)"
        )
    print()

    def verdict(value: float | None, target: float) -> str:
        if value is None:
            return "n/a"
        if not comparable:
            return f"{value:.3f} (target <= {target:.2f}: not comparable, different work)"
        return f"{value:.3f} (target <= {target:.2f}: {'OK' if value <= target else 'ABOVE'})"

    print(f"total ros_service/direct : {verdict(ratios['total_ratio'], TOTAL_TARGET)}")
    print(f"TTFT  ros_action/direct  : {verdict(ratios['ttft_ratio'], TTFT_TARGET)}")
    print(f"total ros_action/direct  : {verdict(ratios['action_total_ratio'], TOTAL_TARGET)}")
    print(
        "median of per-pair ratios: "
        + ", ".join(f"{k}={'n/a' if v is None else f'{v:.3f}'}" for k, v in paired.items())
    )
    print(
        f"samples disturbed by other processes (> {DISTURBED:.0%} of the CPUs): "
        f"{disturbed}/{len(measured)}; max foreign CPU "
        f"{max((s.foreign_cpu for s in measured), default=0.0):.0%}; "
        f"waited {waited:.1f} s in total for a quiet machine; {load_text()} at the end "
        f"({load_start} at the start)"
    )
    if args.action_delay_s > 0:
        print(
            f"--action-delay-s: every second goal reached the engine {args.action_delay_s} s "
            "late on purpose, so the action figures above are not a measurement of the "
            "action path: read the node timeline"
        )
    if disturbed > len(measured) // 4:
        print(
            "WARNING: other processes used the CPUs during many samples: these figures are "
            "not a quiet measurement and should not be quoted; re-run on a quiet machine"
        )

    report = {
        "benchmark": "chat_latency",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "load_at_start": load_start,
        },
        "config": {
            "model": args.model,
            "model_file": model_path.name,
            "max_tokens": args.max_tokens,
            "reps": args.reps,
            "warmup": args.warmup,
            "llm": settings,
            "prompts": list(PROMPTS),
            "ros_domain_id": int(env["ROS_DOMAIN_ID"]),
        },
        "medians": summary,
        "ratios": ratios,
        "paired_ratios": paired,
        "disturbed_samples": f"{disturbed}/{len(measured)}",
        "quiet_wait_s": waited,
        "settle_s": args.settle_s,
        "trace": traced,
        "no_background": args.no_background,
        "targets": {"total_ratio": TOTAL_TARGET, "ttft_ratio": TTFT_TARGET},
        "same_tokens": f"{token_match}/{len(pairs)}",
        "same_text": f"{text_match}/{len(pairs)}",
        "same_prompt": f"{prompt_match}/{len(pairs)}",
        "identical_answers": f"{identical}/{len(pairs)}",
        "comparable": comparable,
        "contexts": contexts,
        "samples": [asdict(s) for s in samples],
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.output}")

    def fmt(value: float | None) -> str:
        return "nan" if value is None else f"{value:.2f}"

    print(
        f"RESULT total_ratio={fmt(ratios['total_ratio'])} ttft_ratio={fmt(ratios['ttft_ratio'])}"
        f" identical={identical}/{len(pairs)} comparable={comparable}"
        f" disturbed={disturbed}/{len(measured)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
