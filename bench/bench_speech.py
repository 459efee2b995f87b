"""Speech benchmarks: Whisper's real-time factor, and voice to final utterance / first token.

    .venv/bin/python bench/bench_speech.py [--reps 5]

In one run on this machine, with cpu_demo settings:
  1. speech-to-text real-time factor (compute time / audio time) of the faster-whisper back
     end (Whisper tiny.en, int8, 1 thread, beam 5) on sentences spoken by espeak-ng;
  2. end of speech -> final utterance: speech_node and fusion_node run as processes; the
     sentence is streamed into `audio` in 100 ms chunks at real-time pace, and the clock starts
     when the chunk holding the last speech sample is published (the 0.7 s silence the VAD
     waits for is part of the latency, as a person experiences it);
  3. end of speech -> first answer token on `response_stream` ("voice to first token").
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

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 99)))

import numpy as np  # noqa: E402

from smolfusion_ros.backends import registry  # noqa: E402
from smolfusion_ros.catalogue import resolve_model  # noqa: E402
from smolfusion_ros.io.audio import int16_to_float32, resample  # noqa: E402
from smolfusion_ros.nodes.dds import use_large_frame_transport  # noqa: E402

SENTENCES = (
    "What is the weather like today?",
    "Please tell me a short story about a robot.",
    "How do I get to the train station?",
    "Can you help me carry this box?",
    "What time does the museum open tomorrow?",
)
RATE = 16000
CHUNK = RATE // 10


def speak(text: str) -> np.ndarray:
    """The sentence spoken by espeak-ng (the package's own TTS back end), int16 at 16 kHz."""
    speech = registry.create_tts_backend("espeak", rate_wpm=160).synthesize(text)
    return resample(speech.samples, speech.sample_rate, RATE).astype(np.int16)


def real_time_factor(samples: list[np.ndarray]) -> list[float]:
    stt = registry.create_stt_backend(
        "faster_whisper", model_path=resolve_model("whisper-tiny-en"), n_threads=1
    )
    stt.load()
    stt.transcribe(int16_to_float32(samples[0]), final=True)  # warm-up
    factors = []
    for audio in samples:
        result = stt.transcribe(int16_to_float32(audio), final=True)
        factors.append(result.compute_s / result.audio_s)
    return factors


def voice_latency(samples: list[np.ndarray], reps: int) -> tuple[list[float], list[float]]:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from smolfusion_ros.client import SmolFusionClient
    from smolfusion_ros.msg import AudioChunk, ResponseChunk, Utterance
    from smolfusion_ros.nodes.conversions import stamp_from_wall

    use_large_frame_transport()
    namespace = "/bench_speech"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                f"smolfusion_ros.nodes.{name}",
                "--ros-args",
                "-r",
                f"__ns:={namespace}",
                *extra,
            ],
            cwd=tempfile.gettempdir(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ | {"ROS_HOME": tempfile.mkdtemp()},
        )
        for name, extra in (
            ("fusion_node", ["-p", "llm.temperature:=0.0", "-p", "chat.default_max_tokens:=32"]),
            ("speech_node", ["-p", "session_id:=voice", "-p", "partial_interval_s:=1.0"]),
        )
    ]
    rclpy.init()
    node = rclpy.create_node("bench_speech_client")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    finals: list[float] = []
    first_tokens: list[float] = []
    seen_requests: set[str] = set()

    def on_utterance(msg: Utterance) -> None:
        if msg.is_final:
            finals.append(time.monotonic())

    def on_chunk(msg: ResponseChunk) -> None:
        if msg.session_id == "voice" and msg.request_id not in seen_requests:
            seen_requests.add(msg.request_id)
            first_tokens.append(time.monotonic())

    node.create_subscription(Utterance, f"{namespace}/utterance", on_utterance, 10)
    node.create_subscription(ResponseChunk, f"{namespace}/response_stream", on_chunk, 100)
    audio_pub = node.create_publisher(AudioChunk, f"{namespace}/audio", 50)
    client = SmolFusionClient(node=node, namespace=namespace)
    to_final, to_token = [], []
    try:
        client.wait_until_ready(120)
        deadline = time.monotonic() + 30
        while audio_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        silence = np.zeros(RATE // 2, np.int16)
        for rep in range(reps + 1):
            audio = samples[rep % len(samples)]
            stream = np.concatenate([silence, audio, silence, silence, silence])
            speech_end = len(silence) + len(audio)
            n_finals, n_tokens = len(finals), len(first_tokens)
            started, end_at = time.monotonic(), None
            for i, start in enumerate(range(0, len(stream), CHUNK)):
                piece = stream[start : start + CHUNK]
                audio_pub.publish(
                    AudioChunk(
                        stamp=stamp_from_wall(),
                        sample_rate=RATE,
                        channels=1,
                        samples=piece.tolist(),
                    )
                )
                if end_at is None and start + CHUNK >= speech_end:
                    end_at = time.monotonic()
                time.sleep(max(0.0, started + (i + 1) * 0.1 - time.monotonic()))
            deadline = time.monotonic() + 30
            while (len(finals) == n_finals or len(first_tokens) == n_tokens) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.01)
            time.sleep(1.5)  # let the answer finish before the next question
            if rep == 0 or len(finals) == n_finals or len(first_tokens) == n_tokens:
                continue  # warm-up, or nothing heard
            to_final.append(finals[n_finals] - end_at)
            to_token.append(first_tokens[n_tokens] - end_at)
    finally:
        executor.shutdown()
        spinner.join(5)
        node.destroy_node()
        rclpy.try_shutdown()
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return to_final, to_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    samples = [speak(text) for text in SENTENCES]
    factors = real_time_factor(samples)
    print(
        f"1. Whisper tiny.en real-time factor: median {statistics.median(factors):.3f} "
        f"(min {min(factors):.3f}, max {max(factors):.3f}) over {len(factors)} sentences",
        flush=True,
    )
    to_final, to_token = voice_latency(samples, args.reps)
    if not to_final:
        raise SystemExit("no utterance was recognised")
    print(
        f"2. end of speech -> final utterance: median {statistics.median(to_final):.3f} s "
        f"(n={len(to_final)}; includes the VAD's 0.7 s silence wait)",
        flush=True,
    )
    print(
        f"3. end of speech -> first answer token: median {statistics.median(to_token):.3f} s "
        f"(n={len(to_token)})",
        flush=True,
    )


if __name__ == "__main__":
    main()
