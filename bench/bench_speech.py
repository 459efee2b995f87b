"""Speech benchmarks: hearing other voices (WER, real-time factor) and voice -> first token.

    .venv/bin/python bench/bench_speech.py                 # both parts
    .venv/bin/python bench/bench_speech.py --part wer      # recognisers over voices
    .venv/bin/python bench/bench_speech.py --part latency  # speculation on vs off, live nodes

1. Word error rate and real-time factor of the faster-whisper back end (the node's own code
   path) over espeak-ng English voices the tests do not use (US, British, Scottish, Caribbean,
   Lancaster, New York), two speeds (140 and 185 words/min), clean and with white noise at
   20 dB SNR, on sentences the tests do not use. One row per recogniser setting (model,
   compute type, threads, beam; --stt adds more), per voice and overall, against the target
   (<= 10% WER at RTF <= 0.3). RTF = compute time / audio time, per clip, summed.
2. Voice -> first token with the cpu_demo profile's own parameters (config/cpu_demo.yaml, as
   installed: the same files the bringup and the tests use), speech_node and fusion_node as
   processes. Two speech_nodes hear the same audio in turn (alternating which goes first):
   "speculative" with the profile's speculation settings, and "baseline" with speculation off
   (vad.speculate_silence_ms 0: the behaviour before speculation). Both feed one fusion_node.
   The clock starts at the real end of speech: the last audible sample of the clip (found by
   energy, espeak-ng pads its output), at the real-time instant it was "heard" (chunks are
   published at real-time pace when their audio is complete, as from a microphone).
   Measured: end of speech -> final utterance, and -> first answer token on response_stream;
   WER of the finals of both (the same recogniser: speculation must not change it). Then
   where that time goes, per step, from speech_node's own timeline of each turn (turn.* on
   its /diagnostics: the VAD's end of speech, the speculation queued / started / done, the
   turn committed, the final published) and fusion_node's last_ttft_s / last_prompt_tokens
   (did the answer reuse the speculative prefill?). --speech-param NAME:=VALUE sets a
   parameter of both speech_nodes (e.g. stt.final_window_pad_s:=10.0).
3. Sentences with a natural pause (two espeak-ng phrases joined by 300-600 ms of silence):
   false starts (speculations discarded because speech resumed, from speech_node's
   /diagnostics), and turns committed inside the pause (a final utterance or an answer token
   before the real end of speech = the robot would answer over the person), for both nodes.
   Target: median end of speech -> first token <= 0.6 s at the same WER, and no answer over a
   person who paused mid-sentence.
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
import zlib
from dataclasses import dataclass
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 99)))

import numpy as np  # noqa: E402

from smolfusion_ros import paths  # noqa: E402
from smolfusion_ros.backends import registry  # noqa: E402
from smolfusion_ros.io.audio import int16_to_float32, resample, speech_bounds  # noqa: E402
from smolfusion_ros.nodes.dds import use_large_frame_transport  # noqa: E402

# The word error rate exactly as the speech tests score it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))
from speech_samples import normalise, word_errors  # noqa: E402

RATE = 16000
CHUNK = RATE // 10
TARGET_WER = 0.10
TARGET_RTF = 0.30
TARGET_FIRST_TOKEN_S = 0.6

# None of these is in the tests (test/test_speech_*.py, test_voice_pipeline.py).
WER_SENTENCES = (
    "The library closes at nine in the evening.",
    "Could you turn off the lights in the hallway?",
    "My brother bought three green apples yesterday.",
    "I left my umbrella on the bus this morning.",
    "Where can I find a good place to eat lunch?",
    "The children are playing football in the park.",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-us-nyc")
SPEEDS = (140, 185)
NOISE_SNR_DB = 20.0  # a busy room (at 10 dB, tiny.en missed 61% of the words of noisy clips)
DEFAULT_STT = ("whisper-tiny-en:int8:1:5", "whisper-base:int8:1:5")
# --compare: beam size, threads, int8 vs float32, for both models.
COMPARE_STT = (
    "whisper-tiny-en:int8:1:5",
    "whisper-tiny-en:int8:1:1",
    "whisper-tiny-en:int8:2:5",
    "whisper-tiny-en:float32:1:5",
    "whisper-base:int8:1:5",
    "whisper-base:int8:1:1",
    "whisper-base:int8:2:5",
    "whisper-base:float32:1:5",
)

LATENCY_SENTENCES = (
    "What is the weather like today?",
    "Please tell me a short story about a robot.",
    "How do I get to the train station?",
    "Can you help me carry this box?",
    "What time does the museum open tomorrow?",
)
# (first phrase, second phrase, pause): a pause inside the sentence, where people breathe.
PAUSED = (
    ("Could you bring me", "the red cup from the table?", 0.35),
    ("I would like to know", "when the next bus leaves.", 0.45),
    ("Tell me about the weather,", "and what I should wear.", 0.5),
    ("My favourite colour is blue.", "What is yours?", 0.55),
    ("Please remind me", "to call my sister tonight.", 0.6),
    ("Where is the kitchen,", "and is there any coffee?", 0.4),
)


def speak(text: str, voice: str = "en-us", rate_wpm: int = 160) -> np.ndarray:
    """The sentence spoken by espeak-ng (the package's own TTS back end), int16 at 16 kHz,
    trimmed to its audible part."""
    speech = registry.create_tts_backend("espeak", voice=voice, rate_wpm=rate_wpm).synthesize(text)
    audio = resample(speech.samples, speech.sample_rate, RATE).astype(np.int16)
    first, end = speech_bounds(audio, RATE)
    return audio[first:end]


def with_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    x = audio.astype(np.float64)
    power = float(np.mean(x**2))
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), len(x))
    return np.clip(x + noise, -32768, 32767).astype(np.int16)


# ---- 1. WER over voices ---------------------------------------------------------------------


@dataclass
class Clip:
    text: str
    voice: str
    speed: int
    noisy: bool
    audio: np.ndarray  # int16, 16 kHz, 0.3 s of silence before and 0.25 s after


def wer_clips(sentences: int) -> list[Clip]:
    clips = []
    pad_before, pad_after = np.zeros(RATE * 3 // 10, np.int16), np.zeros(RATE // 4, np.int16)
    for voice in VOICES:
        for speed in SPEEDS:
            for k, text in enumerate(WER_SENTENCES[:sentences]):
                audio = np.concatenate([pad_before, speak(text, voice, speed), pad_after])
                clips.append(Clip(text, voice, speed, False, audio))
                noisy = with_noise(
                    audio, NOISE_SNR_DB, seed=zlib.crc32(f"{voice}/{speed}/{k}".encode())
                )
                clips.append(Clip(text, voice, speed, True, noisy))
    return clips


def stt_from_spec(spec: str):
    """'model:compute_type:threads:beam[:final_window_pad_s]' -> a loaded back end, as
    speech_node builds it."""
    from smolfusion_ros.nodes.speech_node import resolve_stt_model

    model, compute, threads, beam, *pad = spec.split(":")
    stt = registry.create_stt_backend(
        "faster_whisper",
        model_path=resolve_stt_model("faster_whisper", model, ""),
        compute_type=compute,
        n_threads=int(threads),
        beam_size=int(beam),
        final_window_pad_s=float(pad[0]) if pad else 0.0,
    )
    stt.load()
    return stt


def wer_part(specs: list[str], sentences: int) -> None:
    clips = wer_clips(sentences)
    print(
        f"1. WER over {len(VOICES)} voices x {len(SPEEDS)} speeds x clean/noisy "
        f"({NOISE_SNR_DB:.0f} dB SNR) x {sentences} sentences = {len(clips)} clips per setting; "
        f"target <= {TARGET_WER:.0%} at RTF <= {TARGET_RTF}",
        flush=True,
    )
    for spec in specs:
        stt = stt_from_spec(spec)
        stt.transcribe(int16_to_float32(clips[0].audio), final=True)  # warm-up
        rows: dict[str, list[int]] = {}  # key -> [errors, words]
        compute = audio_s = 0.0
        for clip in clips:
            result = stt.transcribe(int16_to_float32(clip.audio), final=True)
            compute += result.compute_s
            audio_s += result.audio_s
            errors = word_errors(normalise(clip.text), normalise(result.text))
            for key in (
                clip.voice,
                f"{clip.speed} wpm",
                "noisy" if clip.noisy else "clean",
                "overall",
            ):
                row = rows.setdefault(key, [0, 0])
                row[0] += errors
                row[1] += len(normalise(clip.text))
        stt.close()
        rtf = compute / audio_s
        overall = rows["overall"][0] / rows["overall"][1]
        detail = ", ".join(f"{key} {e / n:.1%}" for key, (e, n) in rows.items() if key != "overall")
        met = "meets" if overall <= TARGET_WER and rtf <= TARGET_RTF else "misses"
        print(
            f"   {spec:28s} WER {overall:6.1%}  RTF {rtf:.3f}  ({met} the target)\n      {detail}",
            flush=True,
        )


# ---- 2./3. live nodes -----------------------------------------------------------------------


class Rig:
    """fusion_node + two speech_nodes (speculative, baseline) as processes, and a client."""

    NAMESPACE = "/bench_speech"

    def __init__(self, extra: list[str]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor

        from smolfusion_ros.client import SmolFusionClient
        from smolfusion_ros.msg import AudioChunk, ResponseChunk, Utterance
        from smolfusion_ros.nodes.speech_node import AUDIO_QOS

        use_large_frame_transport()
        profile = str(paths.config_path("cpu_demo.yaml"))
        base = [sys.executable, "-m"]
        ns = ["--ros-args", "-r", f"__ns:={self.NAMESPACE}", "--params-file", profile]
        speech = "smolfusion_ros.nodes.speech_node"
        commands = [
            # The profile's own settings; only the answer length is capped to keep runs short
            # (it does not change the time to the first token).
            base + ["smolfusion_ros.nodes.fusion_node", *ns, "-p", "chat.default_max_tokens:=24"],
            base
            + [speech, *ns, "-r", "__node:=speech_spec", "-r", "audio:=audio_spec"]
            + ["-p", "session_id:=voice", "-p", "diagnostics_period_s:=0.25", *extra],
            base
            + [speech, *ns, "-r", "__node:=speech_base", "-r", "audio:=audio_base"]
            + ["-p", "session_id:=voice", "-p", "diagnostics_period_s:=0.25", *extra]
            + ["-p", "vad.speculate_silence_ms:=0", "-p", "vad.end_silence_short_ms:=0"],
        ]
        self.procs = [
            subprocess.Popen(
                command,
                cwd=tempfile.gettempdir(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=os.environ | {"ROS_HOME": tempfile.mkdtemp()},
            )
            for command in commands
        ]
        rclpy.init()
        self.node = rclpy.create_node("bench_speech_client")
        self.executor = MultiThreadedExecutor(num_threads=4)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self.lock = threading.Lock()
        self.utterances: list[tuple[float, object]] = []
        self.first_tokens: list[float] = []
        self.last_chunk_at = 0.0
        self.seen_requests: set[str] = set()
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.node.create_subscription(
            Utterance, f"{self.NAMESPACE}/utterance", self._on_utterance, 50
        )
        self.node.create_subscription(
            ResponseChunk, f"{self.NAMESPACE}/response_stream", self._on_chunk, 200
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.audio = {
            name: self.node.create_publisher(
                AudioChunk, f"{self.NAMESPACE}/audio_{name}", AUDIO_QOS
            )
            for name in ("spec", "base")
        }
        self.client = SmolFusionClient(node=self.node, namespace=self.NAMESPACE)
        self.client.wait_until_ready(180)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            p.get_subscription_count() for p in self.audio.values()
        ):
            time.sleep(0.05)
        time.sleep(1.0)

    def _on_utterance(self, msg) -> None:
        with self.lock:
            self.utterances.append((time.monotonic(), msg))

    def _on_chunk(self, msg) -> None:
        with self.lock:
            if msg.session_id == "voice":
                self.last_chunk_at = time.monotonic()
            if msg.session_id == "voice" and msg.request_id not in self.seen_requests:
                self.seen_requests.add(msg.request_id)
                self.first_tokens.append(time.monotonic())

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            for name in ("speech_spec", "speech_base", "fusion_node"):
                if name in status.name:
                    with self.lock:
                        self.diagnostics[name] = {kv.key: kv.value for kv in status.values}

    def counter(self, name: str, key: str) -> int:
        time.sleep(0.6)  # a fresh /diagnostics (0.25 s period)
        with self.lock:
            return int(self.diagnostics.get(name, {}).get(key, 0))

    def play(self, which: str, speech: np.ndarray, after_s: float = 2.0) -> dict:
        """Stream 0.5 s of silence, the speech, after_s of silence in real-time chunks.

        Returns the real end of speech (monotonic), and the first final utterance and first
        answer token that came after the speech started."""
        from smolfusion_ros.msg import AudioChunk
        from smolfusion_ros.nodes.conversions import stamp_from_wall

        lead = np.zeros(RATE // 2, np.int16)
        stream = np.concatenate([lead, speech, np.zeros(int(after_s * RATE), np.int16)])
        with self.lock:
            n_utt, n_tok = len(self.utterances), len(self.first_tokens)
        started = time.monotonic()
        wall0 = time.time()
        for k, first in enumerate(range(0, len(stream), CHUNK)):
            # A chunk goes out once its audio has been "heard", as from a real microphone.
            time.sleep(max(0.0, started + (k + 1) * CHUNK / RATE - time.monotonic()))
            piece = stream[first : first + CHUNK]
            self.audio[which].publish(
                AudioChunk(
                    stamp=stamp_from_wall(wall0 + first / RATE),
                    seq=k,
                    sample_rate=RATE,
                    channels=1,
                    samples=piece.tolist(),
                )
            )
        end_of_speech = started + (len(lead) + len(speech)) / RATE
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self.lock:
                finals = [(t, m) for t, m in self.utterances[n_utt:] if m.is_final]
                tokens = self.first_tokens[n_tok:]
            if finals and tokens:
                break
            time.sleep(0.02)
        # Let the answer finish before the next turn: a late answer must not be taken for
        # the next turn's (on a loaded machine answers can lag by seconds).
        quiet_until = time.monotonic() + 30
        while time.monotonic() < quiet_until:
            with self.lock:
                idle = time.monotonic() - max(self.last_chunk_at, started)
            if idle > 1.5:
                break
            time.sleep(0.05)
        with self.lock:
            finals = [(t, m) for t, m in self.utterances[n_utt:] if m.is_final]
            tokens = self.first_tokens[n_tok:]
            speculative = [t for t, m in self.utterances[n_utt:] if m.speculative]
        # The node's own timeline of this turn (turn.* on its /diagnostics) and the chat
        # engine's view of the answer (fusion_node's last_ttft_s, last_prompt_tokens).
        time.sleep(0.6)
        name = {"spec": "speech_spec", "base": "speech_base"}[which]
        with self.lock:
            diag = dict(self.diagnostics.get(name, {}))
            fusion = dict(self.diagnostics.get("fusion_node", {}))
        end_wall = wall0 + (len(lead) + len(speech)) / RATE
        flag = "turn.spec_waited_for_partial"
        timeline = {
            key[5:]: float(value) - end_wall
            for key, value in diag.items()
            if key.startswith("turn.") and key != flag
        }
        timeline["partial_running"] = float(diag.get(flag, "nan"))
        for key in ("last_ttft_s", "last_prompt_tokens"):
            timeline[key] = float(fusion.get(key, "nan"))
        return {
            "end": end_of_speech,
            "timeline": timeline,
            "finals": finals,
            "tokens": tokens,
            "speculative": speculative,
        }

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.spinner.join(5)
        self.node.destroy_node()
        rclpy.try_shutdown()
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


# Where the time between the end of speech and the first token goes: speech_node's turn.*
# timeline (wall times on /diagnostics), relative to the real end of speech.
BREAKDOWN = (
    ("speech_end", "VAD's end of speech (last speech window)"),
    ("spec_due", "pause of speculate_silence_ms seen (VAD + chunking)"),
    ("spec_start", "speculative transcription starts (worker free)"),
    ("spec_done", "speculative transcription done"),
    ("final_due", "turn committed (end of turn detected)"),
    ("final_start", "final job starts on the worker"),
    ("published", "final utterance published"),
    ("received", "final utterance received by the client"),
    ("first_token", "first answer token received"),
)


def print_breakdown(timelines: dict[str, list[dict[str, float]]]) -> None:
    print("   breakdown, median seconds after the real end of speech (n = turns with the step):")
    for key, label in BREAKDOWN:
        cells = []
        for which in ("spec", "base"):
            values = [t[key] for t in timelines[which] if key in t and t[key] == t[key]]
            cells.append(
                f"{statistics.median(values):7.3f} (n={len(values)})" if values else " " * 13
            )
        print(f"     {label:52s} {cells[0]}   {cells[1]}")
    for which in ("spec", "base"):
        rows = timelines[which]
        if not rows:
            continue
        partial = sum(1 for t in rows if t.get("partial_running") == 1.0)
        wait = [t["spec_start"] - t["spec_due"] for t in rows if "spec_start" in t]
        transcribe = [t["spec_done"] - t["spec_start"] for t in rows if "spec_done" in t]
        ttft = [t["last_ttft_s"] for t in rows]
        tokens = [t["last_prompt_tokens"] for t in rows]
        print(
            f"   {which}: speculation waited for a running partial in {partial}/{len(rows)} turns"
            + (f" (wait median {statistics.median(wait):.3f} s)" if wait else "")
            + (
                f", transcription median {statistics.median(transcribe):.3f} s"
                if transcribe
                else ""
            )
            + f"; engine first token median {statistics.median(ttft):.3f} s after submit, "
            f"prompt tokens evaluated median {statistics.median(tokens):.0f}",
            flush=True,
        )


def latency_part(reps: int, speech_params: list[str]) -> None:
    samples = [speak(text) for text in LATENCY_SENTENCES]
    extra = [arg for param in speech_params for arg in ("-p", param)]
    if speech_params:
        print(f"   both speech_nodes with: {' '.join(speech_params)}", flush=True)
    rig = Rig(extra)
    try:
        results = {"spec": [], "base": []}
        timelines = {"spec": [], "base": []}
        for rep in range(reps + 1):
            k = rep % len(samples)
            order = ("spec", "base") if rep % 2 == 0 else ("base", "spec")
            for which in order:
                run = rig.play(which, samples[k])
                if rep == 0 or not run["finals"] or not run["tokens"]:
                    continue  # warm-up, or nothing heard
                final_at, final = run["finals"][0]
                answered = [t for t in run["tokens"] if t >= final_at] or run["tokens"]
                timelines[which].append(
                    run["timeline"]
                    | {"received": final_at - run["end"], "first_token": answered[0] - run["end"]}
                )
                results[which].append(
                    (
                        final_at - run["end"],
                        answered[0] - run["end"],
                        word_errors(normalise(LATENCY_SENTENCES[k]), normalise(final.text)),
                        len(normalise(LATENCY_SENTENCES[k])),
                    )
                )
        print(
            f"2. end of speech -> final utterance / first answer token (cpu_demo profile, "
            f"{reps} sentences each, order alternating; target median first token <= "
            f"{TARGET_FIRST_TOKEN_S} s at the same WER)",
            flush=True,
        )
        medians = {}
        for which, label in (("spec", "speculative"), ("base", "baseline (no speculation)")):
            rows = results[which]
            if not rows:
                print(f"   {label}: nothing recognised")
                continue
            to_final = statistics.median(r[0] for r in rows)
            to_token = statistics.median(r[1] for r in rows)
            wer = sum(r[2] for r in rows) / sum(r[3] for r in rows)
            medians[which] = to_token
            print(
                f"   {label:27s} final {to_final:.3f} s, first token {to_token:.3f} s "
                f"(min {min(r[1] for r in rows):.3f}, max {max(r[1] for r in rows):.3f}), "
                f"WER {wer:.1%}, n={len(rows)}",
                flush=True,
            )
        print_breakdown(timelines)
        if len(medians) == 2:
            met = "meets" if medians["spec"] <= TARGET_FIRST_TOKEN_S else "misses"
            print(
                f"   speculative / baseline first token: {medians['spec'] / medians['base']:.2f}x; "
                f"{met} the {TARGET_FIRST_TOKEN_S} s target",
                flush=True,
            )

        print(
            f"3. sentences with a pause inside ({len(PAUSED)}, 350-600 ms): false starts and "
            "turns committed inside the pause (the robot would answer over the person)",
            flush=True,
        )
        for which, name in (("spec", "speech_spec"), ("base", "speech_base")):
            before = rig.counter(name, "false_starts")
            early_final = early_token = splits = 0
            for first, second, pause in PAUSED:
                audio = np.concatenate(
                    [speak(first), np.zeros(int(pause * RATE), np.int16), speak(second)]
                )
                run = rig.play(which, audio, after_s=2.5)
                early_final += any(t < run["end"] for t, _ in run["finals"])
                early_token += any(t < run["end"] for t in run["tokens"])
                splits += len(run["finals"]) > 1
            false_starts = rig.counter(name, "false_starts") - before
            print(
                f"   {'speculative' if which == 'spec' else 'baseline':11s}: false starts "
                f"{false_starts}/{len(PAUSED)} sentences (speculations discarded); committed "
                f"inside the pause: {early_final} (answer token before the end of speech: "
                f"{early_token}); sentences split in two: {splits}",
                flush=True,
            )
        spec_diag = rig.diagnostics.get("speech_spec", {})
        print(
            f"   speech_spec totals: speculations {spec_diag.get('speculations')}, "
            f"false_starts {spec_diag.get('false_starts')}, reused "
            f"{spec_diag.get('speculations_reused')}, short_commits "
            f"{spec_diag.get('short_commits')} (of which committed the moment the speculation "
            f"finished: {spec_diag.get('early_commits')}), speculation_waits "
            f"{spec_diag.get('speculation_waits')}, lost_chunks {spec_diag.get('lost_chunks')}",
            flush=True,
        )
    finally:
        rig.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "wer", "latency"), default="all")
    parser.add_argument("--reps", type=int, default=6, help="sentences per latency setting")
    parser.add_argument(
        "--sentences", type=int, default=len(WER_SENTENCES), help="WER sentences per voice"
    )
    parser.add_argument(
        "--stt",
        action="append",
        help="recogniser setting model:compute_type:threads:beam (repeatable); default: "
        + ", ".join(DEFAULT_STT),
    )
    parser.add_argument("--compare", action="store_true", help="all of: " + ", ".join(COMPARE_STT))
    parser.add_argument(
        "--speech-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="latency part: a parameter for both speech_nodes over the profile's, e.g. "
        "stt.final_window_pad_s:=10.0 (repeatable)",
    )
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    if args.part in ("all", "wer"):
        specs = args.stt or list(COMPARE_STT if args.compare else DEFAULT_STT)
        wer_part(specs, args.sentences)
    if args.part in ("all", "latency"):
        latency_part(args.reps, args.speech_param)
    print(f"load average at end: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
