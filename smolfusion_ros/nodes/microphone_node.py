"""microphone_node: audio from a sound card or a WAV file, out in fixed mono chunks.

Publishes:   audio (smolfusion_ros/AudioChunk: mono int16 at sample_rate, chunk_ms per
             message, stamp = the node clock's time of the chunk's first sample (ROS time, so
             use_sim_time and bag replay agree), seq = 0, 1, 2, ... so a
             listener can count chunks lost on the way; reliable, KEEP_LAST queue_s of audio),
             /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz: chunks published, level and
             peak in dBFS and clipping ratio over the last period, source, errors)
Parameters:  sample_rate (16000), chunk_ms (100), device ("" = the default ALSA input via
             sounddevice; else a device index or (part of) a device name), wav_file (a WAV file
             played at real-time pace instead of a device, converted to mono and sample_rate),
             loop (false: a WAV file ends once, then nothing more is published),
             wait_for_subscriber_s (2.0: a WAV file starts once `audio` has a subscriber, or
             after this long, so a listener started with the node hears it from the start),
             queue_s (5.0: seconds of audio the publisher keeps for a reader that falls behind),
             diagnostics_period_s (1.0)

Capture runs on its own thread (the sounddevice callback only queues blocks), so the executor
is never blocked. A device that is missing or cannot be opened is said once, as one WARN line
naming it and what to set (`device`, or `wav_file`), then retried quietly every 2 s with the
state on /diagnostics (ERROR level, retries, last_error); a device that comes back is logged
once. A missing or unreadable WAV file is a configuration error.

A managed (lifecycle) node: configure reads the parameters, the WAV file (a missing one fails
the transition with one line) or prepares the device, and creates `audio` with its queue
depth; activate starts capture (a WAV file plays from its start again); deactivate stops
capture and closes the device; cleanup releases everything. seq counts on across
deactivate/activate. `autostart` (true in the profiles) brings it to active.
"""

from __future__ import annotations

import array
import math
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from smolfusion_ros.io.audio import LevelMeter, dbfs
from smolfusion_ros.io.capture import CaptureError, DeviceCapture, load_wav
from smolfusion_ros.msg import AudioChunk
from smolfusion_ros.nodes.diagnostics import (
    DIAGNOSTICS_PERIOD_SPEC,
    create_diagnostics,
    diagnostic_array,
)
from smolfusion_ros.nodes.managed import AUTOSTART_SPEC, ManagedNode
from smolfusion_ros.nodes.parameters import (
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameter_specs,
    read_parameters,
)
from smolfusion_ros.nodes.runner import run_node

REOPEN_PERIOD_S = 2.0
SUBSCRIBER_SETTLE_S = 0.3


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of microphone_node (the profile test checks the YAML files)."""
    return [
        AUTOSTART_SPEC,
        ParamSpec(
            "device",
            "",
            "'' = default input; else a device index or (part of) its name",
            # It may arrive as an integer (-p device:=2).
            dynamic_typing=True,
        ),
        ParamSpec(
            "sample_rate", 16000, "sample rate of published audio (Hz)", between(8000, 192000)
        ),
        ParamSpec("chunk_ms", 100, "audio per message (milliseconds)", between(5, 2000)),
        ParamSpec("wav_file", "", "play this WAV file at real-time pace instead of a device"),
        ParamSpec("loop", False, "restart the WAV file at its end"),
        ParamSpec(
            "wait_for_subscriber_s",
            2.0,
            "WAV file: start when `audio` has a subscriber, or after this many seconds",
            at_least(0.0),
        ),
        ParamSpec(
            "queue_s",
            5.0,
            "seconds of audio kept for a reader that falls behind (publisher queue depth)",
            between(0.1, 60.0),
        ),
        DIAGNOSTICS_PERIOD_SPEC,
    ]


class MicrophoneNode(ManagedNode):
    """Managed: configure reads the WAV file or prepares the device and creates `audio` with
    its queue depth, activate starts capture (a WAV file plays from its start), deactivate
    stops capture and closes the device, cleanup releases everything."""

    def __init__(self, node_name: str = "microphone_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare_parameter_specs(self, parameter_specs())
        self._rate = 16000
        self._chunk = 1600
        self._loop = False
        self._wait_for_subscriber_s = 2.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._target = None
        self._source = ""
        self._wav: np.ndarray | None = None
        self._device: DeviceCapture | None = None
        self._audio_pub = None
        self._seq = 0  # counts on across deactivate/activate: a gap always means a loss
        self._clock_type = self.get_clock().clock_type
        self._reset_counts("unconfigured")
        self._diag_pub = create_diagnostics(self, self._publish_diagnostics)

    def _reset_counts(self, state: str) -> None:
        with self._lock:
            self._published = 0
            self._errors = 0
            self._last_error = ""
            self._state = state
            self._levels = LevelMeter()  # level, peak and clipping over a diagnostics period
            self._last_chunk_time: float | None = None
            self._retries = 0  # failed device (re)opens
            self._outage_reported = False  # the current outage has had its one log line
            self._opened_once = False

    # ---- lifecycle ---------------------------------------------------------------------------

    def configure(self) -> None:
        p = read_parameters(self, parameter_specs())
        device = "" if p["device"] is None else str(p["device"]).strip()
        self._rate = p["sample_rate"]
        self._chunk = max(1, round(self._rate * p["chunk_ms"] / 1000))
        self._loop = p["loop"]
        self._wait_for_subscriber_s = p["wait_for_subscriber_s"]
        try:
            if p["wav_file"]:
                self._wav = load_wav(p["wav_file"], self._rate)
                self._source = f"wav_file {p['wav_file']}"
                self._target = self._play_wav
            else:
                spec: int | str | None = int(device) if device.isdigit() else (device or None)
                self._device = DeviceCapture(spec, self._rate, self._chunk)
                self._source = f"device {device or '(default)'}"
                self._target = self._capture_device
        except CaptureError as exc:
            raise ConfigError(str(exc)) from None
        self._reset_counts("idle")

        # Reliable, KEEP_LAST queue_s of audio: a chunk lost in transport is resent (a lost
        # 100 ms can delete a word; resending 3.2 KB on one host is cheap), and a reader that
        # stalls longer than queue_s loses the oldest chunks instead of blocking capture (only
        # KEEP_ALL would block). The rclpy default QoS (reliable) keeps matching best-effort
        # readers too; seq numbers make any loss visible downstream. Created here because its
        # depth is a parameter.
        depth = max(10, math.ceil(p["queue_s"] * 1000 / p["chunk_ms"]))
        self._audio_pub = self.create_publisher(
            AudioChunk,
            "audio",
            QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=depth,
                reliability=ReliabilityPolicy.RELIABLE,
            ),
        )
        self.get_logger().info(
            f"publishing {self._chunk}-sample chunks at {self._rate} Hz from {self._source}"
        )

    def activate(self) -> None:
        self._stop.clear()
        with self._lock:
            self._state = "starting"
        self._thread = threading.Thread(target=self._target, name="microphone-capture", daemon=True)
        self._thread.start()

    def deactivate(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(3)
        if self._device is not None:
            self._device.close()  # the capture thread closes it too; a second close is a no-op
        with self._lock:
            self._state = "paused"

    def cleanup(self) -> None:
        self._wav, self._device, self._target = None, None, None
        publisher, self._audio_pub = self._audio_pub, None
        if publisher is not None:
            self.destroy_publisher(publisher)
        self._source = ""
        self._reset_counts("unconfigured")

    # ---- capture threads -----------------------------------------------------------------------

    def _play_wav(self) -> None:
        wav, publisher = self._wav, self._audio_pub
        if wav is None or publisher is None:
            return
        n_chunks = math.ceil(len(wav) / self._chunk)
        chunk_s = self._chunk / self._rate
        deadline = time.monotonic() + self._wait_for_subscriber_s
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            if self._stop.wait(0.02):
                return
        # The subscriber's side of a fresh match completes a little later.
        if publisher.get_subscription_count() and self._stop.wait(SUBSCRIBER_SETTLE_S):
            return
        clock0, start = self.get_clock().now().nanoseconds, time.monotonic()
        with self._lock:
            self._state = "playing"
        k = 0  # chunks sent since start (across loops)
        while not self._stop.is_set():
            i = k % n_chunks if n_chunks else 0
            if n_chunks == 0 or (k >= n_chunks and not self._loop):
                with self._lock:
                    self._state = "finished"
                self.get_logger().info(f"{self._source} finished after {k} chunks")
                return
            # A chunk goes out once its audio has "been heard", as from a real microphone.
            if self._stop.wait(max(0.0, start + (k + 1) * chunk_s - time.monotonic())):
                return
            piece = wav[i * self._chunk : (i + 1) * self._chunk]
            if len(piece) < self._chunk:
                piece = np.concatenate([piece, np.zeros(self._chunk - len(piece), np.int16)])
            self._publish(piece, clock0 + round(k * chunk_s * 1e9))
            k += 1

    def _capture_device(self) -> None:
        capture = self._device
        pending = np.zeros(0, dtype=np.int16)
        while not self._stop.is_set():
            if not capture.healthy():
                lost = capture.stream is not None  # it was capturing: the stream stopped
                capture.close()
                try:
                    label = capture.open()
                except Exception as exc:
                    self._device_failed(exc, lost)
                    self._stop.wait(REOPEN_PERIOD_S)
                    continue
                pending = np.zeros(0, dtype=np.int16)
                with self._lock:
                    self._state = "capturing"
                    reported, self._outage_reported = self._outage_reported, False
                if reported or not self._opened_once:
                    self.get_logger().info(f"capturing from {label}")
                self._opened_once = True
            block = capture.read(timeout=0.5)
            if block is None:
                continue
            pending = np.concatenate([pending, block])
            while len(pending) >= self._chunk:
                piece, pending = pending[: self._chunk], pending[self._chunk :]
                behind_s = (len(pending) + self._chunk) / self._rate
                start = self.get_clock().now().nanoseconds - round(behind_s * 1e9)
                self._publish(piece, start)
        capture.close()

    def _publish(self, samples: np.ndarray, start_ns: int) -> None:
        """Publish one chunk; `start_ns` is its first sample's time on the node clock."""
        data = array.array("h")
        data.frombytes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
        publisher = self._audio_pub
        if publisher is None:  # cleaned up under a capture thread that outlived its join
            return
        publisher.publish(
            AudioChunk(
                # Clamped: under use_sim_time before the first /clock, now() is 0.
                stamp=Time(nanoseconds=max(0, start_ns), clock_type=self._clock_type).to_msg(),
                seq=self._seq,
                sample_rate=self._rate,
                channels=1,
                samples=data,
            )
        )
        self._seq += 1  # only the capture thread publishes
        with self._lock:
            self._published += 1
            self._last_chunk_time = time.monotonic()
            self._levels.add(samples)

    # ---- bookkeeping -------------------------------------------------------------------------

    def _device_failed(self, exc: Exception, lost: bool) -> None:
        """A failed (re)open: one WARN line per outage, then only /diagnostics.

        Without a sound card every retry fails, often with a different message each time
        (PortAudio/ALSA), so the line is per outage, not per distinct message.
        """
        what = "input stream stopped and cannot be reopened" if lost else "cannot open input"
        error = f"{what} ({self._source}): {exc}"
        with self._lock:
            self._errors += 1
            self._retries += 1
            self._last_error = error
            self._state = "retrying"
            first, self._outage_reported = not self._outage_reported, True
        if first:
            self.get_logger().warning(
                f"no microphone: {error}. Set `device` to an input device (an index or part of "
                "its name; `python3 -m sounddevice` lists them) or `wav_file` to play a WAV "
                f"file instead. Retrying every {REOPEN_PERIOD_S:.0f} s without further log "
                "lines; state, retries and last_error are on /diagnostics."
            )

    def _publish_diagnostics(self) -> None:
        with self._lock:
            level, peak, clipping = self._levels.take()
            published, errors, last_error, state = (
                self._published,
                self._errors,
                self._last_error,
                self._state,
            )
            last_chunk = self._last_chunk_time
            retries = self._retries
        idle_s = time.monotonic() - last_chunk if last_chunk is not None else None
        if not self.is_active:  # deactivated or unconfigured on purpose: the state says so
            status, message = DiagnosticStatus.OK, state
        elif state == "retrying":
            status, message = (
                DiagnosticStatus.ERROR,
                f"no input device ({retries} retries; set device or wav_file): {last_error}",
            )
        elif state == "finished":
            status, message = DiagnosticStatus.OK, "WAV file finished"
        elif idle_s is None or idle_s > 2.0:
            waiting = "no audio yet" if idle_s is None else f"no audio for {idle_s:.0f} s"
            status, message = DiagnosticStatus.WARN, waiting
        else:
            status, message = DiagnosticStatus.OK, state
        values = {
            "chunks_published": published,
            "level_dbfs": f"{dbfs(level):.1f}",
            "peak_dbfs": f"{dbfs(peak):.1f}",
            "clipping_ratio": f"{clipping:.4f}",
            "sample_rate": self._rate,
            "chunk_samples": self._chunk,
            "source": self._source,
            "state": state,
            "errors": errors,
            "retries": retries,
            "last_error": last_error,
        }
        if self._device is not None:
            values["overflows"] = self._device.overflows
            values["dropped_blocks"] = self._device.dropped
        self._diag_pub.publish(
            diagnostic_array(self, "microphone", status, message, self._source, values)
        )


def main() -> None:
    run_node(MicrophoneNode)


if __name__ == "__main__":
    main()
