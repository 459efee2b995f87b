"""gateway_node over real HTTP against a running graph (every node its own process).

fusion_node (SmolLM2-135M, perception vision), memory_node, knowledge_node (MiniLM) and
gateway_node (port 0) in one namespace, a camera fed real photos; the test is a plain HTTP
client, as a browser or a script on the robot's network would be.
"""

from __future__ import annotations

import time

import cv2
import pytest
from conftest import NodeProcess, unique_namespace, wait_for
from gateway_http import GATEWAY, Http, gateway_port
from images import photo

pytestmark = [pytest.mark.ros, pytest.mark.model]

FUSION = "smolfusion_ros.nodes.fusion_node"
MEMORY = "smolfusion_ros.nodes.memory_node"
KNOWLEDGE = "smolfusion_ros.nodes.knowledge_node"
CAMERA = "smolfusion_ros.nodes.camera_node"
UPLOAD_MB = 1.0


def _png(rgb) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def graph(module_ros_node, tmp_path_factory):
    from test_fusion_vision import FramePublisher

    work = tmp_path_factory.mktemp("gateway")
    namespace = unique_namespace("gateway")
    memory_db = work / "memory.db"
    processes = [
        NodeProcess(CAMERA, namespace, params={"rate_hz": 5.0}),
        NodeProcess(
            FUSION,
            namespace,
            params={
                "llm.temperature": 0.0,
                "memory.database_path": str(memory_db),
                "vision.interval_s": 0.5,
            },
        ),
        NodeProcess(MEMORY, namespace, params={"database_path": str(memory_db)}),
        NodeProcess(
            KNOWLEDGE,
            namespace,
            params={
                "database_path": str(work / "knowledge.db"),
                "persona.database_path": str(work / "personas.db"),
            },
        ),
    ]
    gateway = NodeProcess(GATEWAY, namespace, params={"port": 0, "max_upload_mb": UPLOAD_MB})
    processes.append(gateway)
    camera = FramePublisher(module_ros_node, f"{namespace}/image_raw", photo("astronaut.png"))
    try:
        http = Http(gateway_port(gateway))
        ready = wait_for(lambda: http.get("/health").status == 200, 120, 0.5)
        assert ready, gateway.log[-2000:] + processes[1].log[-2000:]
        yield {"http": http, "gateway": gateway, "ns": namespace, "work": work, "procs": processes}
    finally:
        camera.stop()
        for process in processes:
            process.stop()


def test_health_names_nodes_models_and_queue(graph):
    http = graph["http"]

    def complete() -> bool:  # each node's first /diagnostics may come a moment after ready
        health = http.get("/health").json()
        nodes = {"fusion_node", "memory_node", "knowledge_node"}
        return nodes <= set(health["nodes"]) and all(health["services"].values())

    assert wait_for(complete, 30, 0.5), http.get("/health").json()
    health = http.get("/health").json()
    assert health["ready"] and health["fusion_state"] == "ready"
    assert "SmolLM2" in health["llm_model"]
    assert health["queue_depth"] == 0
    assert {"fusion_node", "memory_node", "knowledge_node"} <= set(health["nodes"])
    assert all(health["services"].values()), health["services"]


def test_chat_history_and_delete(graph):
    http = graph["http"]
    reply = http.post(
        "/chat", {"session_id": "http-chat", "text": "Hello! My name is Ada.", "max_tokens": 24}
    )
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["success"] and answer["source"] == "llm" and answer["reply"].strip()
    assert 0 < answer["ttft_s"] <= answer["latency_s"] and answer["tokens"] > 0
    sessions = http.get("/sessions").json()["sessions"]
    assert "http-chat" in [s["session_id"] for s in sessions]
    history = http.get("/sessions/http-chat").json()
    assert [t["role"] for t in history["turns"]] == ["user", "assistant"]
    assert history["turns"][0]["text"] == "Hello! My name is Ada."
    assert history["turns"][1]["text"] == answer["reply"]
    deleted = http.delete("/sessions/http-chat")
    assert deleted.status == 200 and deleted.json()["turns_deleted"] == 2
    assert http.get("/sessions/http-chat").status == 404
    assert http.delete("/sessions/http-chat").status == 404


def test_stream_sends_token_batches_then_the_final_with_timings(graph):
    events = list(
        graph["http"].stream(
            {"session_id": "http-stream", "text": "Tell me a story.", "max_tokens": 40}
        )
    )
    kinds = [e[0] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "final", events[-1]
    tokens = [e for e in events if e[0] == "token"]
    assert len(tokens) >= 2
    final = events[-1][1]
    # The batches add up to the reply, and arrived before the final.
    assert "".join(t[1]["delta"] for t in tokens).strip() == final["reply"].strip()
    assert tokens[0][2] < events[-1][2]
    assert final["ttft_s"] > 0 and final["latency_s"] >= final["ttft_s"] and not final["cancelled"]
    assert final["gateway_ttft_s"] is not None


def test_client_disconnect_cancels_the_generation(graph):
    http = graph["http"]
    stream = http.stream(
        {
            "session_id": "http-cancel",
            "text": "Write a very long story about a dragon.",
            "max_tokens": 600,
        }
    )
    seen = 0
    for event, _data, _t in stream:
        if event == "token":
            seen += 1
            if seen == 3:
                break
    stream.close()  # the client goes away mid-answer
    assert wait_for(lambda: "converse goal cancelled" in graph["gateway"].log, 10), graph[
        "gateway"
    ].log[-2000:]
    # The model is free again quickly: a short question is answered at once, and the cancelled
    # answer is stored as cancelled, far short of 600 tokens.
    started = time.monotonic()
    reply = http.post("/chat", {"session_id": "http-cancel-2", "text": "Hi", "max_tokens": 4})
    assert reply.status == 200 and reply.json()["success"], reply.body
    assert time.monotonic() - started < 60
    health = http.get("/health").json()
    assert health["queue_depth"] == 0


def test_analyze_an_uploaded_photo_and_the_newest_frame(graph):
    http = graph["http"]
    uploaded = http.upload(
        "/analyze",
        {"prompt": "Who is in the picture?"},
        {"image": ("astronaut.png", _png(photo("astronaut.png")), "image/png")},
    )
    assert uploaded.status == 200, uploaded.body
    body = uploaded.json()
    assert body["image"] == "uploaded" and "person" in body["answer"].lower(), body
    empty_room = http.upload(
        "/analyze",
        {"prompt": "Anyone here?"},
        {"image": ("coffee.png", _png(photo("coffee.png")), "image/png")},
    )
    assert "no person" in empty_room.json()["answer"].lower(), empty_room.body
    # No image: the camera's newest frame (the astronaut, fed to camera_node).
    assert wait_for(lambda: http.get("/scene").json()["available"], 60)
    newest = http.upload("/analyze", {"prompt": "Who is there?"}, {})
    assert newest.status == 200, newest.body
    assert newest.json()["image"] == "newest camera frame"
    assert "person" in newest.json()["answer"].lower()
    scene = http.get("/scene").json()
    assert scene["has_person"] and scene["description"]
    assert wait_for(lambda: http.get("/scene/image").status == 200, 30)
    jpeg = http.get("/scene/image")
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.body[:2] == b"\xff\xd8"


def test_every_bad_request_class_gets_json_with_a_message(graph):
    http = graph["http"]

    def check(reply, status):
        assert reply.status == status, (reply.status, reply.body)
        assert reply.json()["error"], reply.body

    # 400: the robot refuses the request (its own validation: session id characters)
    check(http.post("/chat", {"session_id": "no spaces!", "text": "Hi", "max_tokens": 4}), 400)
    # 404: unknown path, unknown session, unknown operator persona
    check(http.get("/nothing-here"), 404)
    check(http.get("/sessions/never-used"), 404)
    check(http.delete("/personas/never-made"), 404)
    # 405: wrong method
    check(http.request("PUT", "/chat", {"text": "Hi"}), 405)
    check(http.get("/chat"), 405)
    # 413: upload over max_upload_mb (refused before the robot sees it)
    big = b"\x89PNG" + b"\0" * int(UPLOAD_MB * 1.5e6)
    check(http.upload("/analyze", {}, {"image": ("big.png", big, "image/png")}), 413)
    check(
        http.upload("/knowledge", {}, {"file": ("big.txt", b"word " * 400_000, "text/plain")}), 413
    )
    # 415: not an image / not a document type
    check(http.upload("/analyze", {}, {"image": ("a.txt", b"hello", "text/plain")}), 415)
    check(http.upload("/analyze", {}, {"image": ("a.png", b"not a png", "image/png")}), 415)
    check(
        http.upload("/knowledge", {}, {"file": ("a.exe", b"MZ", "application/octet-stream")}), 415
    )
    # 422: malformed JSON, missing or invalid fields
    check(http.request("POST", "/chat", raw=b"{not json", content_type="application/json"), 422)
    check(http.post("/chat", {"session_id": "x"}), 422)
    check(http.post("/chat", {"text": "Hi", "max_tokens": 0}), 422)
    check(http.post("/chat", {"text": "Hi", "use_vision": "sometimes"}), 422)
    # the gateway itself is still fine
    assert http.get("/health").status == 200


def test_fusion_node_absent_is_503_and_the_api_key_is_enforced(tmp_path):
    """A gateway in a namespace with no fusion_node (and an API key)."""
    namespace = unique_namespace("gateway_alone")
    gateway = NodeProcess(GATEWAY, namespace, params={"port": 0, "api_key": "s3cret"})
    try:
        port = gateway_port(gateway)
        anonymous, client = Http(port), Http(port, token="s3cret")
        assert anonymous.get("/").status == 200  # the console page is open
        assert anonymous.post("/chat", {"text": "Hi"}).status == 401
        assert Http(port, token="wrong").get("/sessions").status == 401
        reply = client.post("/chat", {"text": "Hi", "max_tokens": 4})
        assert reply.status == 503 and "fusion_node" in reply.json()["error"]
        assert "retry-after" in reply.headers
        assert client.get("/health").status == 503
        assert client.get("/health").json()["fusion_state"] == "absent"
        events = list(client.stream({"text": "Hi"}))
        assert events[0][0] == "http_error" and events[0][1]["status"] == 503
        assert client.get("/sessions").status == 503  # memory_node absent too
        assert gateway.alive()
    finally:
        gateway.stop()


def test_openapi_docs_list_the_endpoints(graph):
    http = graph["http"]
    assert http.get("/docs").status == 200
    paths = http.get("/openapi.json").json()["paths"]
    for path in (
        "/chat",
        "/chat/stream",
        "/analyze",
        "/scene",
        "/health",
        "/sessions",
        "/sessions/{session_id}",
        "/personas",
        "/knowledge",
        "/knowledge/search",
        "/knowledge/progress",
    ):
        assert path in paths, path


def test_an_inactive_fusion_node_is_503_and_not_ready(graph, module_ros_node):
    """fusion_node deactivated by a lifecycle manager: /health says not ready and why, /chat
    is 503 with Retry-After (not a 400: nothing is wrong with the request); active again,
    both recover."""
    from conftest import LifecycleClient

    http = graph["http"]
    fusion = LifecycleClient(module_ros_node, f"{graph['ns']}/fusion_node")
    fusion.wait()
    assert fusion.transition("deactivate")
    try:

        def inactive() -> bool:
            health = http.get("/health")
            return health.status == 503 and health.json()["fusion_lifecycle"] == "inactive"

        assert wait_for(inactive, 30, 0.2), http.get("/health").body
        reply = http.post("/chat", {"text": "Hello?", "session_id": "inactive"})
        assert reply.status == 503, reply.body
        assert "inactive" in reply.json()["error"] and "retry-after" in reply.headers
    finally:
        assert fusion.transition("activate")
    assert wait_for(lambda: http.get("/health").status == 200, 60, 0.2)
    reply = http.post("/chat", {"text": "What's your name?", "session_id": "inactive"})
    assert reply.status == 200 and reply.json()["source"] == "rule", reply.body


def test_gateway_connections_have_nagle_off():
    """asyncio turns Nagle off on accepted connections only when the listening socket says
    TCP: without it every kept-alive request waited 40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from smolfusion_ros.gateway.bridge import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    port = sock.getsockname()[1]

    async def accepted_nodelay() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                raw = transport.get_extra_info("socket")
                seen.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            value = await asyncio.wait_for(seen, 30)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_bridged_ros_futures_call_back_where_the_result_is_set(rclpy_context):
    """The bridge's done callback runs in the thread that completes the rclpy Future, not as
    one more executor task (a wake-up and a thread hand-over per call)."""
    import threading as _threading

    from rclpy.executors import SingleThreadedExecutor
    from rclpy.task import Future

    from smolfusion_ros.gateway.bridge import run_done_callbacks_inline

    executor = SingleThreadedExecutor()  # never spun: a scheduled callback would never run
    try:
        future = Future()
        run_done_callbacks_inline(future)
        future._set_executor(executor)  # what an executor does before set_result
        called = []
        future.add_done_callback(lambda f: called.append((_threading.get_ident(), f.result())))
        future.set_result(42)
        assert called == [(_threading.get_ident(), 42)]
    finally:
        executor.shutdown()
