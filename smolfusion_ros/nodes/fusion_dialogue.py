"""fusion_node's dialogue layer: rule answers, knowledge retrieval and operator personas.

- Rules (config/rules.yaml, dialogue.rules): matched by the chat engine before the LLM queue.
- Knowledge: fusion_node asks knowledge_node's ~/search service (short timeout) instead of
  opening the knowledge database and loading its own copy of the embedding model: one model
  in memory per robot, and ingest stays in one process. The call runs on the chat engine's
  thread just before the prompt is built, never on an executor thread; a knowledge base that
  is absent, slow or failing costs at most knowledge.timeout_s and the answer goes on
  without documents.
- Operator personas: the persona store beside memory (dialogue.persona_store, written by
  knowledge_node) is read at start-up, again on an unknown persona id, and on every
  persona_events message, so a persona created over the gateway works without a restart.
"""

from __future__ import annotations

import threading
import time

from rclpy.node import Node
from std_msgs.msg import String

from smolfusion_ros import paths
from smolfusion_ros.core.personas import PersonaBook, PersonaError
from smolfusion_ros.dialogue.persona_store import PersonaStore
from smolfusion_ros.dialogue.rules import RuleBook, RuleError, load_rules
from smolfusion_ros.nodes.parameters import STARTUP, ConfigError, ParamSpec, between
from smolfusion_ros.nodes.qos import PERSONA_EVENTS_QOS
from smolfusion_ros.srv import SearchKnowledge

# Longest knowledge text put into one prompt (characters): a few chunks, not a document.
MAX_CONTEXT_CHARS = 2400


def dialogue_parameter_specs() -> list[ParamSpec]:
    return [
        ParamSpec("rules.file", "rules.yaml", "rule answers (config/...; empty = no rules)"),
        ParamSpec("rules.robot_name", "", "overrides the rules file's {robot_name} (empty = keep)"),
        ParamSpec("knowledge.enabled", True, "put knowledge_node's relevant chunks in prompts"),
        ParamSpec(
            "knowledge.node",
            "knowledge_node",
            "name of the knowledge node (same namespace)",
            applies=STARTUP,  # names the search client, created once
        ),
        ParamSpec(
            "knowledge.timeout_s",
            2.0,
            "longest wait for a knowledge search before answering without documents",
            between(0.05, 60.0),
        ),
        ParamSpec("knowledge.top_k", 3, "chunks put into a prompt at most", between(1, 10)),
        ParamSpec(
            "persona.database_path",
            "default",
            "operator personas (knowledge_node writes them): 'default' = "
            "$ROS_HOME/smolfusion_ros/personas.db, empty = YAML personas only",
        ),
    ]


def knowledge_context(ids: list[str], texts: list[str]) -> str:
    """The note that goes into the context block: each chunk with its id, bounded."""
    parts, used = [], 0
    for chunk_id, text in zip(ids, texts, strict=False):
        piece = f"({chunk_id}) {' '.join(text.split())}"
        if used + len(piece) > MAX_CONTEXT_CHARS:
            piece = piece[: max(0, MAX_CONTEXT_CHARS - used)]
        if not piece:
            break
        parts.append(piece)
        used += len(piece)
    if not parts:
        return ""
    return "From your documents (answer from these if they help): " + " ".join(parts)


class DialogueBridge:
    """The knowledge client and the persona_events subscription exist for the node's whole
    life; rules and the persona store are loaded by configure() and closed by close()."""

    def __init__(self, node: Node, knowledge_node: str) -> None:
        self._node = node
        self.rules: RuleBook | None = None
        self.store: PersonaStore | None = None
        self._base: PersonaBook | None = None
        self._timeout = 2.0
        self._top_k = 3
        self._enabled = False
        self._search = node.create_client(SearchKnowledge, f"{knowledge_node}/search")
        self.lookups = 0
        self.lookup_failures = 0
        self.last_lookup_s = 0.0
        self.on_personas_changed = None  # set by fusion_node: callback(PersonaBook)
        node.create_subscription(
            String, "persona_events", self._on_persona_event, PERSONA_EVENTS_QOS
        )

    def configure(self, p: dict, base: PersonaBook) -> None:
        """Load the rules and open the persona store; ConfigError on a bad file."""
        self.rules = None
        if p["rules.file"]:
            values = {"robot_name": p["rules.robot_name"]} if p["rules.robot_name"] else None
            try:
                self.rules = load_rules(paths.config_path(p["rules.file"]), values)
            except RuleError as exc:
                raise ConfigError(str(exc)) from None
        self.store = None
        db = p["persona.database_path"]
        if db:
            path = paths.ros_home() / "smolfusion_ros" / "personas.db" if db == "default" else db
            try:
                self.store = PersonaStore(path, base)
            except PersonaError as exc:
                raise ConfigError(str(exc)) from None
        self._base = base
        self._timeout = p["knowledge.timeout_s"]
        self._top_k = p["knowledge.top_k"]
        self._enabled = p["knowledge.enabled"]

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            store.close()

    def personas(self) -> PersonaBook:
        """Every persona: the YAML ones and the operator ones stored beside memory."""
        if self.store is None:
            return self._base
        return self.store.book()

    def language_of(self, persona_id: str) -> str:
        return self.store.language_of(persona_id) if self.store else ""

    def _on_persona_event(self, _msg: String) -> None:
        if self.on_personas_changed is not None and self.store is not None:
            self.on_personas_changed(self.personas())

    def lookup(self, persona_id: str, text: str) -> tuple[str, list[str]]:
        """Relevant chunks for the prompt (chat engine thread); ("", []) when none."""
        if not self._enabled or not self._search.service_is_ready():
            return "", []
        started = time.monotonic()
        done = threading.Event()
        future = self._search.call_async(
            SearchKnowledge.Request(persona=persona_id, query=text, top_k=self._top_k)
        )
        future.add_done_callback(lambda _f: done.set())
        self.lookups += 1
        # future.done() is polled too: the done-callback runs as an executor task, which may
        # wait until some unrelated event wakes the executor (see client._wait_future).
        deadline = started + self._timeout
        while not future.done() and time.monotonic() < deadline:
            done.wait(0.005)
        if not future.done():
            future.cancel()
            self.lookup_failures += 1
            raise TimeoutError(f"knowledge search took over {self._timeout} s")
        self.last_lookup_s = time.monotonic() - started
        response = future.result()
        if not response.success:
            self.lookup_failures += 1
            raise RuntimeError(response.error)
        ids, texts = list(response.ids), list(response.texts)
        return knowledge_context(ids, texts), ids

    def diagnostics(self) -> dict[str, str]:
        return {
            "rules": str(len(self.rules.intents()) if self.rules else 0),
            "knowledge_lookups": str(self.lookups),
            "knowledge_failures": str(self.lookup_failures),
            "last_knowledge_lookup_s": f"{self.last_lookup_s:.3f}",
        }
