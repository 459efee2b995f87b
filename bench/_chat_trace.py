"""fusion_node with a per-request timeline, for bench_chat_latency.py --trace (off by default).

Run instead of ``python -m smolfusion_ros.nodes.fusion_node`` with the same arguments; the
environment variable SMOLFUSION_CHAT_TRACE names a JSON-lines file that receives one record per
answered request and one per unit of background work. Nothing in the package changes: the
methods are wrapped here, in this process only, so the trace measures the code as shipped
(plus a few microseconds of bookkeeping per request).

Per request: when it was submitted, what the engine thread was doing then (answering, a
background step and which kind, idle), when the engine took it up, how long the session
switch (use_session: saving the previous session's KV state) and prompt building took, when
the back end was called and yielded its first token, how many prompt tokens it evaluated and
how many the KV cache held before, and the CPU time this process used between submission
and the first token: per thread with SMOLFUSION_TRACE_THREAD_CPU=1 (the llama.cpp compute
threads against the ROS executor and DDS threads: on 2 cores any other runnable thread stalls
the decode; reading it costs ~1.5 ms on the request's path, so it is off by default).

Env switches for A/B runs (each off unless set to 1):
  SMOLFUSION_TRACE_NO_BACKGROUND  the engine does no background work (prefill, warm, summary)
  SMOLFUSION_TRACE_ACTION_DELAY_S=S  every second converse goal waits S seconds on its executor
      thread before it is submitted, so the action protocol's own messages (goal response,
      status, the client's result request) are handled before the engine starts the prompt
      rather than during it; the timeline runs from submission either way (a diagnostic of
      CPU contention, not a fix: the caller waits S longer)
  SMOLFUSION_TRACE_EAGER_SAVE=1  prototype of a fix: after half of the answers (drawn) the engine
      thread saves the active session's KV state at once (while the caller reads its reply and
      the engine is idle) and the next use_session of another session skips its save when
      nothing was evaluated since; the timeline marks the requests that found such a snapshot
"""

from __future__ import annotations

import collections
import json
import os
import random
import resource
import threading
import time

TRACE_PATH = os.environ.get("SMOLFUSION_CHAT_TRACE", "")
NO_BACKGROUND = os.environ.get("SMOLFUSION_TRACE_NO_BACKGROUND") == "1"
ACTION_DELAY_S = float(os.environ.get("SMOLFUSION_TRACE_ACTION_DELAY_S") or 0.0)
EAGER_SAVE = os.environ.get("SMOLFUSION_TRACE_EAGER_SAVE") == "1"
# Per-thread CPU reads /proc for every thread (~1.5 ms in the node): on the request's own path
# that would lengthen the hops it measures, so it is opt-in; by default only the process
# total (getrusage, microseconds).
THREAD_CPU = os.environ.get("SMOLFUSION_TRACE_THREAD_CPU") == "1"


def thread_cpu() -> dict[int, tuple[str, float]]:
    """tid -> (kernel thread name, user+system CPU seconds) for every thread of this process;
    with SMOLFUSION_TRACE_THREAD_CPU unset, one entry for the whole process (cheap)."""
    if not THREAD_CPU:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {0: ("process", usage.ru_utime + usage.ru_stime)}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            # schedstat: time on a CPU in ns (stat's utime/stime tick at 10 ms, too coarse
            # for a 70 ms window).
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ran = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
        out[int(tid)] = (name, ran)
    return out


def cpu_delta(before: dict, after: dict, labels: dict[int, str]) -> dict[str, float]:
    """CPU seconds per thread class between two thread_cpu() snapshots."""
    classes: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        if used <= 0:
            continue
        label = labels.get(tid) or (name if tid == 0 else f"native:{name}")
        classes[label] = round(classes.get(label, 0.0) + used, 4)
    return classes


class Tracer:
    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process
        self.background: tuple[str, float] | None = None  # (kind, started) while one runs
        self.engine_tid = 0
        self.jobs: dict[str, dict] = {}
        # (time, what) of the action server's own work, to place it on the timeline.
        self.events: collections.deque = collections.deque(maxlen=256)

    def write(self, record: dict) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")

    def labels(self) -> dict[int, str]:
        """Python thread names by native id; the engine thread (which also runs one of the
        llama.cpp compute threads' share) is 'chat-engine'."""
        return {t.native_id: t.name for t in threading.enumerate() if t.native_id}


def install_action_events(tracer: Tracer) -> None:
    """Note when rclpy's action server handles a goal request, a result request, and when a
    goal's feedback is published (each runs Python on an executor thread, with the GIL)."""
    from rclpy.action import server

    def wrap_async(name: str, what: str) -> None:
        original = getattr(server.ActionServer, name)

        async def traced(self, *args, **kwargs):
            began = time.monotonic()
            try:
                return await original(self, *args, **kwargs)
            finally:
                tracer.events.append((began, what, time.monotonic() - began))

        setattr(server.ActionServer, name, traced)

    wrap_async("_execute_goal_request", "goal_request")
    wrap_async("_execute_get_result_request", "result_request")
    publish_feedback = server.ServerGoalHandle.publish_feedback

    def traced_feedback(self, feedback):
        began = time.monotonic()
        publish_feedback(self, feedback)
        tracer.events.append((began, "feedback", time.monotonic() - began))

    server.ServerGoalHandle.publish_feedback = traced_feedback


def install(tracer: Tracer) -> None:
    from smolfusion_ros.backends.llm import llama_cpp_backend
    from smolfusion_ros.core import chat_engine

    engine_cls = chat_engine.ChatEngine
    backend_cls = llama_cpp_backend.LlamaCppChatBackend

    submit = engine_cls.submit

    actions = iter(range(1 << 62))

    def traced_submit(self, request, listener=None):
        delayed = False
        if ACTION_DELAY_S > 0 and request.source == "action" and next(actions) % 2:
            time.sleep(ACTION_DELAY_S)
            delayed = True
        cpu = thread_cpu()
        job = submit(self, request, listener)
        background = tracer.background
        record = {
            "request_id": job.request_id,
            "session": request.session_id,
            "source": request.source,
            "submitted": job.submitted_at,
            "engine_busy": bool(self.busy),  # answering another request
            "delayed": delayed,
            "background_running": background[0] if background else "",
            "background_for_s": (job.submitted_at - background[1]) if background else None,
            "_cpu0": cpu,
        }
        tracer.jobs[job.request_id] = record
        return job

    engine_cls.submit = traced_submit

    answer = engine_cls._answer

    def traced_answer(self, job):
        record = tracer.jobs.get(job.request_id)
        if record is not None:
            record["taken_up"] = time.monotonic()
            record["aborts_before"] = getattr(self.backend, "aborts", 0)
            record["n_tokens_cached"] = getattr(getattr(self.backend, "_llm", None), "n_tokens", -1)
            tracer.current = record
        try:
            answer(self, job)
        finally:
            tracer.current = None
            # Drawn at random (fixed seed), not alternated: an alternation lined up with the
            # bench's action/service order and with --action-delay-s's every-second goal.
            if EAGER_SAVE and eager_draw.random() < 0.5:
                eager_save(self.backend)
            if record is not None:
                record["done"] = time.monotonic()
                cpu0 = record.pop("_cpu0")
                cpu1 = record.pop("_cpu1", None)
                labels = tracer.labels()
                if cpu1 is not None:
                    record["cpu_to_first_token"] = cpu_delta(cpu0, cpu1, labels)
                record["cpu_to_done"] = cpu_delta(cpu0, thread_cpu(), labels)
                t0 = record["submitted"]
                for key in (
                    "taken_up",
                    "session_switched",
                    "backend_called",
                    "first_token",
                    "done",
                ):
                    if key in record:
                        record[key + "_ms"] = round((record.pop(key) - t0) * 1000, 2)
                record["submitted"] = round(t0, 4)
                record["action_events_ms"] = [
                    (what, round((at - t0) * 1000, 2), round(took * 1000, 2))
                    for at, what, took in list(tracer.events)
                    if t0 - 0.2 <= at <= t0 + record["done_ms"] / 1000
                ]
                record["use_session_ms"] = round(record.get("use_session_ms", 0.0), 3)
                tracer.write({"kind": "answer", **record})
                tracer.jobs.pop(job.request_id, None)

    engine_cls._answer = traced_answer
    eager_draw = random.Random(7)

    def eager_save(backend) -> None:
        """Save the active session's state now; remember what it covers."""
        llm = getattr(backend, "_llm", None)
        if llm is None or not backend._session_budget or not backend._active_session:
            return
        if llm.n_tokens == 0:
            return
        began = time.monotonic()
        backend._save(backend._active_session)
        backend._trace_snapshot = (backend._active_session, backend.tokens_evaluated_total)
        tracer.write({"kind": "eager_save", "ms": round((time.monotonic() - began) * 1000, 3)})

    tracer.current = None

    use_session = backend_cls.use_session

    def switch_without_save(self, session_id) -> None:
        """use_session when the active session's saved state is still current."""
        self._trace_snapshot = None
        self._active_session = session_id
        saved = self._sessions.pop(session_id, None)
        if saved is not None:
            self._restore(saved)

    def traced_use_session(self, session_id):
        began = time.monotonic()
        snapshot = getattr(self, "_trace_snapshot", None)
        reused = (
            snapshot is not None
            and self._llm is not None
            and session_id != self._active_session
            and snapshot == (self._active_session, self.tokens_evaluated_total)
            and self._active_session in self._sessions
        )
        if reused:
            switch_without_save(self, session_id)
        else:
            use_session(self, session_id)
        record = tracer.current
        if record is not None and tracer.background is None:
            record["snapshot_reused"] = reused
            record["use_session_ms"] = (time.monotonic() - began) * 1000
            record["session_switched"] = time.monotonic()

    backend_cls.use_session = traced_use_session

    stream_chat = backend_cls.stream_chat

    def traced_stream_chat(self, messages, settings, cancel):
        record = tracer.current if tracer.background is None else None
        if record is not None:
            record["backend_called"] = time.monotonic()
        first = True
        for delta in stream_chat(self, messages, settings, cancel):
            if first and record is not None:
                first = False
                record["first_token"] = time.monotonic()
                record["_cpu1"] = thread_cpu()
                record["prompt_tokens_evaluated"] = self.prompt_tokens_evaluated
                record["prompt_tokens"] = self._prompt_end
            yield delta

    backend_cls.stream_chat = traced_stream_chat

    background_step = engine_cls._background_step

    def traced_background_step(self):
        if NO_BACKGROUND:
            with self._cond:  # drop it all: the A/B switch "no idle work"
                self._prefill_pending = None
                self._warm_due.clear()
            self._summary_due.clear()
            return
        with self._cond:
            if self._prefill_pending is not None:
                kind = "prefill"
            elif self._warm_due:
                kind = "warm:" + next(iter(self._warm_due))
            elif self._summary_due:
                kind = "summary"
            else:
                kind = "nothing"
        aborts = getattr(self.backend, "aborts", 0)
        began = time.monotonic()
        tracer.background = (kind, began)
        try:
            background_step(self)
        finally:
            tracer.background = None
            ended = time.monotonic()
            tracer.write(
                {
                    "kind": "background",
                    "what": kind,
                    "started": round(began, 4),
                    "ms": round((ended - began) * 1000, 2),
                    "preempted": self._preempt.is_set(),
                    "aborted": getattr(self.backend, "aborts", 0) - aborts,
                    "abort_delay_ms": round(
                        getattr(self.backend, "last_abort_delay_s", 0) * 1000, 2
                    ),
                    "stats": {
                        k: getattr(self.stats, k)
                        for k in ("warmups", "prefills", "summaries", "summaries_preempted")
                    },
                }
            )

    engine_cls._background_step = traced_background_step


def main() -> None:
    if TRACE_PATH:
        tracer = Tracer(TRACE_PATH)
        install(tracer)
        install_action_events(tracer)
    from smolfusion_ros.nodes.fusion_node import main as node_main

    node_main()


if __name__ == "__main__":
    main()
