"""The dialogue layer end to end over HTTP: rules, knowledge retrieval, personas, honesty.

fusion_node (SmolLM2-135M), memory_node, knowledge_node (MiniLM) and gateway_node as
processes. The robot here has NO vision back end, as the new user's robot without a camera
had: a question about sight must be grounded in "no camera image is available".
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import NodeProcess, unique_namespace, wait_for
from gateway_http import GATEWAY, Http, gateway_port

pytestmark = [pytest.mark.ros, pytest.mark.model]

REPO = Path(__file__).resolve().parent.parent

DOCUMENT = """# Visitor guide of the Harbour Museum

The museum opens at nine in the morning and closes at six in the evening.

The wifi network of the museum is called HarbourGuest and its password is BLUE-ORCA-42.

Lost children are brought to the information desk next to the whale skeleton.
"""


class Graph:
    def __init__(self, work) -> None:
        self.work = work
        self.namespace = unique_namespace("dialogue")
        memory_db = work / "memory.db"
        self.shared = {"persona.database_path": str(work / "personas.db")}
        self.fusion = NodeProcess(
            "smolfusion_ros.nodes.fusion_node",
            self.namespace,
            params={
                "memory.database_path": str(memory_db),
                "llm.temperature": 0.0,
                "vision.backend": "''",  # no vision back end (YAML empty string)
                **self.shared,
            },
        )
        self.memory = NodeProcess(
            "smolfusion_ros.nodes.memory_node",
            self.namespace,
            params={"database_path": str(memory_db)},
        )
        self.knowledge = self.gateway = None
        try:
            self.start_knowledge_and_gateway()
        except BaseException:
            self.stop()  # no process outlives a failed start
            raise

    def start_knowledge_and_gateway(self) -> None:
        self.knowledge = NodeProcess(
            "smolfusion_ros.nodes.knowledge_node",
            self.namespace,
            params={"database_path": str(self.work / "knowledge.db"), **self.shared},
        )
        self.gateway = NodeProcess(GATEWAY, self.namespace, params={"port": 0})
        self.http = Http(gateway_port(self.gateway))
        ready = wait_for(
            lambda: (h := self.http.get("/health").json())["ready"] and h["services"]["knowledge"],
            120,
            0.5,
        )
        assert ready, self.gateway.log[-2000:] + self.fusion.log[-2000:]

    def stop(self) -> None:
        for process in (self.gateway, self.knowledge, self.memory, self.fusion):
            if process is not None:
                process.stop()


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    graph = Graph(tmp_path_factory.mktemp("dialogue"))
    yield graph
    graph.stop()


def _chat(http, text, session="dlg", **extra):
    reply = http.post("/chat", {"session_id": session, "text": text, "max_tokens": 48, **extra})
    assert reply.status == 200, reply.body
    return reply.json()


def test_rules_answer_their_intents_instantly_and_nothing_else(graph):
    http = graph.http
    started = time.monotonic()
    answer = _chat(http, "Hey Smol, what's your name, please?", session="rules")
    client_s = time.monotonic() - started
    assert answer["source"] == "rule" and "Smol" in answer["reply"]
    assert answer["latency_s"] < 0.2 and client_s < 2.0
    assert answer["knowledge_ids"] == [] and answer["tokens"] == 1
    # Sentences that contain the keywords in another sense go to the model.
    for text in ("My name is Ana.", "What is the name of the longest river?"):
        assert _chat(http, text, session="rules")["source"] == "llm", text
    # The rule turn is stored in memory like any other.
    turns = http.get("/sessions/rules").json()["turns"]
    assert [(t["role"], t["source"]) for t in turns[:2]] == [
        ("user", "service"),
        ("assistant", "rule"),
    ]
    # Also streamed: one token event with the whole answer, then the final.
    events = list(http.stream({"session_id": "rules", "text": "How do I stop you?"}))
    assert [e[0] for e in events] == ["start", "token", "final"], events
    assert events[-1][1]["source"] == "rule"


def test_knowledge_is_retrieved_and_named_in_the_answer(graph):
    http = graph.http
    ingest = http.upload(
        "/knowledge", {}, {"file": ("museum-guide.md", DOCUMENT.encode(), "text/markdown")}
    )
    assert ingest.status == 200, ingest.body
    assert ingest.json()["chunks"] >= 1
    assert [d["name"] for d in http.get("/knowledge").json()["documents"]] == ["museum-guide.md"]
    hits = http.post("/knowledge/search", {"query": "What is the wifi password?"}).json()["hits"]
    assert hits and hits[0]["document"] == "museum-guide.md" and "BLUE-ORCA-42" in hits[0]["text"]
    assert http.post("/knowledge/search", {"query": "How do volcanoes erupt?"}).json()["hits"] == []

    answer = _chat(http, "What is the password of the museum wifi?", session="rag")
    assert answer["source"] == "llm"
    assert answer["knowledge_ids"] == ["museum-guide.md#0"], answer
    assert "BLUE-ORCA-42" in answer["reply"].upper().replace(" ", ""), answer["reply"]
    unrelated = _chat(http, "Can you tell me a joke about cats?", session="rag")
    assert unrelated["knowledge_ids"] == []
    # Another persona has its own (empty) knowledge base.
    other = _chat(http, "What is the password of the museum wifi?", session="rag2", persona="guide")
    assert other["knowledge_ids"] == []
    assert http.delete("/knowledge/museum-guide.md").json()["documents_deleted"] == 1
    assert http.get("/knowledge").json()["documents"] == []


def test_ingest_progress_is_visible_over_http_while_the_upload_runs(graph):
    """A document of several thousand words (the package's README): while POST /knowledge
    is still waiting, GET /knowledge/progress shows chunks being embedded."""
    http = graph.http
    readme = (REPO / "README.md").read_bytes()
    result: dict = {}

    def upload() -> None:
        reply = http.upload(
            "/knowledge", {}, {"file": ("big-readme.md", readme, "text/markdown")}, timeout=600
        )
        result["reply"] = reply

    thread = threading.Thread(target=upload)
    thread.start()
    during: list[dict] = []
    try:
        while thread.is_alive():
            progress = http.get("/knowledge/progress?name=big-readme.md").json()["ingests"]
            if thread.is_alive() and progress and not progress[0]["finished"]:
                during.append(progress[0])
            time.sleep(0.05)
    finally:
        thread.join(600)
    reply = result["reply"]
    assert reply.status == 200, reply.body
    chunks = reply.json()["chunks"]
    assert chunks >= 16, chunks
    assert during, "no progress was visible while the upload ran"
    assert all(p["total"] == chunks and p["done"] < chunks for p in during), during
    assert [p["done"] for p in during] == sorted(p["done"] for p in during), during

    def finished() -> list:
        ingests = http.get("/knowledge/progress?name=big-readme.md").json()["ingests"]
        return [i for i in ingests if i["finished"] and i["total"] == chunks]

    assert wait_for(finished, 30, 0.1), http.get("/knowledge/progress").body
    assert http.get("/knowledge/progress?name=nothing-like-it.md").json() == {"ingests": []}
    assert http.delete("/knowledge/big-readme.md").json()["documents_deleted"] == 1


def test_without_a_camera_a_question_about_sight_is_grounded_in_no_image(graph):
    answer = _chat(graph.http, "What can you see right now?", session="blind")
    assert "No camera image is available" in answer["scene_text"], answer
    assert not answer["scene_used"]
    ordinary = _chat(graph.http, "What is two plus two?", session="blind")
    assert ordinary["scene_text"] == ""


def test_operator_persona_is_used_without_restart_remembered_per_session_and_survives(graph):
    http = graph.http
    created = http.post(
        "/personas",
        {
            "persona_id": "pirate",
            "name": "Captain",
            "system_prompt": "You are a pirate robot. Always answer like a pirate, saying arr.",
            "friendliness": 5,
        },
    )
    assert created.status == 200, created.body
    assert created.json()["source"] == "operator"
    assert http.post("/personas", {"persona_id": "pirate", "system_prompt": "x"}).status == 409
    # fusion_node was started before the persona existed: it uses it at once.
    answer = _chat(http, "Hello there!", session="ship", persona="pirate")
    assert answer["success"], answer
    sessions = {s["session_id"]: s for s in http.get("/sessions").json()["sessions"]}
    assert sessions["ship"]["persona"] == "pirate"
    # Remembered per session: the next request names no persona.
    _chat(http, "Where are we sailing?", session="ship")
    turns = http.get("/sessions/ship").json()["turns"]
    assert {t["persona"] for t in turns} == {"pirate"}
    # knowledge_node and the gateway restart: the persona is still there.
    graph.gateway.stop()
    graph.knowledge.stop()
    graph.start_knowledge_and_gateway()
    personas = {p["persona_id"]: p for p in graph.http.get("/personas").json()["personas"]}
    assert personas["pirate"]["name"] == "Captain"
    assert personas["pirate"]["traits"]["friendliness"] == 5
    assert graph.http.delete("/personas/pirate").status == 200
    assert graph.http.delete("/personas/smol").status == 400  # YAML personas are read-only
    unknown = graph.http.post("/chat", {"text": "Hi", "persona": "pirate", "session_id": "new"})
    assert unknown.status == 400 and "unknown persona" in unknown.json()["error"]
