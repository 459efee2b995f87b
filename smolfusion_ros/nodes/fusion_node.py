"""fusion_node: the language model and the vision model running concurrently.

Subscribes:  utterance (smolfusion_ros/Utterance; final utterances are answered,
             speculative ones only have their prompt evaluated ahead: engine.prefill),
             camera_node/frame (sensor_msgs/Image, SensorDataQoS) when vision is configured
Publishes:   response_stream (ResponseChunk, every token), response (Turn, every final answer
             and greetings), scene (SceneContext), debug_image (frame + scene text),
             /diagnostics (1 Hz: model states, queue, time to first token, tokens/s, vision)
Services:    chat (smolfusion_ros/Chat), analyze (smolfusion_ros/Analyze)
Actions:     converse (smolfusion_ros/Converse: token feedback, cancel mid-answer)
Lifecycle:   a managed node (nodes/managed.py): ~/get_state, ~/change_state, ...; the models
             load in configure (in the background), requests are taken while active.
Parameters:  llm.* (back end, model, threads, context, sampling), chat.* (limits, queue),
             persona.*, session.*, memory.* (SQLite file, summaries), vision.* (back end,
             model, scene loop, routing patterns, greeting); config/cpu_demo.yaml has each.
             Read at configure: set them while the node is unconfigured (deactivate,
             cleanup, ros2 param set, configure); vision.interval_s takes ros2 param set at
             once; vision.frame_topic, knowledge.node, diagnostics_period_s and autostart
             are read-only (parameter_specs() is the table; nodes/parameters.py).

All model work runs on the chat engine's thread (LLM) and the vision worker's thread (vision
model); callbacks only validate, queue and wait. A visual turn asks the vision model about the
newest frame and the LLM answers with that; every other turn uses the newest scene description
and never waits for the vision model.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from smolfusion_ros import catalogue, paths
from smolfusion_ros.action import Converse
from smolfusion_ros.backends import registry
from smolfusion_ros.core.chat_engine import ChatEngine, EngineSettings, EngineState
from smolfusion_ros.core.jobs import ChatJob
from smolfusion_ros.core.personas import PersonaError, load_personas
from smolfusion_ros.core.requests import ChatRequest, RequestLimits, RequestRejected
from smolfusion_ros.core.sessions import InMemorySessionStore
from smolfusion_ros.memory.session_store import PersistentSessionStore
from smolfusion_ros.memory.store import MemoryStore, MemoryStoreError
from smolfusion_ros.msg import ResponseChunk, Turn, Utterance
from smolfusion_ros.nodes.conversions import (
    chat_request_from,
    fill_chat_response,
)
from smolfusion_ros.nodes.diagnostics import (
    DIAGNOSTICS_PERIOD_SPEC,
    create_diagnostics,
    diagnostic_array,
)
from smolfusion_ros.nodes.fusion_dialogue import DialogueBridge, dialogue_parameter_specs
from smolfusion_ros.nodes.fusion_vision import VisionBridge, vision_parameter_specs
from smolfusion_ros.nodes.managed import AUTOSTART_SPEC, ManagedNode
from smolfusion_ros.nodes.parameters import (
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameter_specs,
    one_of,
    read_parameters,
)
from smolfusion_ros.nodes.runner import CONFIG_ERROR_EXIT, request_exit, run_node
from smolfusion_ros.srv import Chat

FEEDBACK_POLL_S = 0.02
# Feedback after the first is batched at this period: with one message per token a 64-token
# answer through the action took 1.17x the direct llama.cpp time on 2 cores, batched 1.10x
# (bench/bench_chat_latency.py); a person cannot tell 30 ms apart.
FEEDBACK_BATCH_S = 0.03

# Request queues of the chat service and the converse action's goal, cancel and result
# services. rclpy's default keeps the last 10 requests, so 200 simultaneous calls lost 190
# before any callback ran (issue 9). A robot sees bursts from many behaviour-tree leaves,
# consoles and retries at once; 256 holds such a burst, and every request in it is answered
# (overload at once with "busy", which costs microseconds). Reliable, because a lost request is
# a caller waiting forever; volatile, because a request is for this node now and must never be
# replayed to a restarted one. The same depth bounds the server's response writer, so the
# burst's answers are not dropped on the way back either. Memory: a Chat request is a few KB.
REQUEST_QUEUE_DEPTH = 256
REQUEST_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=REQUEST_QUEUE_DEPTH,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Feedback: one goal streams at a time and its feedback is batched (FEEDBACK_BATCH_S), so the
# default depth of 10 reliable messages is plenty; a slow reader delays, never loses, tokens.
FEEDBACK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

# A model that fails to load in the background stops the node (exit 2, one line) instead of
# leaving it up and failing every chat. It reports ERROR on /diagnostics first, so monitors
# (and the launch log) see why before the node goes: for at least the first delay, and, while
# no subscriber has been discovered yet (a loaded machine: a monitor that subscribed before
# the node started was missed in CI), up to the second.
LOAD_FAILURE_EXIT_DELAY_S = 2.0
LOAD_FAILURE_EXIT_MAX_DELAY_S = 8.0
GGUF_MAGIC = b"GGUF"


def check_gguf_file(path, parameter: str) -> None:
    """Raise ConfigError with one clear line unless `path` is a readable GGUF file.

    Checked at start-up, before the background load, so that a wrong file (a directory, an
    empty or unreadable file, a safetensors/bin/text file) stops the node at once like every
    other bad parameter, instead of leaving it running and failing every chat.
    """
    if path.is_dir():
        raise ConfigError(f"{parameter}: {path} is a directory, not a GGUF model file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ConfigError(f"{parameter}: cannot read {path}: {exc.strerror or exc}") from None
    if not magic:
        raise ConfigError(f"{parameter}: {path} is empty, not a GGUF model file")
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"{parameter}: {path} is not a GGUF model file (it starts with {magic!r}, "
            f"not {GGUF_MAGIC!r}); llama.cpp needs a .gguf file"
        )


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of fusion_node: the LLM's, the vision half's and the dialogue's (the
    profile test checks the YAML files against it)."""
    return _parameter_specs() + vision_parameter_specs() + dialogue_parameter_specs()


def _parameter_specs() -> list[ParamSpec]:
    return [
        ParamSpec(
            "llm.backend",
            "llama_cpp",
            "LLM back end name from the back-end registry",
            one_of(*registry.llm_backend_names()),
        ),
        ParamSpec("llm.model", "smollm2-135m-instruct", "model id from models/catalogue.yaml"),
        ParamSpec("llm.model_path", "", "explicit GGUF file; overrides llm.model when set"),
        ParamSpec(
            "llm.n_ctx", 2048, "context size in tokens (prompt + answer)", between(256, 131072)
        ),
        ParamSpec(
            "llm.n_threads",
            2,
            "CPU threads for the LLM (1 per concurrent model on 2 cores)",
            between(1, 256),
        ),
        ParamSpec("llm.n_batch", 256, "prompt evaluation batch size", between(8, 8192)),
        ParamSpec(
            "llm.n_gpu_layers",
            0,
            "layers offloaded to the GPU (-1 = all, 0 = CPU only)",
            at_least(-1),
        ),
        ParamSpec("llm.temperature", 0.7, "sampling temperature (0 = greedy)", between(0.0, 5.0)),
        ParamSpec("llm.top_p", 0.9, "nucleus sampling mass", between(0.0, 1.0)),
        ParamSpec("llm.top_k", 40, "top-k sampling (0 = off)", at_least(0)),
        ParamSpec("llm.repeat_penalty", 1.1, "repetition penalty", between(0.5, 3.0)),
        ParamSpec("llm.seed", -1, "sampling seed (-1 = random)", at_least(-1)),
        ParamSpec(
            "llm.session_cache_mb",
            128,
            "memory for saved per-session KV state, so interleaved sessions do not re-evaluate "
            "their history (least recently used dropped; 0 = off)",
            between(0, 1_000_000),
        ),
        ParamSpec(
            "llm.background_chunk",
            16,
            "with layers on a GPU: prompt tokens per evaluation step of background work "
            "(summaries, prefill), a waiting request is delayed by at most one such step; on "
            "the CPU background work runs in n_batch chunks and a waiting request aborts the "
            "running decode",
            between(1, 8192),
        ),
        # A remote server (llm.backend: openai, the fleet_robot profile).
        ParamSpec(
            "llm.base_url",
            "",
            "OpenAI-compatible server for llm.backend openai, e.g. http://server:8080/v1 "
            "(llm.model is then the served model name; empty = the first the server lists)",
        ),
        ParamSpec(
            "llm.api_key_env",
            "OPENAI_API_KEY",
            "environment variable holding the server's API key (sent as a bearer token when "
            "set; a key in a parameter would be readable by anyone on the ROS graph)",
        ),
        ParamSpec(
            "llm.timeout_s",
            60.0,
            "longest wait for the server's next streamed token (or first byte)",
            between(0.1, 3600.0),
        ),
        ParamSpec(
            "llm.connect_timeout_s",
            3.0,
            "longest wait to connect to the server",
            between(0.1, 600.0),
        ),
        ParamSpec(
            "llm.retries",
            2,
            "retries, with backoff, of a request that failed before its first token",
            between(0, 20),
        ),
        ParamSpec(
            "llm.cache_prompt",
            True,
            "send llama-server's cache_prompt hint (reuse the slot's evaluated prefix); false for "
            "servers that reject unknown fields",
        ),
        ParamSpec(
            "chat.default_max_tokens",
            160,
            "answer length for utterances from topics",
            between(1, 32768),
        ),
        ParamSpec(
            "chat.max_tokens_limit",
            1024,
            "largest max_tokens a request may ask for",
            between(1, 32768),
        ),
        ParamSpec(
            "chat.max_input_chars",
            4000,
            "longest accepted question in characters",
            between(1, 1_000_000),
        ),
        ParamSpec(
            "chat.max_pending",
            4,
            "requests that may wait behind the current answer; more are rejected with an error",
            between(1, 1024),
        ),
        ParamSpec(
            "chat.request_timeout_s", 120.0, "a chat call gives up after this long", at_least(0.1)
        ),
        ParamSpec("persona.file", "personas.yaml", "persona YAML (relative = package config/)"),
        ParamSpec("persona.default", "", "default persona id (empty = the file's default)"),
        ParamSpec("session.default_id", "default", "session used when a request names none"),
        ParamSpec(
            "session.max_sessions",
            256,
            "sessions kept in memory (least recent dropped)",
            between(1, 1_000_000),
        ),
        ParamSpec(
            "session.max_turns",
            64,
            "turns kept per session in RAM (without memory.database_path)",
            between(2, 100_000),
        ),
        ParamSpec(
            "session.window_turns",
            12,
            "newest turns put into the prompt (as many as fit)",
            between(1, 10_000),
        ),
        ParamSpec(
            "memory.summary_batch",
            6,
            "fold turns older than the window into a running "
            "summary once this many are waiting (0 = no summaries)",
            between(0, 10_000),
        ),
        ParamSpec("memory.summary_max_tokens", 120, "length limit of a summary", between(16, 4096)),
        ParamSpec(
            "memory.database_path",
            "",
            "SQLite memory shared with memory_node: "
            "'default' = $ROS_HOME/smolfusion_ros/memory.db, empty = in-process only",
        ),
        DIAGNOSTICS_PERIOD_SPEC,
        AUTOSTART_SPEC,
    ]


class FusionNode(ManagedNode):
    """The conversation node: LLM answers for chat, converse and utterances.

    A managed node (nodes/managed.py). Its services, action, topics and timer exist for its
    whole life; configure() builds the personas, rules, back ends, session store and chat
    engine and starts the model loading in the background (diagnostics say "loading" until it
    is done); activate() starts taking requests and camera frames; deactivate() stops taking
    them (answers already accepted are finished; new calls get "node is inactive"); cleanup()
    stops the engine (a running summary is preempted, queued requests are answered) and frees
    the models. deactivate -> cleanup -> `ros2 param set` (e.g. llm.model_path) -> configure ->
    activate switches models without restarting the process.
    """

    def __init__(self, node_name: str = "fusion_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._specs = parameter_specs()
        declare_parameter_specs(self, self._specs)
        # Read once, at construction: they name entities or size the executor.
        initial = read_parameters(self, self._specs)
        self._params = initial
        self.engine: ChatEngine | None = None
        self._engine_stopped = True
        self._load_failure_exits = False

        # Waiting callbacks must not block each other or the topic callbacks.
        waiting = ReentrantCallbackGroup()
        self.vision = VisionBridge(
            self,
            initial["vision.frame_topic"],
            waiting_group=waiting,
            is_active=lambda: self.is_active,
            inactive_error=self.inactive_error,
        )
        # Rules, knowledge retrieval and operator personas (nodes/fusion_dialogue.py).
        self.dialogue = DialogueBridge(self, initial["knowledge.node"])
        self.dialogue.on_personas_changed = self._personas_changed
        # Service calls and goals wait on an executor thread until their answer is done (the
        # model works on the engine's thread). At most chat.max_pending + 1 chat/converse
        # requests can be unfinished at once (more are rejected), plus the analyze calls; the
        # runner sizes the executor above this so rejections, cancels, timers and topics always
        # find a free thread (runner.create_executor). Sized from the value at start: a larger
        # chat.max_pending set later only queues more, it does not hold more threads than this
        # plus the runner's free ones.
        self.max_waiting_calls = initial["chat.max_pending"] + 1 + self.vision.max_waiting_calls
        self._utterances_dropped = 0
        self._active_goals: dict[bytes, ChatJob] = {}
        self._goals_lock = threading.Lock()
        # chat calls and converse goals being served; shutdown waits until they have answered
        self._calls_in_flight = 0
        self._calls_lock = threading.Lock()
        self._closing = False

        self._stream_pub = self.create_publisher(ResponseChunk, "response_stream", 100)
        self._response_pub = self.create_publisher(Turn, "response", 10)
        # /diagnostics in every lifecycle state (a monitor sees an unconfigured node too).
        self._diag_pub = create_diagnostics(self, self._publish_diagnostics)

        self.create_service(
            Chat, "chat", self._on_chat, qos_profile=REQUEST_QOS, callback_group=waiting
        )
        self._converse = ActionServer(
            self,
            Converse,
            "converse",
            execute_callback=self._execute_converse,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=self._on_cancel,
            callback_group=waiting,
            goal_service_qos_profile=REQUEST_QOS,
            result_service_qos_profile=REQUEST_QOS,
            cancel_service_qos_profile=REQUEST_QOS,
            feedback_pub_qos_profile=FEEDBACK_QOS,
        )
        self.create_subscription(
            Utterance,
            "utterance",
            self._on_utterance,
            20,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )

    # --------------------------------------------------------------- lifecycle
    def configure(self) -> None:
        p = read_parameters(self, self._specs)
        if p["chat.default_max_tokens"] > p["chat.max_tokens_limit"]:
            raise ConfigError("chat.default_max_tokens is larger than chat.max_tokens_limit")
        personas_path = paths.config_path(p["persona.file"])
        try:
            personas = load_personas(personas_path, p["persona.default"])
        except FileNotFoundError:
            raise ConfigError(f"persona file {personas_path} does not exist") from None
        except PersonaError as exc:
            raise ConfigError(str(exc)) from None
        self.dialogue.configure(p, personas)
        personas = self.dialogue.personas()
        model_path = self._llm_model_path(p)
        self._model_path = model_path
        options = dict(
            model_path=model_path,
            n_ctx=p["llm.n_ctx"],
            n_threads=p["llm.n_threads"],
            n_batch=p["llm.n_batch"],
            n_gpu_layers=p["llm.n_gpu_layers"],
            session_cache_bytes=p["llm.session_cache_mb"] << 20,
            background_chunk=p["llm.background_chunk"],
        )
        if p["llm.backend"] in registry.REMOTE_LLM_BACKENDS:
            options |= dict(
                base_url=p["llm.base_url"],
                model_name=p["llm.model"],
                api_key_env=p["llm.api_key_env"],
                timeout_s=p["llm.timeout_s"],
                connect_timeout_s=p["llm.connect_timeout_s"],
                retries=p["llm.retries"],
                cache_prompt=p["llm.cache_prompt"],
            )
        try:
            backend = registry.create_llm_backend(p["llm.backend"], **options)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        limits = RequestLimits(
            max_input_chars=p["chat.max_input_chars"],
            max_tokens_limit=p["chat.max_tokens_limit"],
            default_session_id=p["session.default_id"],
        )
        settings = EngineSettings(
            limits=limits,
            max_pending=p["chat.max_pending"],
            temperature=p["llm.temperature"],
            top_p=p["llm.top_p"],
            top_k=p["llm.top_k"],
            repeat_penalty=p["llm.repeat_penalty"],
            seed=p["llm.seed"],
            vision_timeout_s=p["vision.timeout_s"],
            summary_batch=p["memory.summary_batch"],
            summary_max_tokens=p["memory.summary_max_tokens"],
        )
        if p["vision.backend"]:
            self.vision.configure(p, llm_busy=self._llm_busy)
        worker = self.vision.worker
        engine = ChatEngine(
            backend,
            personas,
            self._session_store(p),
            settings,
            vision=worker,
            classifier=self.vision.classifier if worker else None,
            on_loaded=self._on_model_loaded,
            rules=self.dialogue.rules,
            knowledge=self.dialogue.lookup if p["knowledge.enabled"] else None,
            reload_personas=self.dialogue.personas,
            language_of=self.dialogue.language_of,
        )
        engine.add_token_observer(self._publish_chunk)
        engine.add_done_observer(self._publish_final)
        self._params = p
        # A background load that fails stops the process only when nothing manages the node
        # (autostart, e.g. ros2 launch): a lifecycle manager can clean up and configure again.
        self._load_failure_exits = self.autostart
        self.engine = engine
        self._engine_stopped = False
        # Logged before the load starts: llama.cpp silences stderr process-wide while loading.
        self.get_logger().info(
            f"loading {backend.model_name} with {p['llm.backend']} "
            f"(n_ctx={p['llm.n_ctx']}, threads={p['llm.n_threads']}); "
            f"personas: {', '.join(personas.ids())}"
        )
        # The models load on the engine's and the vision worker's threads: the transition
        # returns at once (the executor thread is not held for seconds) and the node reports
        # LOADING until they are ready; requests meanwhile get "still loading".
        engine.start()
        self.vision.start()

    def cleanup(self) -> None:
        # A lifecycle cleanup (e.g. to switch models) is not a shutdown: callers are told which.
        self._stop_engine(
            "the node is shutting down" if self._closing else "the node is being cleaned up"
        )
        self.engine = None
        self.dialogue.close()

    def after_transition(self) -> None:
        # /diagnostics at once: clients (SmolFusionClient.wait_until_ready) and the gateway
        # read the model's state from it, and a stale "ready" must not outlive a cleanup.
        if self.context.ok():
            self._publish_diagnostics()

    def _stop_engine(self, reason: str = "the node is shutting down") -> None:
        """Stop the vision worker and the engine (idempotent): the running answer stops before
        its next token, a running summary is preempted, queued requests are answered with
        success=false and `reason`, then the models are freed."""
        self.vision.close(reason)
        engine = self.engine
        if engine is not None and not self._engine_stopped:
            self._engine_stopped = True
            engine.stop(reason=reason)
            close = getattr(engine.sessions, "close", None) or getattr(
                getattr(engine.sessions, "store", None), "close", None
            )
            if close is not None:
                close()

    def _llm_busy(self) -> bool:
        engine = self.engine
        return engine is not None and engine.busy

    def _personas_changed(self, book) -> None:
        """persona_events: an operator persona was created, replaced or deleted."""
        engine = self.engine
        if engine is not None:
            engine.personas = book

    @staticmethod
    def _llm_model_path(p: dict) -> Path | None:
        """The local model the LLM back end loads; None for a remote server (llm.base_url)."""
        if p["llm.backend"] in registry.REMOTE_LLM_BACKENDS:
            return None
        given = Path(p["llm.model_path"]).expanduser() if p["llm.model_path"] else None
        if p["llm.backend"] == "transformers" and given is not None and given.is_dir():
            return given  # a transformers checkpoint directory (the back end checks it)
        if given is not None and given.exists():
            check_gguf_file(given, "llm.model_path")  # the precise reason, before the catalogue
        try:
            model_path = catalogue.resolve_model(p["llm.model"], p["llm.model_path"], kind="llm")
        except catalogue.ModelNotFoundError as exc:
            raise ConfigError(str(exc)) from None
        check_gguf_file(model_path, "llm.model_path" if given else f"llm.model={p['llm.model']}")
        return model_path

    @staticmethod
    def _session_store(p: dict):
        """Sessions in the SQLite memory when configured (they survive restarts), else in RAM."""
        if not p["memory.database_path"]:
            return InMemorySessionStore(
                p["session.max_sessions"], p["session.max_turns"], p["session.window_turns"]
            )
        path = p["memory.database_path"]
        if path == "default":
            path = paths.default_memory_database()
        try:
            # Turns are bounded by the request limits already; the store must never refuse one.
            store = MemoryStore(path, max_turn_chars=1_000_000)
        except MemoryStoreError as exc:
            raise ConfigError(str(exc)) from None
        return PersistentSessionStore(store, p["session.window_turns"])

    def _on_model_loaded(self, state: EngineState, detail: str) -> None:
        # Published at once, not at the next tick: clients wait for "ready" on /diagnostics.
        with contextlib.suppress(Exception):
            self._publish_diagnostics()
        if state is EngineState.READY:
            self.get_logger().info(f"ready: {detail}")
            return
        engine = self.engine
        model = engine.backend.model_name if engine is not None else "?"
        if not self._load_failure_exits:
            # Managed from outside: stay up reporting ERROR; cleanup + configure can retry.
            self.get_logger().error(f"the language model {model} failed to load: {detail}")
            return
        # A node that cannot answer must not look alive: ERROR on /diagnostics now (and on
        # every tick until it goes), then a clean exit with one line, as for a ConfigError.
        message = f"configuration error: the language model {model} failed to load: {detail}"
        threading.Thread(
            target=self._exit_after_reporting, args=(message,), name="load-failure", daemon=True
        ).start()

    def _exit_after_reporting(self, message: str) -> None:
        started = time.monotonic()
        while time.monotonic() - started < LOAD_FAILURE_EXIT_MAX_DELAY_S:
            heard = self._diag_pub.get_subscription_count() > 0
            if heard and time.monotonic() - started >= LOAD_FAILURE_EXIT_DELAY_S:
                break
            time.sleep(0.1)
        with contextlib.suppress(Exception):  # the context may be going down already
            self._publish_diagnostics()
        time.sleep(0.3)  # the last ERROR leaves before the node's entities go
        request_exit(CONFIG_ERROR_EXIT, message)

    # ---------------------------------------------------------------- requests
    def _on_chat(self, request: Chat.Request, response: Chat.Response) -> Chat.Response:
        with self._calls_lock:
            self._calls_in_flight += 1
        try:
            return self._answer_chat(request, response)
        finally:
            with self._calls_lock:
                self._calls_in_flight -= 1

    def _answer_chat(self, request: Chat.Request, response: Chat.Response) -> Chat.Response:
        engine = self.engine
        if engine is None or not self.is_active:
            response.success, response.error = False, self._refusal()
            return response
        try:
            job = engine.submit(self._request_from(request, "service"))
        except RequestRejected as exc:
            response.success, response.error = False, str(exc)
            return response
        except Exception as exc:  # a node never dies on a request
            self.get_logger().error(f"chat failed: {exc}")
            response.success, response.error = False, f"internal error: {exc}"
            return response
        # The caller's deadline (timeout_s, else chat.request_timeout_s) ends this wait, and
        # the work with it: an answer nobody waits for must not hold the model.
        result = job.wait(max(0.0, job.deadline - time.monotonic()))
        if result is None:
            job.expire()  # a queued job is dropped when it comes up; a running one stops
            result = job.wait(0)
        if result is None:
            response.success, response.error = False, job.deadline_error()
            return response
        return fill_chat_response(response, result)

    def _refusal(self) -> str:
        return "the node is shutting down" if self._closing else self.inactive_error()

    def _request_from(self, msg, source: str) -> ChatRequest:
        return chat_request_from(msg, source, self._params["chat.request_timeout_s"])

    def _on_cancel(self, goal_handle) -> CancelResponse:
        with self._goals_lock:
            job = self._active_goals.get(bytes(goal_handle.goal_id.uuid))
        if job is not None:
            job.cancel()  # the worker stops before the next token
        return CancelResponse.ACCEPT

    def _execute_converse(self, goal_handle) -> Converse.Result:
        with self._calls_lock:
            self._calls_in_flight += 1
        try:
            return self._run_converse(goal_handle)
        finally:
            with self._calls_lock:
                self._calls_in_flight -= 1

    def _run_converse(self, goal_handle) -> Converse.Result:
        result_msg = Converse.Result()
        feedback_queue: queue.SimpleQueue = queue.SimpleQueue()
        key = bytes(goal_handle.goal_id.uuid)
        engine = self.engine
        if engine is None or not self.is_active:
            goal_handle.abort()
            result_msg.success, result_msg.error = False, self._refusal()
            return result_msg
        try:
            job = engine.submit(
                self._request_from(goal_handle.request, "action"),
                listener=lambda _job, delta, partial, n: feedback_queue.put((delta, partial, n)),
            )
        except RequestRejected as exc:
            goal_handle.abort()
            result_msg.success, result_msg.error = False, str(exc)
            return result_msg
        with self._goals_lock:
            self._active_goals[key] = job
        try:
            while not (job.done and feedback_queue.empty()):
                if goal_handle.is_cancel_requested:
                    job.cancel()
                job.expire_if_due()  # also while queued or waiting for the vision model
                if self._send_feedback(goal_handle, feedback_queue):
                    job.wait(FEEDBACK_BATCH_S)  # returns at once when the answer is done
        finally:
            with self._goals_lock:
                self._active_goals.pop(key, None)
        result = job.result
        fill_chat_response(result_msg, result)
        if result.cancelled and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif result.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result_msg

    def _send_feedback(self, goal_handle, feedback_queue: queue.SimpleQueue) -> bool:
        """Publish everything queued as one feedback message; False when nothing was queued."""
        try:
            delta, partial, tokens = feedback_queue.get(timeout=FEEDBACK_POLL_S)
        except queue.Empty:
            return False
        # Coalesce whatever else is already waiting so feedback never falls behind.
        while True:
            try:
                more, partial, tokens = feedback_queue.get_nowait()
                delta += more
            except queue.Empty:
                break
        if self._closing:
            return True  # the result ("shutting down") matters now; feedback is dropped
        goal_handle.publish_feedback(Converse.Feedback(delta=delta, partial=partial, tokens=tokens))
        return True

    def _on_utterance(self, msg: Utterance) -> None:
        # A speculative utterance (the person paused; the turn may be over) only prepares the
        # answer: the engine evaluates the prompt it would get, so the final answer starts from
        # a warm cache. Nothing is answered, spoken or stored before the final utterance.
        speculative = msg.speculative and not msg.is_final
        engine = self.engine
        if (not msg.is_final and not speculative) or engine is None or not self.is_active:
            return  # inactive: a behaviour tree switched listening off
        request = ChatRequest(
            text=msg.text,
            session_id=msg.session_id,
            persona=msg.persona,
            use_vision="auto",
            max_tokens=self._params["chat.default_max_tokens"],
            source=msg.source or "text",
        )
        if speculative:
            # Returns False (does nothing) when invalid, not ready, or the back end cannot;
            # the final utterance is answered either way.
            engine.prefill(request)
            return
        try:
            engine.submit(request)
        except RequestRejected as exc:
            self._utterances_dropped += 1
            self.get_logger().warning(f"utterance not answered: {exc}")

    # -------------------------------------------------------------- publishing
    def _publish_chunk(self, job: ChatJob, delta: str, _partial: str, tokens: int) -> None:
        self._stream_pub.publish(
            ResponseChunk(
                stamp=self.get_clock().now().to_msg(),
                session_id=job.request.session_id,
                request_id=job.request_id,
                seq=tokens - 1,
                text=delta,
                is_final=False,
                source="llm",
            )
        )

    def _publish_final(self, job: ChatJob) -> None:
        result = job.result
        # An answer stopped part-way (cancel, deadline, shutdown) still ends its stream, so
        # listeners such as tts_node never wait for a final chunk that does not come.
        stopped = result is not None and (result.cancelled or (job.stop_reason and result.tokens))
        if result is None or not (result.success or stopped):
            return
        self._stream_pub.publish(
            ResponseChunk(
                stamp=self.get_clock().now().to_msg(),
                session_id=job.request.session_id,
                request_id=job.request_id,
                seq=result.tokens,
                text="",
                is_final=True,
                source=result.source,
            )
        )
        self._response_pub.publish(
            Turn(
                stamp=self.get_clock().now().to_msg(),
                session_id=result.session_id,
                request_id=result.request_id,
                role=Turn.ROLE_ASSISTANT,
                text=result.reply,
                source=result.source,
                persona=result.persona,
                ttft_s=float(result.ttft_s),
                latency_s=float(result.latency_s),
                tokens=result.tokens,
                scene_used=result.scene_used,
                cancelled=bool(stopped),
            )
        )

    def _publish_diagnostics(self) -> None:
        engine = self.engine
        if engine is None:
            values = {"state": "unconfigured", "detail": self.last_transition_error}
            self._diag_pub.publish(
                diagnostic_array(
                    self, "language model", DiagnosticStatus.WARN, "no model", "", values
                )
            )
            return
        state = engine.state
        level = {
            EngineState.READY: DiagnosticStatus.OK,
            EngineState.LOADING: DiagnosticStatus.WARN,
        }.get(state, DiagnosticStatus.ERROR)
        stats = engine.stats
        # A remote back end's server health (llm.backend openai): WARN while it is unreachable.
        health_of = getattr(engine.backend, "health", None)
        health = health_of() if health_of is not None else {}
        message = state.value
        if health.get("llm_server_ok") == "False" and level == DiagnosticStatus.OK:
            level = DiagnosticStatus.WARN
            message = f"{state.value}, server unreachable: {health['llm_server_last_error']}"
        values = {
            "state": state.value,
            "detail": engine.state_detail,
            "model": engine.backend.model_name,
            "busy": str(engine.busy),
            "pending": str(engine.pending),
            "served": str(stats.served),
            "cancelled": str(stats.cancelled),
            "failed": str(stats.failed),
            "rejected": str(stats.rejected),
            "utterances_dropped": str(self._utterances_dropped),
            "last_ttft_s": f"{stats.last_ttft_s:.3f}",
            "last_tokens_per_s": f"{stats.last_tokens_per_s:.1f}",
            "summaries": stats.summaries,
            "summaries_preempted": stats.summaries_preempted,
            # A new summary reaches the prompts once its prefix was evaluated in idle time;
            # forced: the window would have slid first, so a question paid for part of it.
            "summary_switches": str(stats.summary_switches),
            "summary_switches_forced": str(stats.summary_switches_forced),
            # Prompt caching: tokens the last answer evaluated (the rest came from the KV
            # cache), speculative prefills, prefixes re-evaluated in idle time.
            "last_prompt_tokens": str(stats.last_prompt_tokens),
            "prefills": str(stats.prefills),
            "prefix_warmups": str(stats.warmups),
            "vision_timeouts": str(stats.vision_timeouts),
            **self.vision.diagnostics(),
            **self.dialogue.diagnostics(),
            "rule_answers": str(stats.rules),
            **health,
        }
        self._diag_pub.publish(
            diagnostic_array(
                self, "language model", level, message, engine.backend.model_name, values
            )
        )

    def on_shutdown(self, state):
        # A shutdown transition (`ros2 lifecycle set ... shutdown` or close()) runs cleanup:
        # its callers are told the node is shutting down, not merely cleaned up.
        self._closing = True
        return super().on_shutdown(state)

    def begin_shutdown(self) -> None:
        """Answer everything in progress while the entities still exist (runner.shutdown).

        The current answer stops before its next token and every queued request and streaming
        goal ends with success=false, "the node is shutting down"; new requests get the same.
        """
        if self._closing:
            return
        self._closing = True
        self._stop_engine()

    def drained(self) -> bool:
        """True once every chat call and converse goal has returned its answer."""
        with self._calls_lock:
            return self._calls_in_flight == 0

    def close(self) -> None:
        """Process end: everything in progress is answered (begin_shutdown), then the
        shutdown transition releases the models (ManagedNode.close)."""
        self.begin_shutdown()
        super().close()


def main() -> None:
    run_node(FusionNode)


if __name__ == "__main__":
    main()
