"""The HTTP gateway's cost: /chat and /chat/stream against fusion_node's chat / converse
called over ROS directly, in the same run, alternating which goes first.

One graph (subprocesses, isolated ROS domain): fusion_node (cpu_demo: SmolLM2-135M, greedy,
fixed seed, so both paths generate the same tokens), memory_node, knowledge_node (with one
small document ingested, so each question pays a real knowledge search, on both paths alike)
and gateway_node on a free port. This process is the client of both paths:

* ROS chat      - Chat service round trip (SmolFusionClient.chat); total time.
* HTTP /chat    - POST /chat over loopback HTTP; total time.
* ROS converse  - converse goal; first token = first feedback message.
* HTTP stream   - POST /chat/stream; first token = first 'token' server-sent event.
* rule answers  - "What's your name?" (answered by the rule book, no LLM) over HTTP /chat and
                  over the ROS chat service: client-side latency, alternating which goes
                  first. HTTP twice: on one kept-alive connection (as a browser's fetch or a
                  requests.Session sends them) and on a new connection per request.
* knowledge     - fusion_node's knowledge_node search time per question (its /diagnostics),
                  i.e. what retrieval adds to the first token.

Each repetition asks a new question pair on a new session id; the order (ROS first or HTTP
first) alternates per repetition. Ratios are medians: total = HTTP /chat / ROS chat (target
<= 1.05), first token = HTTP stream / ROS converse (target <= 1.10). What is measured is the
gateway's added work (HTTP parsing, the asyncio <-> executor hand-over, SSE framing), not
the model: both paths end at the same fusion_node. Results: bench/results/gateway.json.

    .venv/bin/python -P bench/bench_gateway.py              # 24 repetitions
    .venv/bin/python -P bench/bench_gateway.py --reps 40 --max-tokens 32
"""

from __future__ import annotations

import argparse
import http.client as http_client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
QUESTIONS = (
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do I make tea?",
    "What is a robot?",
    "Can you recommend a book?",
    "What do cats eat?",
    "How far away is the moon?",
    "What is your favourite colour?",
)
DOCUMENT = (
    "The Harbour Museum opens at nine in the morning and closes at six in the evening. "
    "Its wifi network is HarbourGuest, password BLUE-ORCA-42.\n"
)


def start(module: str, namespace: str, params: list[str], env: dict, log: Path):
    args = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={namespace}"]
    args += ["--params-file", str(ROOT / "config" / "cpu_demo.yaml"), *params]
    return subprocess.Popen(
        args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--rule-reps", type=int, default=60)
    parser.add_argument("--rules-only", action="store_true", help="only the rule answers")
    args = parser.parse_args()

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 199)))
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds.xml"))
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    env = os.environ | {"ROS_HOME": str(work)}
    sys.path.insert(0, str(ROOT / "test"))
    from gateway_http import Http  # the tests' stdlib HTTP/SSE client

    namespace = f"/bench_gw_{os.getpid()}"
    llm = ["-p", "llm.temperature:=0.0", "-p", "llm.seed:=42"]
    procs = [
        start("smolfusion_ros.nodes.fusion_node", namespace, llm, env, work / "fusion.log"),
        start("smolfusion_ros.nodes.memory_node", namespace, [], env, work / "memory.log"),
        start("smolfusion_ros.nodes.knowledge_node", namespace, [], env, work / "knowledge.log"),
        start(
            "smolfusion_ros.nodes.gateway_node",
            namespace,
            ["-p", "port:=0"],
            env,
            work / "gateway.log",
        ),
    ]
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from smolfusion_ros.client import SmolFusionClient

    rclpy.init()
    node = rclpy.create_node("bench_gateway_client")
    executor = MultiThreadedExecutor(4)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    client = SmolFusionClient(node=node, namespace=namespace)
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            found = re.search(
                r"listening on http://[\d.]+:(\d+)/", (work / "gateway.log").read_text()
            )
            port = int(found.group(1)) if found else None
            time.sleep(0.2)
        http = Http(port)
        while time.monotonic() < deadline and http.get("/health").status != 200:
            time.sleep(0.5)
        client.wait_until_ready(120)
        # knowledge_node's services may be discovered by the gateway after fusion_node is
        # ready: the upload is answered 503 until then, so retry for a while.
        upload_deadline = time.monotonic() + 60
        while True:
            uploaded = http.upload(
                "/knowledge", {}, {"file": ("museum.txt", DOCUMENT.encode(), "text/plain")}
            )
            if uploaded.status == 200 or time.monotonic() > upload_deadline:
                break
            time.sleep(1.0)
        assert uploaded.status == 200, (uploaded.status, uploaded.body)

        def ros_chat(text, session):
            t0 = time.monotonic()
            r = client.chat(text, session_id=session, max_tokens=args.max_tokens, timeout=300)
            return time.monotonic() - t0, r.tokens, r.reply

        def http_chat(text, session):
            t0 = time.monotonic()
            r = http.post(
                "/chat", {"session_id": session, "text": text, "max_tokens": args.max_tokens}
            ).json()
            return time.monotonic() - t0, r["tokens"], r["reply"]

        def ros_converse(text, session):
            first = []
            t0 = time.monotonic()
            handle = client.converse(
                text,
                session_id=session,
                max_tokens=args.max_tokens,
                on_feedback=lambda _fb: first or first.append(time.monotonic() - t0),
            )
            result = handle.result(300)
            return first[0] if first else float("nan"), time.monotonic() - t0, result.reply

        def http_stream(text, session):
            first, reply = None, ""
            for event, data, t in http.stream(
                {"session_id": session, "text": text, "max_tokens": args.max_tokens}
            ):
                if event == "token" and first is None:
                    first = t
                if event == "final":
                    return first, t, data["reply"]
            return first, float("nan"), reply

        samples = {
            "ros_chat": [],
            "http_chat": [],
            "ros_ttft": [],
            "http_ttft": [],
            "knowledge_s": [],
        }
        same_tokens = 0
        for rep in range(0 if args.rules_only else args.warmup + args.reps):
            q1, q2 = QUESTIONS[rep % len(QUESTIONS)], QUESTIONS[(rep + 3) % len(QUESTIONS)]
            ros_first = rep % 2 == 0
            order = [("ros", ros_chat), ("http", http_chat)]
            if not ros_first:
                order.reverse()
            totals = {}
            for name, fn in order:
                totals[name] = fn(q1, f"b{rep}-{name}-chat")
            order_s = [("ros", ros_converse), ("http", http_stream)]
            if not ros_first:
                order_s.reverse()
            firsts = {}
            for name, fn in order_s:
                firsts[name] = fn(q2, f"b{rep}-{name}-stream")
            values = {
                kv["component"]: kv["values"]
                for kv in http.get("/health").json()["nodes"].get("fusion_node", [])
            }.get("language model", {})
            if rep < args.warmup:
                continue
            samples["ros_chat"].append(totals["ros"][0])
            samples["http_chat"].append(totals["http"][0])
            samples["ros_ttft"].append(firsts["ros"][0])
            samples["http_ttft"].append(firsts["http"][0])
            samples["knowledge_s"].append(float(values.get("last_knowledge_lookup_s", "nan")))
            same_tokens += totals["ros"][2] == totals["http"][2]
            print(
                f"rep {rep - args.warmup + 1}: chat ros {totals['ros'][0]:.3f} s http "
                f"{totals['http'][0]:.3f} s | first token ros {firsts['ros'][0]:.3f} s http "
                f"{firsts['http'][0]:.3f} s ({'ros' if ros_first else 'http'} first)",
                flush=True,
            )

        rule_http, rule_http_new, rule_ros = [], [], []
        rule_server = []  # fusion_node's own latency_s: rule match + the turn's durable commit
        kept = http_client.HTTPConnection("127.0.0.1", port, timeout=60)
        kept.connect()
        # As urllib3/requests and browsers do: without it a kept-alive connection waits for
        # the delayed ACK (40 ms) between requests.
        kept.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def rule_kept(i: int) -> None:
            body = json.dumps({"session_id": f"rulek{i}", "text": "What's your name?"})
            t0 = time.monotonic()
            kept.request("POST", "/chat", body, {"Content-Type": "application/json"})
            r = json.loads(kept.getresponse().read())
            rule_http.append(time.monotonic() - t0)
            assert r["source"] == "rule", r

        def rule_new(i: int) -> None:
            t0 = time.monotonic()
            r = http.post("/chat", {"session_id": f"rulen{i}", "text": "What's your name?"})
            rule_http_new.append(time.monotonic() - t0)
            assert r.json()["source"] == "rule", r.body

        def rule_ros_call(i: int) -> None:
            t0 = time.monotonic()
            r = client.chat("What's your name?", session_id=f"ruler{i}", max_tokens=8, timeout=30)
            rule_ros.append(time.monotonic() - t0)
            assert r.source == "rule", r
            rule_server.append(r.latency_s)

        rule_calls = [rule_kept, rule_new, rule_ros_call]
        for i in range(args.rule_reps):
            for call in rule_calls[i % 3 :] + rule_calls[: i % 3]:  # rotating order
                call(i)
        kept.close()
        if args.rules_only:
            for name, values in (("HTTP kept-alive", rule_http), ("HTTP new connection",
                                 rule_http_new), ("ROS chat", rule_ros),
                                 ("fusion_node's own latency_s", rule_server)):  # fmt: skip
                ordered = sorted(values)
                print(
                    f"rule answer, {name}: median {statistics.median(values) * 1000:.2f} ms, "
                    f"p95 {ordered[int(0.95 * (len(values) - 1))] * 1000:.2f} ms"
                )
            print(f"load average {os.getloadavg()}")
            return

        med = {k: statistics.median(v) for k, v in samples.items()}
        summary = {
            "reps": args.reps,
            "max_tokens": args.max_tokens,
            "load_average": os.getloadavg(),
            "medians_s": med,
            "total_ratio_http_over_ros": med["http_chat"] / med["ros_chat"],
            "ttft_ratio_stream_over_converse": med["http_ttft"] / med["ros_ttft"],
            "same_replies": f"{same_tokens}/{args.reps}",
            "rule_http_ms_median": statistics.median(rule_http) * 1000,
            "rule_http_ms_p95": sorted(rule_http)[int(0.95 * (len(rule_http) - 1))] * 1000,
            "rule_http_new_connection_ms_median": statistics.median(rule_http_new) * 1000,
            "rule_ros_ms_median": statistics.median(rule_ros) * 1000,
            "rule_ros_ms_p95": sorted(rule_ros)[int(0.95 * (len(rule_ros) - 1))] * 1000,
            "rule_fusion_node_latency_ms_median": statistics.median(rule_server) * 1000,
            "knowledge_lookup_ms_median": med["knowledge_s"] * 1000,
        }
        print(
            f"\n/chat total: HTTP {med['http_chat']:.3f} s vs ROS chat {med['ros_chat']:.3f} s "
            f"-> ratio {summary['total_ratio_http_over_ros']:.3f} (target <= 1.05)\n"
            f"first token: HTTP stream {med['http_ttft']:.3f} s vs ROS converse "
            f"{med['ros_ttft']:.3f} s -> ratio {summary['ttft_ratio_stream_over_converse']:.3f} "
            f"(target <= 1.10)\n"
            f"same replies on both paths: {summary['same_replies']}\n"
            f"rule answer at the client: HTTP median {summary['rule_http_ms_median']:.2f} ms "
            f"(p95 {summary['rule_http_ms_p95']:.2f} ms, target < 5 ms; a new connection per "
            f"request {summary['rule_http_new_connection_ms_median']:.2f} ms), ROS chat median "
            f"{summary['rule_ros_ms_median']:.2f} ms (p95 {summary['rule_ros_ms_p95']:.2f} ms); "
            f"inside fusion_node (match + the turn's durable commit) "
            f"{summary['rule_fusion_node_latency_ms_median']:.2f} ms\n"
            f"knowledge search per question (added to the first token): median "
            f"{summary['knowledge_lookup_ms_median']:.1f} ms\n"
            f"load average {summary['load_average']}"
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "gateway.json").write_text(
            json.dumps({"summary": summary, "samples": samples}, indent=2)
        )
    finally:
        client.close()
        executor.shutdown()
        for proc in procs:
            proc.send_signal(2)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
