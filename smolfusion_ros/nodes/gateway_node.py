"""gateway_node: the HTTP gateway (FastAPI + uvicorn) and the web console, as a ROS client.

Every endpoint calls the same services and actions a behaviour tree uses: fusion_node's
chat / converse / analyze, memory_node's list_sessions / get_history / clear_session and
knowledge_node's knowledge and persona services. No model runs here.

Threads: uvicorn runs on its own thread with its own asyncio loop; the node's subscriptions
and the ROS futures' callbacks run on the executor. ROS futures are awaited through
loop.call_soon_threadsafe (gateway.bridge), so an HTTP request never holds an executor thread
and a ROS call never blocks the event loop.

Subscribes:  scene (SceneContext), debug_image (Image), /diagnostics (readiness for /health),
             knowledge_progress (KnowledgeProgress: GET /knowledge/progress, the console's
             ingest progress)
Parameters:  host (127.0.0.1), port (8000; 0 = a free port, logged), max_upload_mb,
             api_key (empty = none; when set, every API path needs "Authorization: Bearer
             <key>"; the console page, its static files, /health and /docs stay open),
             request_timeout_s, service_timeout_s, diagnostics_stale_s
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from smolfusion_ros.action import Converse
from smolfusion_ros.gateway.app import ChatBody, GatewayError, PersonaBody, SearchBody, create_app
from smolfusion_ros.gateway.bridge import ServerThread, await_ros_future, bind_socket
from smolfusion_ros.io.image_convert import ImageConversionError
from smolfusion_ros.msg import KnowledgeProgress, PersonaInfo, SceneContext
from smolfusion_ros.nodes.conversions import image_msg_to_rgb
from smolfusion_ros.nodes.parameters import (
    ConfigError,
    ParamSpec,
    at_least,
    between,
    declare_parameters,
)
from smolfusion_ros.nodes.runner import run_node
from smolfusion_ros.srv import (
    Analyze,
    Chat,
    ClearKnowledge,
    ClearSession,
    CreatePersona,
    DeletePersona,
    GetHistory,
    IngestKnowledge,
    ListKnowledge,
    ListPersonas,
    ListSessions,
    SearchKnowledge,
)

# Error texts of the robot's services that mean "not now" rather than "bad request".
_UNAVAILABLE = (
    "loading",
    "busy",
    "shutting down",
    "queue is full",
    "not ready",
    "too many",
    "no camera frame",
    "inactive",  # a managed node not in its active lifecycle state
)
FEEDBACK_QUEUE = 4096  # feedback events buffered per stream (a slow client gets batches)
# Ingest progress kept for GET /knowledge/progress: the newest message per document, for
# documents heard from within PROGRESS_KEEP_S, at most PROGRESS_MAX of them.
PROGRESS_KEEP_S = 600.0
PROGRESS_MAX = 64


def _stamp(t) -> float:
    return float(t.sec) + float(t.nanosec) * 1e-9


def _status_for(error: str) -> int:
    lowered = error.lower()
    if any(word in lowered for word in _UNAVAILABLE):
        return 503
    if "no document" in lowered or "no such" in lowered:
        return 404
    return 400


def _result_dict(result: Any) -> dict[str, Any]:
    out = {
        "success": bool(result.success),
        "error": result.error,
        "reply": result.reply,
        "source": result.source,
        "request_id": result.request_id,
        "scene_used": bool(result.scene_used),
        "ttft_s": round(float(result.ttft_s), 4),
        "latency_s": round(float(result.latency_s), 4),
        "tokens": int(result.tokens),
        "scene_text": result.scene_text,
        "knowledge_ids": list(result.knowledge_ids),
    }
    if hasattr(result, "cancelled"):
        out["cancelled"] = bool(result.cancelled)
    return out


def _persona_dict(p: PersonaInfo) -> dict[str, Any]:
    return {
        "persona_id": p.persona_id,
        "name": p.name,
        "language": p.language,
        "system_prompt": p.system_prompt,
        "source": p.source,
        "traits": {
            "friendliness": p.friendliness,
            "knowledge": p.knowledge,
            "empathy": p.empathy,
            "formality": p.formality,
        },
    }


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of gateway_node, read once at start (the profile test checks the YAML
    files against it)."""
    return [
        ParamSpec("host", "127.0.0.1", "address to listen on (0.0.0.0 = every one)"),
        ParamSpec("port", 8000, "TCP port (0 = pick a free one and log it)", between(0, 65535)),
        ParamSpec("max_upload_mb", 20.0, "largest upload (413 above)", between(0.001, 1024.0)),
        ParamSpec("api_key", "", "bearer token required on API paths (empty = none)"),
        ParamSpec(
            "request_timeout_s",
            120.0,
            "longest wait for an answer when the request sets no timeout_s",
            at_least(0.1),
        ),
        ParamSpec(
            "service_timeout_s",
            15.0,
            "longest wait for memory/knowledge services",
            at_least(0.1),
        ),
        ParamSpec(
            "diagnostics_stale_s",
            5.0,
            "a node whose last /diagnostics is older counts as absent",
            at_least(0.5),
        ),
    ]


class GatewayNode(Node):
    def __init__(self, node_name: str = "gateway_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, parameter_specs())
        self.max_upload_bytes = int(p["max_upload_mb"] * 1e6)
        self.api_key = p["api_key"]
        self._request_timeout = p["request_timeout_s"]
        self._service_timeout = p["service_timeout_s"]
        self._stale_s = p["diagnostics_stale_s"]

        group = ReentrantCallbackGroup()
        self._chat = self.create_client(Chat, "chat", callback_group=group)
        self._analyze = self.create_client(Analyze, "analyze", callback_group=group)
        self._converse = ActionClient(self, Converse, "converse", callback_group=group)
        mem, kn = "memory_node", "knowledge_node"
        self._list_sessions = self.create_client(ListSessions, f"{mem}/list_sessions")
        self._history = self.create_client(GetHistory, f"{mem}/get_history")
        self._clear_session = self.create_client(ClearSession, f"{mem}/clear_session")
        self._ingest = self.create_client(IngestKnowledge, f"{kn}/ingest")
        self._list_docs = self.create_client(ListKnowledge, f"{kn}/list")
        self._search = self.create_client(SearchKnowledge, f"{kn}/search")
        self._clear_docs = self.create_client(ClearKnowledge, f"{kn}/clear")
        self._list_personas = self.create_client(ListPersonas, f"{kn}/list_personas")
        self._create_persona = self.create_client(CreatePersona, f"{kn}/create_persona")
        self._delete_persona = self.create_client(DeletePersona, f"{kn}/delete_persona")

        self._lock = threading.Lock()
        self._scene: SceneContext | None = None
        self._scene_received = 0.0
        self._debug_image: Image | None = None
        self._jpeg: tuple[int, bytes] | None = None  # (id of the message, its JPEG)
        self._diagnostics: dict[str, tuple[float, Any]] = {}
        self._progress: dict[tuple[str, str], tuple[float, KnowledgeProgress]] = {}
        self.create_subscription(SceneContext, "scene", self._on_scene, 5)
        self.create_subscription(
            Image, "debug_image", self._on_debug_image, qos_profile_sensor_data
        )
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.create_subscription(
            KnowledgeProgress, "knowledge_progress", self._on_knowledge_progress, 50
        )

        host, port = p["host"], p["port"]
        try:
            sock = bind_socket(host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = sock.getsockname()[1]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/"
        self._server = ServerThread(create_app(self), sock)
        self._server.start()
        self.get_logger().info(
            f"gateway listening on {self.url} (web console: {self.url}, API docs: {self.url}docs)"
            + (", bearer token required" if self.api_key else "")
        )

    # ------------------------------------------------------------ subscriptions
    def _on_scene(self, msg: SceneContext) -> None:
        with self._lock:
            self._scene = msg
            self._scene_received = time.time()

    def _on_debug_image(self, msg: Image) -> None:
        with self._lock:
            self._debug_image = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        prefix = self.get_namespace().rstrip("/") + "/"
        with self._lock:
            for status in msg.status:
                node = status.name.split(":", 1)[0]
                # Only this robot's nodes (same namespace, not a sub-namespace).
                if node.startswith(prefix) and "/" not in node[len(prefix) :]:
                    self._diagnostics[status.name] = (now, status)

    def _on_knowledge_progress(self, msg: KnowledgeProgress) -> None:
        now = time.monotonic()
        with self._lock:
            self._progress[(msg.persona, msg.name)] = (now, msg)
            if len(self._progress) > PROGRESS_MAX:  # bounded: drop the oldest
                oldest = min(self._progress, key=lambda k: self._progress[k][0])
                del self._progress[oldest]

    def _fresh_statuses(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {n: s for n, (t, s) in self._diagnostics.items() if now - t <= self._stale_s}

    def _fusion_status(self):
        name = f"{self.get_namespace().rstrip('/')}/fusion_node: language model"
        return self._fresh_statuses().get(name)

    # ------------------------------------------------------------ helpers
    def _check_fusion(self, client) -> None:
        if not client.service_is_ready():
            raise GatewayError(503, "fusion_node is not running (no chat service)", 5)
        status = self._fusion_status()
        if status is not None:
            values = {kv.key: kv.value for kv in status.values}
            state, lifecycle = values.get("state", ""), values.get("lifecycle", "active")
            if lifecycle != "active":
                message = f"fusion_node is inactive (lifecycle state: {lifecycle})"
                raise GatewayError(503, message, 5)
            if state == "loading":
                raise GatewayError(503, "fusion_node is loading its model; retry shortly", 5)
            if state in ("failed", "stopped"):
                raise GatewayError(503, f"fusion_node is {state}: {status.message}", 30)

    async def _call(self, client, request, what: str, timeout: float | None = None):
        if not client.service_is_ready():
            raise GatewayError(503, f"{what} is not available (is its node running?)", 5)
        try:
            return await await_ros_future(
                client.call_async(request), timeout or self._service_timeout
            )
        except asyncio.TimeoutError:
            raise GatewayError(504, f"{what} did not answer in time") from None

    @staticmethod
    def _ok(response, what: str):
        if not response.success:
            raise GatewayError(_status_for(response.error), f"{what}: {response.error}")
        return response

    # ------------------------------------------------------------ chat
    def _answer_timeout(self, body: ChatBody) -> float:
        return (body.timeout_s or self._request_timeout) + 5.0

    async def chat(self, body: ChatBody) -> dict[str, Any]:
        self._check_fusion(self._chat)
        request = Chat.Request(
            session_id=body.session_id,
            text=body.text,
            persona=body.persona,
            use_vision=body.use_vision,
            max_tokens=body.max_tokens,
            timeout_s=float(body.timeout_s),
        )
        response = await self._call(self._chat, request, "chat", self._answer_timeout(body))
        return _result_dict(self._ok(response, "chat"))

    async def converse(self, body: ChatBody):
        """(event, data) pairs: start, token batches, then final or error. Closing the
        generator before the result (client gone) cancels the goal."""
        self._check_fusion(self._chat)
        if not self._converse.server_is_ready():
            raise GatewayError(503, "fusion_node's converse action is not available", 5)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            # Bounded for tokens (a stalled client: later feedback still carries `partial`);
            # the result always gets in.
            if item[0] != "token" or queue.qsize() < FEEDBACK_QUEUE:
                queue.put_nowait(item)

        def on_feedback(msg) -> None:
            fb = msg.feedback
            loop.call_soon_threadsafe(put, ("token", (fb.delta, fb.partial, fb.tokens)))

        goal = Converse.Goal(
            session_id=body.session_id,
            text=body.text,
            persona=body.persona,
            use_vision=body.use_vision,
            max_tokens=body.max_tokens,
            timeout_s=float(body.timeout_s),
        )
        started = time.monotonic()
        try:
            handle = await await_ros_future(
                self._converse.send_goal_async(goal, feedback_callback=on_feedback),
                self._service_timeout,
            )
        except asyncio.TimeoutError:
            raise GatewayError(504, "converse goal was not accepted in time") from None
        if not handle.accepted:
            raise GatewayError(503, "converse goal rejected")
        finished = False
        try:
            yield "start", {"accepted_s": round(time.monotonic() - started, 4)}
            result_future = handle.get_result_async()
            result_future.add_done_callback(lambda f: loop.call_soon_threadsafe(put, ("done", f)))
            first_token_s = None
            while True:
                kind, payload = await queue.get()
                if kind == "done":
                    finished = True
                    result = _result_dict(payload.result().result)
                    result["gateway_ttft_s"] = first_token_s
                    yield ("final" if result["success"] else "error"), result
                    return
                # Everything already queued goes out as one batch (one SSE event).
                delta, partial, tokens = payload
                while not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt[0] != "token":
                        queue.put_nowait(nxt)  # keep "done" for the next turn of the loop
                        break
                    delta += nxt[1][0]
                    partial, tokens = nxt[1][1], nxt[1][2]
                if first_token_s is None:
                    first_token_s = round(time.monotonic() - started, 4)
                yield "token", {"delta": delta, "partial": partial, "tokens": tokens}
        finally:
            if not finished:
                handle.cancel_goal_async()  # the client went away: free the model
                self.get_logger().info("stream closed by the client: converse goal cancelled")

    async def analyze(self, image: bytes | None, content_type: str, prompt: str) -> dict[str, Any]:
        if not self._analyze.service_is_ready():
            raise GatewayError(
                503, "no analyze service: fusion_node is absent or has no vision back end", 5
            )
        request = Analyze.Request(prompt=prompt)
        if image is not None:
            request.image = await asyncio.to_thread(self._decode_image, image)
        response = await self._call(self._analyze, request, "analyze", self._request_timeout + 5)
        self._ok(response, "analyze")
        return {
            "success": True,
            "answer": response.answer,
            "model": response.model,
            "latency_s": round(float(response.latency_s), 4),
            "image": "uploaded" if image is not None else "newest camera frame",
        }

    @staticmethod
    def _decode_image(data: bytes) -> Image:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise GatewayError(415, "the upload is not an image OpenCV can read (JPEG, PNG ...)")
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        height, width = rgb.shape[:2]
        return Image(
            height=height, width=width, encoding="rgb8", step=width * 3, data=rgb.tobytes()
        )

    # ------------------------------------------------------------ scene
    def scene(self) -> dict[str, Any]:
        with self._lock:
            msg, received = self._scene, self._scene_received
        if msg is None:
            return {"available": False, "description": "", "age_s": None}
        return {
            "available": True,
            "description": msg.description,
            "model": msg.model,
            "kind": msg.kind,
            "frame_stamp": _stamp(msg.frame_stamp),
            "age_s": round(time.time() - received, 3),
            "latency_s": round(float(msg.latency_s), 4),
            "has_person": bool(msg.has_person),
            "person_count": int(msg.person_count),
            "smiling": bool(msg.smiling),
        }

    async def scene_image(self) -> bytes | None:
        with self._lock:
            msg, cached = self._debug_image, self._jpeg
        if msg is None:
            return None
        if cached is not None and cached[0] == id(msg):
            return cached[1]
        jpeg = await asyncio.to_thread(self._encode_jpeg, msg)
        with self._lock:
            self._jpeg = (id(msg), jpeg)
        return jpeg

    @staticmethod
    def _encode_jpeg(msg: Image) -> bytes:
        try:
            rgb = image_msg_to_rgb(msg)
        except ImageConversionError as exc:
            raise GatewayError(500, f"debug image: {exc}") from None
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise GatewayError(500, "debug image could not be encoded")
        return buffer.tobytes()

    async def health(self) -> dict[str, Any]:
        nodes = {}
        for name, status in self._fresh_statuses().items():
            node = name.split(":", 1)[0].rsplit("/", 1)[-1]
            nodes.setdefault(node, []).append(
                {
                    "component": name.split(": ", 1)[-1],
                    "level": int.from_bytes(status.level, "little")
                    if isinstance(status.level, bytes)
                    else int(status.level),
                    "message": status.message,
                    "values": {kv.key: kv.value for kv in status.values},
                }
            )
        fusion = self._fusion_status()
        fusion_values = {kv.key: kv.value for kv in fusion.values} if fusion else {}
        services = {
            "chat": self._chat.service_is_ready(),
            "converse": self._converse.server_is_ready(),
            "analyze": self._analyze.service_is_ready(),
            "memory": self._history.service_is_ready(),
            "knowledge": self._search.service_is_ready(),
        }
        state = fusion_values.get("state", "absent" if not services["chat"] else "unknown")
        lifecycle = fusion_values.get("lifecycle", "active")  # unmanaged: always active
        return {
            "ready": services["chat"] and state == "ready" and lifecycle == "active",
            "fusion_state": state,
            "fusion_lifecycle": lifecycle,
            "llm_model": fusion_values.get("model", ""),
            "vision_model": fusion_values.get("vision_model", fusion_values.get("vision", "")),
            "queue_depth": int(fusion_values.get("pending", "0") or 0),
            "busy": fusion_values.get("busy", "") == "True",
            "services": services,
            "scene_available": self._scene is not None,
            "nodes": nodes,
        }

    # ------------------------------------------------------------ sessions
    async def sessions(self, limit: int, offset: int) -> dict[str, Any]:
        response = self._ok(
            await self._call(
                self._list_sessions, ListSessions.Request(limit=limit, offset=offset), "memory"
            ),
            "list_sessions",
        )
        return {
            "sessions": [
                {
                    "session_id": s.session_id,
                    "persona": s.persona,
                    "created": _stamp(s.created),
                    "last_active": _stamp(s.last_active),
                    "turn_count": int(s.turn_count),
                }
                for s in response.sessions
            ]
        }

    async def session(self, session_id: str, max_turns: int) -> dict[str, Any]:
        request = GetHistory.Request(session_id=session_id, max_turns=max_turns)
        response = self._ok(await self._call(self._history, request, "memory"), "get_history")
        if not response.turns and not response.summary:
            raise GatewayError(404, f"no session {session_id!r}")
        return {
            "session_id": session_id,
            "summary": response.summary,
            "turns": [
                {
                    "turn_id": int(t.turn_id),
                    "stamp": _stamp(t.stamp),
                    "role": t.role,
                    "text": t.text,
                    "source": t.source,
                    "persona": t.persona,
                    "request_id": t.request_id,
                    "latency_s": round(float(t.latency_s), 4),
                }
                for t in response.turns
            ],
        }

    async def delete_session(self, session_id: str) -> dict[str, Any]:
        request = ClearSession.Request(session_id=session_id)
        response = self._ok(await self._call(self._clear_session, request, "memory"), "clear")
        if response.turns_deleted == 0:
            raise GatewayError(404, f"no session {session_id!r}")
        return {"session_id": session_id, "turns_deleted": int(response.turns_deleted)}

    # ------------------------------------------------------------ personas
    async def personas(self) -> dict[str, Any]:
        response = self._ok(
            await self._call(self._list_personas, ListPersonas.Request(), "knowledge_node"),
            "list_personas",
        )
        return {
            "default_id": response.default_id,
            "personas": [_persona_dict(p) for p in response.personas],
        }

    async def create_persona(self, body: PersonaBody) -> dict[str, Any]:
        info = PersonaInfo(
            persona_id=body.persona_id,
            name=body.name,
            language=body.language,
            system_prompt=body.system_prompt,
            friendliness=body.friendliness,
            knowledge=body.knowledge,
            empathy=body.empathy,
            formality=body.formality,
        )
        request = CreatePersona.Request(persona=info, replace=body.replace)
        response = await self._call(self._create_persona, request, "knowledge_node")
        if not response.success and "already exists" in response.error:
            raise GatewayError(409, response.error)
        return _persona_dict(self._ok(response, "create_persona").persona)

    async def delete_persona(self, persona_id: str) -> dict[str, Any]:
        request = DeletePersona.Request(persona_id=persona_id)
        response = self._ok(
            await self._call(self._delete_persona, request, "knowledge_node"), "delete_persona"
        )
        if not response.deleted:
            raise GatewayError(404, f"no operator persona {persona_id!r}")
        return {"persona_id": persona_id, "deleted": True}

    # ------------------------------------------------------------ knowledge
    async def ingest(self, persona: str, name: str, data: bytes) -> dict[str, Any]:
        request = IngestKnowledge.Request(persona=persona, name=name, data=data)
        # Embedding a large document takes a while: no short service timeout here.
        response = self._ok(
            await self._call(self._ingest, request, "knowledge_node", self._request_timeout * 5),
            "ingest",
        )
        return {
            "name": name,
            "chunks": int(response.chunks),
            "words": int(response.words),
            "pages": int(response.pages),
            "replaced": bool(response.replaced),
            "unchanged": bool(response.unchanged),
            "seconds": round(float(response.seconds), 3),
        }

    async def documents(self, persona: str) -> dict[str, Any]:
        request = ListKnowledge.Request(persona=persona)
        r = self._ok(await self._call(self._list_docs, request, "knowledge_node"), "list")
        return {
            "documents": [
                {
                    "name": r.names[i],
                    "kind": r.kinds[i],
                    "bytes": int(r.bytes[i]),
                    "pages": int(r.pages[i]),
                    "words": int(r.words[i]),
                    "chunks": int(r.chunks[i]),
                    "added": float(r.added[i]),
                }
                for i in range(len(r.names))
            ]
        }

    async def search(self, body: SearchBody) -> dict[str, Any]:
        request = SearchKnowledge.Request(
            persona=body.persona, query=body.query, top_k=body.top_k, mode=body.mode
        )
        r = self._ok(await self._call(self._search, request, "knowledge_node"), "search")
        return {
            "latency_s": round(float(r.latency_s), 4),
            "hits": [
                {
                    "id": r.ids[i],
                    "document": r.documents[i],
                    "seq": int(r.seqs[i]),
                    "text": r.texts[i],
                    "score": float(r.scores[i]),
                    "similarity": None if r.similarities[i] < -0.5 else float(r.similarities[i]),
                }
                for i in range(len(r.ids))
            ],
        }

    def ingest_progress(self, persona: str, name: str) -> dict[str, Any]:
        """The newest progress of each recent ingest (knowledge_progress), newest first;
        `persona` and `name` filter when given. `age_s` lets a caller ignore an older ingest
        of the same document."""
        now = time.monotonic()
        with self._lock:
            entries = sorted(self._progress.values(), key=lambda e: -e[0])
        return {
            "ingests": [
                {
                    "persona": msg.persona,
                    "name": msg.name,
                    "done": int(msg.done),
                    "total": int(msg.total),
                    "finished": msg.done >= msg.total,
                    "age_s": round(now - received, 3),
                }
                for received, msg in entries
                if now - received <= PROGRESS_KEEP_S
                and (not persona or msg.persona == persona)
                and (not name or msg.name == name)
            ]
        }

    async def clear_knowledge(self, persona: str, name: str) -> dict[str, Any]:
        request = ClearKnowledge.Request(persona=persona, name=name)
        r = self._ok(await self._call(self._clear_docs, request, "knowledge_node"), "clear")
        return {"documents_deleted": int(r.documents_deleted)}

    def close(self) -> None:
        self._server.stop()


def main() -> None:
    run_node(GatewayNode)


if __name__ == "__main__":
    main()
