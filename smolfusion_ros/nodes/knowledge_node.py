"""knowledge_node: the per-persona knowledge base and the operator personas, behind services.

Services:   ~/ingest (IngestKnowledge: txt/md/pdf bytes + file name), ~/list (ListKnowledge),
            ~/search (SearchKnowledge), ~/clear (ClearKnowledge: one document or all),
            ~/list_personas (ListPersonas), ~/create_persona (CreatePersona),
            ~/delete_persona (DeletePersona)
Publishes:  knowledge_progress (KnowledgeProgress, after each embedding batch of an ingest),
            persona_events (std_msgs/String: the id of a persona created, replaced or deleted,
            so fusion_node re-reads the store at once), /diagnostics (every
            diagnostics_period_s, 1 s)
Parameters: database_path (knowledge, empty = $ROS_HOME/smolfusion_ros/knowledge.db),
            persona.database_path (empty = $ROS_HOME/smolfusion_ros/personas.db),
            persona.file, persona.default, max_ingest_mb, max_pending, embed_threads, top_k,
            preload, diagnostics_period_s; all read once at start (read-only)

Embedding (the slow part of ingest and search) runs on the node's own worker threads; a
service callback only waits for its job, and at most max_pending jobs wait at once (more are
answered success=false at once), so the executor always has free threads. Every bad request
is answered success=false with the reason; the node never dies on a request.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String

from smolfusion_ros import paths
from smolfusion_ros.core.personas import PersonaError, load_personas
from smolfusion_ros.dialogue.embedding import EmbeddingModelMissing, MiniLMEmbedder
from smolfusion_ros.dialogue.knowledge import (
    KnowledgeBase,
    KnowledgeError,
    KnowledgeLimits,
    KnowledgeStoreError,
)
from smolfusion_ros.dialogue.persona_store import PersonaRecord, PersonaStore
from smolfusion_ros.msg import KnowledgeProgress, PersonaInfo
from smolfusion_ros.nodes.diagnostics import (
    DIAGNOSTICS_PERIOD_SPEC,
    create_diagnostics,
    diagnostic_array,
)
from smolfusion_ros.nodes.parameters import ConfigError, ParamSpec, between, declare_parameters
from smolfusion_ros.nodes.qos import PERSONA_EVENTS_QOS
from smolfusion_ros.nodes.runner import run_node
from smolfusion_ros.srv import (
    ClearKnowledge,
    CreatePersona,
    DeletePersona,
    IngestKnowledge,
    ListKnowledge,
    ListPersonas,
    SearchKnowledge,
)

TRAITS = ("friendliness", "knowledge", "empathy", "formality")


def persona_to_msg(record: PersonaRecord) -> PersonaInfo:
    persona = record.persona
    msg = PersonaInfo(
        persona_id=persona.persona_id,
        name=persona.name,
        language=record.language,
        system_prompt=persona.system_prompt,
        source=record.source,
    )
    for trait in TRAITS:
        setattr(msg, trait, int(persona.traits.get(trait, 3)))
    return msg


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of knowledge_node (the profile test checks the YAML files)."""
    return [
        ParamSpec(
            "database_path", "", "knowledge SQLite (empty = $ROS_HOME/smolfusion_ros/knowledge.db)"
        ),
        ParamSpec(
            "persona.database_path",
            "",
            "operator personas SQLite (empty = $ROS_HOME/smolfusion_ros/personas.db)",
        ),
        ParamSpec("persona.file", "personas.yaml", "YAML personas (read-only here)"),
        ParamSpec("persona.default", "", "default persona id (empty = the YAML's default)"),
        ParamSpec("max_ingest_mb", 20.0, "largest document accepted", between(0.001, 1024.0)),
        ParamSpec(
            "max_pending",
            8,
            "ingest/search jobs that may wait at once (more are refused at once)",
            between(1, 256),
        ),
        ParamSpec(
            "embed_threads",
            2,
            "torch threads of the embedding model (0 = torch's default)",
            between(0, 64),
        ),
        ParamSpec("top_k", 3, "chunks returned by a search with top_k=0", between(1, 50)),
        ParamSpec("preload", True, "load the embedding model at start-up, not on first use"),
        DIAGNOSTICS_PERIOD_SPEC,
    ]


class KnowledgeNode(Node):
    def __init__(self, node_name: str = "knowledge_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, parameter_specs())
        personas_path = paths.config_path(p["persona.file"])
        try:
            base = load_personas(personas_path, p["persona.default"])
        except FileNotFoundError:
            raise ConfigError(f"persona file {personas_path} does not exist") from None
        except PersonaError as exc:
            raise ConfigError(str(exc)) from None
        persona_db = p["persona.database_path"] or str(
            paths.ros_home() / "smolfusion_ros" / "personas.db"
        )
        try:
            self.personas = PersonaStore(persona_db, base)
        except PersonaError as exc:
            raise ConfigError(str(exc)) from None
        for message in self.personas.conflicts:
            self.get_logger().warning(message)
        self.embedder = MiniLMEmbedder(threads=p["embed_threads"])
        limits = KnowledgeLimits(max_bytes=int(p["max_ingest_mb"] * 1e6))
        try:
            self.kb = KnowledgeBase(
                p["database_path"] or None, embedder=self.embedder, limits=limits
            )
        except KnowledgeStoreError as exc:
            raise ConfigError(str(exc)) from None
        self._top_k = p["top_k"]
        self._max_pending = p["max_pending"]
        # One embedding job at a time: torch already uses embed_threads cores for one batch.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge")
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._ready = threading.Event()
        self._load_error = ""
        self._closing = False  # set by close(): a load cut short by shutdown is no error
        self._stats = {"ingests": 0, "searches": 0, "errors": 0}
        self.max_waiting_calls = self._max_pending

        self._progress = self.create_publisher(KnowledgeProgress, "knowledge_progress", 20)
        # Latched (transient local): a persona event published before fusion_node has matched
        # this publisher (e.g. right after this node restarted) still reaches it.
        self._persona_events = self.create_publisher(String, "persona_events", PERSONA_EVENTS_QOS)
        self._diag = create_diagnostics(self, self._publish_diagnostics)
        group = ReentrantCallbackGroup()
        for srv_type, name, handler in (
            (IngestKnowledge, "~/ingest", self._ingest),
            (ListKnowledge, "~/list", self._list),
            (SearchKnowledge, "~/search", self._search),
            (ClearKnowledge, "~/clear", self._clear),
            (ListPersonas, "~/list_personas", self._list_personas),
            (CreatePersona, "~/create_persona", self._create_persona),
            (DeletePersona, "~/delete_persona", self._delete_persona),
        ):
            self.create_service(srv_type, name, self._guarded(handler), callback_group=group)
        if p["preload"]:
            self._pool.submit(self._load)
        else:
            self._ready.set()
        self.get_logger().info(
            f"knowledge database {self.kb.path} ({self.kb.chunk_count()} chunks), "
            f"personas {self.personas.path} ({len(self.personas.list())} personas)"
        )

    # ----------------------------------------------------------------- plumbing
    def _load(self) -> None:
        try:
            self.embedder.load()
        except EmbeddingModelMissing as exc:
            # Lexical search and listing still work; dense search and ingest say why not.
            self._load_error = str(exc)
            self.get_logger().error(self._load_error)
        except Exception as exc:  # a broken install must not kill the node
            if self._closing:  # the process is stopping under the loader (e.g. a short demo)
                return
            self._load_error = f"embedding model failed to load: {exc}"
            self.get_logger().error(self._load_error)
        self._ready.set()

    def _guarded(self, handler):
        def call(request, response):
            try:
                handler(request, response)
                response.success = True
            except (KnowledgeError, PersonaError, ValueError, EmbeddingModelMissing) as exc:
                response.success = False
                response.error = str(exc)
            except KnowledgeStoreError as exc:
                response.success = False
                response.error = str(exc)
                self._stats["errors"] += 1
            except Exception as exc:  # never let a request kill the node
                response.success = False
                response.error = f"internal error: {type(exc).__name__}: {exc}"
                self._stats["errors"] += 1
                self.get_logger().error(response.error)
            return response

        return call

    def _run_off_executor(self, job):
        """Run `job` on the embedding worker and wait for it (bounded number of waiters)."""
        with self._pending_lock:
            if self._pending >= self._max_pending:
                raise ValueError(
                    f"busy: {self._pending} knowledge jobs are waiting (max_pending); retry later"
                )
            self._pending += 1
        try:
            return self._pool.submit(job).result()
        finally:
            with self._pending_lock:
                self._pending -= 1

    def _persona_id(self, persona: str) -> str:
        persona = (persona or "").strip() or self.personas.base.default_id
        return persona

    # ----------------------------------------------------------------- knowledge
    def _ingest(self, request, response) -> None:
        persona = self._persona_id(request.persona)
        data = bytes(request.data)
        name = request.name

        def progress(done: int, total: int) -> None:
            self._progress.publish(
                KnowledgeProgress(persona=persona, name=name, done=done, total=total)
            )

        def job():
            self._ready.wait()
            return self.kb.ingest_bytes(persona, name, data, progress=progress)

        report = self._run_off_executor(job)
        self._stats["ingests"] += 1
        response.chunks = report.chunks
        response.words = report.words
        response.pages = report.pages
        response.replaced = report.replaced
        response.unchanged = report.unchanged
        response.seconds = float(report.seconds)
        self.get_logger().info(
            f"ingested {name} for {persona}: {report.chunks} chunks in {report.seconds:.2f} s"
        )

    def _list(self, request, response) -> None:
        for doc in self.kb.documents(self._persona_id(request.persona)):
            response.names.append(doc.name)
            response.kinds.append(doc.kind)
            response.bytes.append(doc.bytes)
            response.pages.append(doc.pages)
            response.words.append(doc.words)
            response.chunks.append(doc.chunks)
            response.added.append(float(doc.added))

    def _search(self, request, response) -> None:
        persona = self._persona_id(request.persona)
        top_k = int(request.top_k) or self._top_k
        mode = request.mode or "hybrid"
        started = time.monotonic()

        def job():
            self._ready.wait()
            return self.kb.search(persona, request.query, top_k=top_k, mode=mode)

        # An empty knowledge base answers at once, also while the embedding model loads
        # (fusion_node asks on every question, with a short timeout).
        if not request.query.strip() or self.kb.chunk_count(persona) > 0:
            hits = self._run_off_executor(job)
        else:
            hits = []
        self._stats["searches"] += 1
        for hit in hits:
            response.ids.append(f"{hit.document}#{hit.seq}")
            response.documents.append(hit.document)
            response.seqs.append(hit.seq)
            response.texts.append(hit.text)
            response.scores.append(float(hit.score))
            response.similarities.append(-1.0 if hit.similarity is None else hit.similarity)
        response.latency_s = time.monotonic() - started

    def _clear(self, request, response) -> None:
        persona = self._persona_id(request.persona)
        if request.name:
            self.kb.delete_document(persona, request.name)
            response.documents_deleted = 1
        else:
            response.documents_deleted = self.kb.clear(persona)

    # ------------------------------------------------------------------ personas
    def _list_personas(self, _request, response) -> None:
        response.personas = [persona_to_msg(r) for r in self.personas.list()]
        response.default_id = self.personas.base.default_id

    def _create_persona(self, request, response) -> None:
        given = request.persona
        traits = {t: int(getattr(given, t)) for t in TRAITS if int(getattr(given, t))}
        record = self.personas.create(
            given.persona_id,
            name=given.name,
            system_prompt=given.system_prompt,
            traits=traits,
            language=given.language,
            replace=request.replace,
        )
        response.persona = persona_to_msg(record)
        self._persona_events.publish(String(data=record.persona_id))

    def _delete_persona(self, request, response) -> None:
        response.deleted = self.personas.delete(request.persona_id)
        if response.deleted:
            self._persona_events.publish(String(data=request.persona_id))

    def _publish_diagnostics(self) -> None:
        if not self._ready.is_set():
            level, message = DiagnosticStatus.WARN, "loading the embedding model"
        elif self._load_error:
            level, message = DiagnosticStatus.ERROR, self._load_error
        else:
            level, message = DiagnosticStatus.OK, "ready"
        values = {
            "embedding_model": self.embedder.name,
            "chunks": str(self.kb.chunk_count()),
            "pending": str(self._pending),
            **{k: str(v) for k, v in self._stats.items()},
        }
        self._diag.publish(
            diagnostic_array(self, "knowledge", level, message, "knowledge_base", values)
        )

    def close(self) -> None:
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.kb.close()
        self.personas.close()


def main() -> None:
    run_node(KnowledgeNode)


if __name__ == "__main__":
    main()
