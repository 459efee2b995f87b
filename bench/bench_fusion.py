"""Fusion benchmarks: the LLM beside the vision model, and camera_node's CPU share.

    .venv/bin/python -P bench/bench_fusion.py [--reps 8] [--max-tokens 64] [--rows ...]

Measured in one run on this machine with cpu_demo's models (SmolLM2-135M through llama.cpp,
the perception vision back end with 1 OCR thread), greedy decoding, and the two paths of
every comparison alternating in order (first one, then the other, per repetition). Every
timed answer also records the share of the CPUs other processes used meanwhile; the load is
printed with every row.

1. Non-visual answers with and without the scene loop, per scene-loop policy ("yield":
   no description starts while the LLM generates and a running one is cancelled;
   "concurrent": the scene loop goes on beside the LLM). What it measures: the cost of the
   scene loop to the LLM, and nothing else. Both conditions answer the SAME prompt on the
   SAME engine (persona + the question, use_vision=never, so no scene text in either) from
   the same KV-cache state (a different 1-token question is answered just before each timed
   answer), and the bench checks that both produce identical tokens. The only difference:
   "running" - a changing frame arrives at 10 Hz and the scene loop describes one every
   `--scene-interval` s (the answer starts at a random phase of the loop); "stopped" - no
   frames arrive and the scene loop is idle. Reported: total latency ratio, time per
   generated token and first-token time, scene updates per second during generation and
   the scene's age (now - capture time of the newest described frame) when the answer starts
   and ends: how stale the robot's sight is. With "yield" the ratio is ~1 by construction:
   the price shows as no scene updates during an answer and an older scene. Target
   (concurrent, GPU profiles) <= 1.10; on this 2-core CPU both models share the two cores.

2. A visual turn ("What do you see?" after two earlier turns in the session): through the
   engine (the vision model answers on its own thread while the engine evaluates the
   session's stable prefix, then the LLM answers with the vision answer in the context
   block) vs. the vision back end alone, then the LLM alone, back to back. Same work on both
   sides: the same photo, vision prompt and vision max_tokens; the same messages (the bench
   builds the back-to-back prompt with core.prompt and checks it equals the engine's prompt);
   greedy answers that must be identical; and the same KV-cache state, because the
   back-to-back LLM (a second llama.cpp instance) answers the same earlier turns itself.
   Two variants: "prefix cached" (the session's previous turn was the model's last work, the
   common case) and "prefix not cached" (another session's turn ran in between and there is
   no session cache: the whole history must be evaluated again, which the engine overlaps
   with the vision model). Target <= 0.90.

3. camera_node's CPU share while it receives 640x480 rgb8 frames at 30 Hz over DDS.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 99)))

import numpy as np  # noqa: E402

from smolfusion_ros.backends.llm.base import GenerationSettings  # noqa: E402
from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend  # noqa: E402
from smolfusion_ros.backends.vlm.perception import PerceptionBackend  # noqa: E402
from smolfusion_ros.catalogue import resolve_model  # noqa: E402
from smolfusion_ros.core.chat_engine import ChatEngine, EngineSettings, EngineState  # noqa: E402
from smolfusion_ros.core.personas import load_personas  # noqa: E402
from smolfusion_ros.core.prompt import build_messages  # noqa: E402
from smolfusion_ros.core.requests import ChatRequest  # noqa: E402
from smolfusion_ros.core.scene import LatestFrame, VisionWorker  # noqa: E402
from smolfusion_ros.core.sessions import TurnRecord  # noqa: E402
from smolfusion_ros.nodes.dds import use_large_frame_transport  # noqa: E402
from smolfusion_ros.paths import config_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py, also under -P
from _common import CpuMonitor, load_text  # noqa: E402

QUESTIONS = (
    "What is the capital of France?",
    "Tell me something about robots.",
    "How do I make tea?",
)
# Answered (1 token) just before every timed non-visual answer, so the KV cache holds the
# same thing (persona + this question) whichever condition ran before.
RESET_QUESTION = "Good morning!"
VISUAL_QUESTION = "What do you see?"
VISION_MAX_TOKENS = 96  # VisionWorker's default, used by the engine's visual questions
HISTORY_TOKENS = 24  # earlier turns' answer length in row 2
SEED = 42
DISTURBED = 0.15  # a sample during which others used more of the CPUs than this is disturbed
WAIT_S = 120.0  # longest wait for a model to load or the scene loop to settle (loaded machine)


def scene_frame(i: int) -> np.ndarray:
    """A 640x480 frame that changes every time (a moving block on a gradient)."""
    frame = np.tile(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], (480, 1, 3))
    x = (i * 37) % 560
    frame[180:300, x : x + 80] = (255, 40, 40)
    return frame


def person_photo() -> np.ndarray:
    """scikit-image's astronaut photo (installed with the dev tools), else a moving-block frame."""
    try:
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut())
    except ImportError:
        return scene_frame(0)


class Recording(LlamaCppChatBackend):
    """The engine's llama.cpp back end, remembering every prompt it was given (to check that
    the back-to-back baseline sends the same messages)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list = []

    def stream_chat(self, messages, settings, cancel):
        self.prompts.append([dict(m) for m in messages])
        yield from super().stream_chat(messages, settings, cancel)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll `predicate` until it holds or `timeout` s passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def start_worker(worker: VisionWorker) -> None:
    worker.start()
    if not wait_until(lambda: worker.ready or bool(worker.load_error)) or worker.load_error:
        raise SystemExit(f"the vision back end did not load: {worker.load_error or 'timeout'}")


def make_engine(model: Path, threads: int, vision: VisionWorker | None) -> ChatEngine:
    """cpu_demo's engine settings, greedy, no summaries and no session cache (session_cache
    off: row 2's "prefix not cached" variant relies on a session's state being lost)."""
    engine = ChatEngine(
        Recording(model, n_ctx=2048, n_threads=threads),
        load_personas(config_path("personas.yaml")),
        settings=EngineSettings(temperature=0.0, seed=SEED, summary_batch=0),
        vision=vision,
    )
    engine.start()
    if not wait_until(lambda: engine.state is not EngineState.LOADING):
        raise SystemExit("the LLM did not load")
    if engine.state is not EngineState.READY:
        raise SystemExit(f"the LLM failed to load: {engine.state_detail}")
    return engine


def generation(engine: ChatEngine, max_tokens: int) -> GenerationSettings:
    """The engine's own sampling settings (greedy here) for the baseline's direct calls."""
    s = engine.settings
    return GenerationSettings(
        max_tokens=max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        repeat_penalty=s.repeat_penalty,
        seed=s.seed,
    )


@dataclass
class Answer:
    seconds: float  # submit -> result, in this process
    ttft_s: float  # the engine's first-token time
    tokens: int
    reply: str
    foreign_cpu: float  # share of all CPUs other processes used meanwhile (0..1)
    scene_used: bool = False

    @property
    def per_token_s(self) -> float:
        """Time per generated token after the first (prompt evaluation excluded)."""
        if self.tokens < 2:
            return float("nan")
        return (self.seconds - self.ttft_s) / (self.tokens - 1)


def ask(
    engine: ChatEngine,
    monitor: CpuMonitor,
    text: str,
    session: str,
    max_tokens: int,
    use_vision: str = "auto",
) -> Answer:
    before = monitor.snapshot()
    started = time.perf_counter()
    request = ChatRequest(
        text=text, session_id=session, max_tokens=max_tokens, use_vision=use_vision
    )
    result = engine.submit(request).wait(300)
    seconds = time.perf_counter() - started
    if not result.success:
        raise RuntimeError(f"{text!r} failed: {result.error}")
    return Answer(
        seconds,
        result.ttft_s,
        result.tokens,
        result.reply,
        monitor.foreign(before, monitor.snapshot()),
        result.scene_used,
    )


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]  # without NaN
    return statistics.median(values) if values else float("nan")


def verdict(ratio: float, target: float, comparable: bool) -> str:
    if not comparable:
        return f"target <= {target:.2f}: NOT COMPARABLE (different outputs or prompts)"
    return f"target <= {target:.2f}{'' if ratio <= target else ': MISSED'}"


def disturbed_text(shares: list[float]) -> str:
    """How many timed samples other processes disturbed (their share of all CPUs)."""
    count = sum(share > DISTURBED for share in shares)
    worst = max(shares, default=0.0)
    text = f"samples disturbed by other processes {count}/{len(shares)} (worst {worst:.0%})"
    if count > len(shares) // 4:
        text += " - NOT A QUIET MEASUREMENT, do not quote"
    return text


def reset_cache(engine: ChatEngine, session: str) -> None:
    """Answer RESET_QUESTION (1 token): the KV cache then holds persona + that question."""
    request = ChatRequest(RESET_QUESTION, session_id=session, max_tokens=1, use_vision="never")
    engine.submit(request).wait(300)  # its 1-token reply does not matter


# ---------------------------------------------------------------- 1. scene loop
def bench_scene_loop(model: Path, args: argparse.Namespace, policy: str) -> None:
    """The same non-visual answer with the scene loop running vs. stopped, alternating."""
    monitor = CpuMonitor([os.getpid()])
    rng = random.Random(SEED)
    frames = LatestFrame()
    engines: list[ChatEngine] = []  # the worker's llm_busy needs the engine made below
    worker = VisionWorker(
        PerceptionBackend(),
        frames,
        interval_s=args.scene_interval,
        llm_busy=lambda: any(e.busy for e in engines),
        concurrency=policy,
    )
    start_worker(worker)
    feeding = threading.Event()  # set: the camera delivers a changing frame at 10 Hz
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.is_set():
            if feeding.is_set():
                frames.put(scene_frame(i), time.time())
                i += 1
            stop.wait(0.1)

    feeder = threading.Thread(target=feed, name="bench-camera", daemon=True)
    feeder.start()
    engine = make_engine(model, args.threads, worker)
    engines.append(engine)

    def idle() -> bool:
        frame, scene = frames.latest(), worker.latest_scene
        return frame is None or (scene is not None and scene.frame.seq == frame.seq)

    on: list[Answer] = []
    off: list[Answer] = []
    rates, age_start, age_end = [], [], []
    unsettled = 0
    for rep in range(args.warmup + args.reps):
        question = QUESTIONS[rep % len(QUESTIONS)]
        phase = rng.uniform(0.0, args.scene_interval)  # where in the loop the answer starts
        order = ("on", "off") if rep % 2 == 0 else ("off", "on")
        for condition in order:
            if condition == "on":
                feeding.set()
                scenes = worker.stats.scenes
                unsettled += not wait_until(lambda s=scenes: worker.stats.scenes > s)
            else:
                feeding.clear()
                unsettled += not wait_until(idle)  # the last frame described, then nothing
            time.sleep(phase)  # not synchronisation: a random phase of the scene loop
            session = f"{policy}-{rep}-{condition}"
            reset_cache(engine, session + "-reset")
            scene = worker.latest_scene
            start_age = time.time() - scene.frame.stamp if scene else float("nan")
            scenes_before = worker.stats.scenes
            answer = ask(engine, monitor, question, session, args.max_tokens, "never")
            if rep < args.warmup:
                continue
            if condition == "on":
                on.append(answer)
                rates.append((worker.stats.scenes - scenes_before) / answer.seconds)
                scene = worker.latest_scene
                age_start.append(start_age)
                age_end.append(time.time() - scene.frame.stamp if scene else float("nan"))
            else:
                off.append(answer)
    stop.set()
    feeder.join(5)
    identical = sum(
        a.reply == b.reply and a.tokens == b.tokens for a, b in zip(on, off, strict=True)
    )
    comparable = bool(on) and identical == len(on)
    ratio = med([a.seconds for a in on]) / med([a.seconds for a in off])
    paired = med([a.seconds / b.seconds for a, b in zip(on, off, strict=True)])
    token_ratio = med([a.per_token_s for a in on]) / med([a.per_token_s for a in off])
    target = 1.10 if policy == "concurrent" else 1.15
    print(
        f"1. [{policy}] non-visual answer, the same prompt with the scene loop running vs. "
        f"stopped (identical answers {identical}/{len(on)}, "
        f"{med([a.tokens for a in on]):g} tokens median):\n"
        f"   total {med([a.seconds for a in on]):.3f} s vs. {med([a.seconds for a in off]):.3f} s"
        f" = {ratio:.2f}x ({verdict(ratio, target, comparable)}); median of per-pair ratios "
        f"{paired:.2f}x\n"
        f"   per generated token {med([a.per_token_s for a in on]) * 1000:.1f} ms vs. "
        f"{med([a.per_token_s for a in off]) * 1000:.1f} ms = {token_ratio:.2f}x; first token "
        f"{med([a.ttft_s for a in on]) * 1000:.0f} ms vs. "
        f"{med([a.ttft_s for a in off]) * 1000:.0f} ms\n"
        f"   scene updates during generation {med(rates):.2f}/s (loop interval "
        f"{args.scene_interval} s); scene age when the answer starts: median "
        f"{med(age_start):.2f} s, when it ends: median {med(age_end):.2f} s, worst "
        f"{max(age_end, default=float('nan')):.2f} s\n"
        f"   scenes described {worker.stats.scenes}, preempted {worker.stats.preempted}, "
        f"stale frames dropped {frames.dropped}; scene loop not settled in time {unsettled}x; "
        f"{disturbed_text([a.foreign_cpu for a in on + off])}; {load_text()}",
        flush=True,
    )
    engine.stop()
    worker.stop()


# ---------------------------------------------------------------- 2. visual turn
def bench_visual_turn(model: Path, args: argparse.Namespace, cached: bool) -> None:
    """A visual turn through the engine vs. vision alone + LLM alone, back to back."""
    monitor = CpuMonitor([os.getpid()])
    photo = person_photo()
    frames = LatestFrame()
    # The scene loop describes the photo once (at start) and then not for an hour: only the
    # visual question itself uses the vision model during the measurement.
    worker = VisionWorker(PerceptionBackend(), frames, interval_s=3600.0)
    start_worker(worker)
    frames.put(photo, time.time())
    if not wait_until(lambda: worker.stats.scenes >= 1):
        raise SystemExit("the scene loop did not describe the photo")
    engine = make_engine(model, args.threads, worker)
    alone_vision = PerceptionBackend()
    alone_vision.load()
    alone_llm = LlamaCppChatBackend(model, n_ctx=2048, n_threads=args.threads)
    alone_llm.load()
    system_prompt = engine.personas.get("").render_system_prompt()

    def messages(history: list[TurnRecord], text: str, scene: str, max_tokens: int) -> list:
        return build_messages(
            system_prompt,
            history,
            text,
            scene_text=scene,
            context_size=alone_llm.context_size,
            reserve_tokens=max_tokens,
            count_tokens=alone_llm.count_tokens,
        )

    def alone_answer(msgs: list, max_tokens: int) -> tuple[str, float]:
        """The baseline LLM's answer and its first-token time (its prompt evaluation)."""
        settings = generation(engine, max_tokens)
        parts: list[str] = []
        started = time.perf_counter()
        first = None
        for delta in alone_llm.stream_chat(msgs, settings, threading.Event()):
            first = first or time.perf_counter()
            parts.append(delta)
        return "".join(parts).strip(), (first or time.perf_counter()) - started

    fused: list[Answer] = []
    separate: list[float] = []
    shares: list[float] = []  # other processes' CPU share during each timed sample
    vision_s: list[float] = []
    llm_s: list[float] = []
    llm_ttft: list[float] = []  # the baseline LLM's first token: its prompt evaluation
    # Prompt tokens evaluated after the vision answer (engine) / in the baseline's answer.
    engine_evaluated: list[int] = []
    engine_vision_s: list[float] = []  # the vision model's own time inside the engine's turn
    evaluated: list[int] = []
    same_prompt = same_answer = same_history = 0
    for rep in range(args.warmup + args.reps):
        session = f"{'warm' if cached else 'cold'}-{rep}"
        history: list[TurnRecord] = []
        history_ok = True
        for text in QUESTIONS[:2]:  # earlier turns: the engine and the baseline answer each
            turn = ask(engine, monitor, text, session, HISTORY_TOKENS, "never")
            own, _ = alone_answer(messages(history, text, "", HISTORY_TOKENS), HISTORY_TOKENS)
            history_ok &= own == turn.reply
            history += [
                TurnRecord("user", text, "text", 0.0),
                TurnRecord("assistant", turn.reply, "llm", 0.0),
            ]
        if not cached:  # another session takes the model: this session's KV state is lost
            ask(engine, monitor, QUESTIONS[2], f"other-{rep}", HISTORY_TOKENS, "never")
            alone_answer(messages([], QUESTIONS[2], "", HISTORY_TOKENS), HISTORY_TOKENS)

        def run_fused(session: str = session) -> tuple[Answer, int, float]:
            answer = ask(engine, monitor, VISUAL_QUESTION, session, args.max_tokens)
            return answer, engine.stats.last_prompt_tokens, worker.stats.last_latency_s

        def run_separate(history: list[TurnRecord] = history) -> tuple:
            before = monitor.snapshot()
            started = time.perf_counter()
            seen = alone_vision.describe(
                photo, VISUAL_QUESTION, threading.Event(), VISION_MAX_TOKENS
            )
            looked = time.perf_counter()
            msgs = messages(history, VISUAL_QUESTION, seen.text, args.max_tokens)
            reply, prompt_s = alone_answer(msgs, args.max_tokens)
            ended = time.perf_counter()
            evaluated.append(alone_llm.prompt_tokens_evaluated)
            cpu = monitor.foreign(before, monitor.snapshot())
            return ended - started, looked - started, ended - looked, prompt_s, reply, msgs, cpu

        first, second = (run_fused, run_separate) if rep % 2 == 0 else (run_separate, run_fused)
        outcomes = {first: first(), second: second()}  # evaluated in this order
        answer, fused_evaluated, fused_vision_s = outcomes[run_fused]
        total, looked, answered, prompt_s, reply, msgs, separate_cpu = outcomes[run_separate]
        # The engine's prompt for the visual answer: its last one with a context block.
        engine_prompt = next(
            (p for p in reversed(engine.backend.prompts) if p[-1]["content"].startswith("[")),
            None,
        )
        if rep < args.warmup:
            continue
        fused.append(answer)
        separate.append(total)
        shares += [answer.foreign_cpu, separate_cpu]
        vision_s.append(looked)
        llm_s.append(answered)
        llm_ttft.append(prompt_s)
        engine_evaluated.append(fused_evaluated)
        engine_vision_s.append(fused_vision_s)
        same_history += history_ok
        same_prompt += engine_prompt == msgs
        same_answer += answer.reply == reply and answer.scene_used
    timed = fused
    comparable = bool(timed) and same_prompt == len(timed) and same_answer == len(timed)
    ratio = med([a.seconds for a in timed]) / med(separate)
    paired = med([a.seconds / s for a, s in zip(timed, separate, strict=True)])
    # Overlap can hide at most the LLM's prompt evaluation (part of it, the vision text and the
    # question, cannot start before the vision answer) behind the vision model's time.
    best = (med(separate) - min(med(vision_s), med(llm_ttft))) / med(separate)
    variant = (
        "prefix cached (the session's previous turn ran just before)"
        if cached
        else "prefix not cached (another session's turn ran in between, no session cache)"
    )
    print(
        f"2. visual answer ({VISUAL_QUESTION!r} after 2 turns), {variant}:\n"
        f"   through the engine {med([a.seconds for a in timed]):.3f} s (first token "
        f"{med([a.ttft_s for a in timed]) * 1000:.0f} ms) vs. vision alone "
        f"{med(vision_s):.3f} s + LLM alone {med(llm_s):.3f} s back to back = "
        f"{med(separate):.3f} s: {ratio:.2f}x ({verdict(ratio, 0.90, comparable)}); "
        f"median of per-pair ratios {paired:.2f}x\n"
        f"   the vision model took {med(engine_vision_s):.3f} s inside the engine's turn "
        f"(beside the LLM's prefix evaluation) vs. {med(vision_s):.3f} s alone\n"
        f"   the LLM alone's first token (its whole prompt evaluation) "
        f"{med(llm_ttft) * 1000:.0f} ms: overlapping it with vision can reach {best:.2f}x at "
        f"best; prompt tokens evaluated by the answer itself: engine {med(engine_evaluated):g} "
        f"(the rest was evaluated while the vision model looked), back to back "
        f"{med(evaluated[args.warmup :]):g}\n"
        f"   same prompt {same_prompt}/{len(timed)}, identical answers {same_answer}/"
        f"{len(timed)}, earlier turns answered identically by the baseline "
        f"{same_history}/{len(timed)}; {disturbed_text(shares)}; {load_text()}",
        flush=True,
    )
    engine.stop()
    worker.stop()
    alone_vision.close()
    alone_llm.close()


# -------------------------------------------------------------- 3. camera_node
def bench_camera_cpu(seconds: float) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    use_large_frame_transport()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smolfusion_ros.nodes.camera_node",
            "--ros-args",
            "-r",
            "__ns:=/bench_camera",
        ],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rclpy.init()
    node = rclpy.create_node("bench_camera_feed")
    try:
        publisher = node.create_publisher(Image, "/bench_camera/image_raw", qos_profile_sensor_data)
        received = []
        node.create_subscription(
            Image, "/bench_camera/camera_node/frame", received.append, qos_profile_sensor_data
        )
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        if not wait_until(lambda: publisher.get_subscription_count() > 0, 60.0):
            raise SystemExit("camera_node did not subscribe within 60 s")
        frames = [scene_frame(i).tobytes() for i in range(30)]
        msg = Image(height=480, width=640, encoding="rgb8", step=1920)
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu_seconds() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        cpu_start, wall_start, sent = cpu_seconds(), time.monotonic(), 0
        while time.monotonic() - wall_start < seconds:
            msg.data = frames[sent % 30]
            publisher.publish(msg)
            sent += 1
            time.sleep(max(0.0, wall_start + sent / 30 - time.monotonic()))
        wall = time.monotonic() - wall_start
        share = (cpu_seconds() - cpu_start) / wall
        print(
            f"3. camera_node at {sent / wall:.1f} Hz 640x480 rgb8 in: {share * 100:.0f}% of one "
            f"core ({share * 100 / (os.cpu_count() or 1):.0f}% of this machine); frames out "
            f"{len(received)} (rate limit 2 Hz); {load_text()}",
            flush=True,
        )
        executor.shutdown()
        spinner.join(5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        node.destroy_node()
        rclpy.try_shutdown()


ROWS = ("scene", "visual", "camera")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=8, help="measured pairs per row")
    parser.add_argument("--warmup", type=int, default=2, help="discarded pairs first")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--scene-interval", type=float, default=0.5, help="scene loop, s")
    parser.add_argument("--camera-seconds", type=float, default=10.0)
    parser.add_argument(
        "--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows to run"
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=("yield", "concurrent"),
        default=["yield", "concurrent"],
        help="scene-loop policies for row 1",
    )
    args = parser.parse_args()
    model = resolve_model("smollm2-135m-instruct")
    print(
        f"bench_fusion: {model.name}, {args.threads} llama.cpp threads, greedy, "
        f"{args.max_tokens} tokens at most, {args.reps} pairs (+{args.warmup} warm-up) per "
        f"row, orders alternating; {load_text()}",
        flush=True,
    )
    if "scene" in args.rows:
        for policy in args.policies:
            bench_scene_loop(model, args, policy)
    if "visual" in args.rows:
        for cached in (True, False):
            bench_visual_turn(model, args, cached)
    if "camera" in args.rows:
        bench_camera_cpu(args.camera_seconds)


if __name__ == "__main__":
    main()
