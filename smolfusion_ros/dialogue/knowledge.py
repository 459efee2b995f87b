"""Knowledge base per persona: documents -> chunks -> hybrid retrieval (FTS5 bm25 + MiniLM).

One SQLite file (default `$ROS_HOME/smolfusion_ros/knowledge.db`, beside memory.db), the same
conventions as the memory store: WAL, synchronous=FULL, BEGIN IMMEDIATE for writes, one
connection serialised by a lock for every thread of the process.

Retrieval, for a question and a persona:
  lexical  FTS5 MATCH over the question's content words (OR), ranked by bm25 (porter stemmer);
           FTS5's bm25 evaluated in numpy over a copy of FTS5's postings (lexical_index.py:
           same tokens, same formula, ~20x faster at 10,000 chunks), rebuilt in the
           background when the documents change, FTS5 itself ranking meanwhile
  dense    cosine similarity of the question's MiniLM vector with every chunk's vectors
           (a chunk is embedded as windows of <= 150 words, since the model reads only ~190
           words; its similarity is its best window's; float32 blobs in SQLite, one
           normalised matrix per persona cached in memory)
  hybrid   reciprocal rank fusion of both lists: score = sum 1 / (rrf_k + rank), rrf_k = 60

Relevance threshold. A fused RRF score says how a chunk ranks against the others, not whether
it answers anything: the best chunk of an unrelated question still gets 1/61 + 1/61. So a
chunk is kept only when the raw signals vouch for it:
  - its cosine similarity to the question is >= `min_similarity`, or
  - it matched the lexical query on at least `min_term_coverage` of the question's content
    words (and at least two of them, or the only one) and its cosine similarity is
    >= `min_similarity_with_terms` (a weaker semantic check that stops a shared common word
    from dragging in an unrelated chunk).
In lexical-only mode the term-coverage test alone decides; in dense-only mode the similarity
alone. The defaults come from bench/bench_retrieval.py's labelled set (answerable questions
versus questions the documents cannot answer): answering chunks scored 0.17-0.6 similarity,
the best chunk for an unanswerable question at most 0.23 among 8 chunks.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smolfusion_ros.dialogue.chunking import chunk_text
from smolfusion_ros.dialogue.documents import (
    DocumentError,
    DocumentLimits,
    ExtractedDocument,
    check_name,
    extract,
)
from smolfusion_ros.dialogue.embedding import Embedder, MiniLMEmbedder
from smolfusion_ros.dialogue.lexical_index import LexicalSnapshot, QueryTokenizer, build_snapshot
from smolfusion_ros.dialogue.persona_store import validate_persona_id
from smolfusion_ros.memory.sqlite import immediate_transaction, open_database
from smolfusion_ros.paths import ros_home

SCHEMA_VERSION = 1
MODES = ("hybrid", "lexical", "dense")
ProgressCallback = Callable[[int, int], None]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS documents (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " persona TEXT NOT NULL, name TEXT NOT NULL, kind TEXT, sha256 TEXT, bytes INTEGER,"
    " pages INTEGER, words INTEGER, chunk_count INTEGER, added FLOAT, UNIQUE (persona, name))",
    "CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " document_id INTEGER NOT NULL REFERENCES documents(id), persona TEXT NOT NULL,"
    " seq INTEGER, text TEXT, words INTEGER, embedding BLOB)",
    "CREATE INDEX IF NOT EXISTS idx_chunks_persona ON chunks (persona, id)",
    "CREATE INDEX IF NOT EXISTS idx_chunks_document ON chunks (document_id)",
    # Porter stemming: "charging" finds "charge". External content: the text is stored once.
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING FTS5 (text, content=[chunks],"
    " content_rowid=[id], tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN"
    " INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN"
    " INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES('delete', old.id, old.text); END",
)

# Words that carry no topic: left out of the lexical query (an OR over "what is the" would
# match every chunk) and of the term-coverage test.
_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours
    yourself yourselves tell please know get got let lets can't don't isn't i'm it's what's
    there's der die das ein eine und oder ist sind was wie wo wer ich du sie es mir dich
    mich
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
_WORD = re.compile(r"\w+(?:'\w+)?")


class KnowledgeError(ValueError):
    """Bad input (document, persona id, query, mode); str(exc) is the error for the caller."""


class KnowledgeStoreError(RuntimeError):
    """The database cannot be opened or written; the message names the file and the cause."""


@dataclass(frozen=True)
class RetrievalSettings:
    rrf_k: int = 60
    candidates: int = 50  # per list, before fusion
    min_similarity: float = 0.35
    # 0.6: two of four words was not enough ("change a flat tyre" matched numpy's "flat").
    min_term_coverage: float = 0.6
    min_similarity_with_terms: float = 0.15
    chunk_words: int = 300
    overlap_words: int = 50
    # MiniLM reads at most 256 word pieces (~190 words): a 300-word chunk is embedded as
    # windows of at most this many words, and its similarity is the best window's.
    embed_window_words: int = 150
    max_query_chars: int = 2000
    # False ranks without the relevance test (benchmarks measure ranking quality with it off).
    apply_threshold: bool = True
    # Rank lexical hits from an in-memory copy of FTS5's postings (lexical_index.py); False:
    # FTS5 ranks every search itself (same order, slower on large knowledge bases).
    lexical_index: bool = True


@dataclass(frozen=True)
class KnowledgeLimits(DocumentLimits):
    max_chunks_per_document: int = 20_000
    max_documents_per_persona: int = 1000


@dataclass(frozen=True)
class KnowledgeHit:
    chunk_id: int
    document: str
    seq: int  # the chunk's position in its document
    text: str
    score: float  # fused RRF score (or the single list's 1/(k+rank) in one-sided modes)
    similarity: float | None  # cosine similarity; None when the dense side did not run
    bm25: float | None  # FTS5 bm25 (lower is better); None when the chunk had no lexical hit
    lexical_rank: int | None
    dense_rank: int | None


@dataclass(frozen=True)
class DocumentInfo:
    name: str
    kind: str
    bytes: int
    pages: int
    words: int
    chunks: int
    added: float
    sha256: str


@dataclass(frozen=True)
class IngestReport:
    name: str
    chunks: int
    words: int
    pages: int
    replaced: bool  # a document of that name existed and was replaced
    unchanged: bool  # the same bytes were already ingested: nothing was done
    seconds: float


def default_knowledge_database() -> Path:
    return ros_home() / "smolfusion_ros" / "knowledge.db"


def content_terms(text: str) -> list[str]:
    """The question's topic words, lower case, stopwords removed, in order, no repeats."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)


def _stem(word: str) -> str:
    """A light English stem used as a word prefix by the term-coverage test (FTS5 ranks with
    porter): charge/charges/charging -> charg, battery/batteries -> batter."""
    if word.endswith("'s"):
        word = word[:-2]
    for suffix in ("ies", "ing", "ed", "es", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith(("e", "y")) and len(word) > 3:
        word = word[:-1]
    return word


@functools.lru_cache(maxsize=4096)
def _stem_pattern(term: str) -> tuple[str, re.Pattern]:
    stem = _stem(term)
    return stem, re.compile(r"\b" + re.escape(stem))


def term_coverage(terms: list[str], text: str) -> tuple[int, float]:
    """How many of `terms` occur in `text` (as a word starting with the term's stem), and that
    count as a fraction. A regex search per term: no tokenising of the chunk."""
    if not terms:
        return 0, 0.0
    lowered = text.lower()
    found = 0
    for term in terms:
        stem, pattern = _stem_pattern(term)
        # The substring test first: C-speed, and most terms are absent from most chunks (a
        # regex starting with \b scans the whole text without a literal-prefix search).
        if stem in lowered and pattern.search(lowered):
            found += 1
    return found, found / len(terms)


def embedding_windows(text: str, window_words: int) -> list[str]:
    """A chunk's text cut into near-equal windows of at most `window_words` words."""
    words = text.split()
    if not words:
        return [""]
    count = -(-len(words) // max(1, window_words))
    size = -(-len(words) // count)
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def format_context(hits: list[KnowledgeHit], max_chars: int = 2400) -> str:
    """The knowledge block for the prompt: each chunk tagged with its document, best first,
    cut to `max_chars` (a chunk that does not fit whole is left out, not truncated)."""
    if not hits:
        return ""
    lines = ["Facts from the robot's documents (answer from them when they fit the question):"]
    used = len(lines[0])
    for hit in hits:
        entry = f"[{hit.document} #{hit.seq + 1}] {' '.join(hit.text.split())}"
        if used + len(entry) + 1 > max_chars:
            continue
        lines.append(entry)
        used += len(entry) + 1
    return "\n".join(lines) if len(lines) > 1 else ""


class KnowledgeBase:
    """Per-persona documents and their chunks in one SQLite file; hybrid search over them.

    Thread-safe: ingest and search may run in several threads at once. Embedding (the slow
    part) runs in the calling thread outside the database lock; only the final write of a
    document takes the lock, in one transaction (a reader never sees half a document).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        embedder: Embedder | None = None,
        settings: RetrievalSettings | None = None,
        limits: KnowledgeLimits | None = None,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path).expanduser() if path else default_knowledge_database()
        self.embedder: Embedder = embedder or MiniLMEmbedder()
        self.settings = settings or RetrievalSettings()
        self.limits = limits or KnowledgeLimits()
        self._lock = threading.Lock()
        self._matrices: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._data_version = -1
        self._writes = 0  # this connection's commits (PRAGMA data_version counts others')
        self._tokenizer = QueryTokenizer()
        self._lex_lock = threading.Lock()
        self._lex: tuple[tuple[int, int], LexicalSnapshot] | None = None
        self._lex_building = False
        self._lex_failed: tuple[int, int] | None = None  # generation whose build failed
        self._lex_ready = threading.Condition(self._lex_lock)
        self._closed = False
        self.lexical_index_error = ""  # why the last snapshot build failed (FTS5 ranks then)
        try:
            self.db = open_database(self.path, synchronous)
            with self._lock, immediate_transaction(self.db):
                for statement in _SCHEMA:
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise KnowledgeStoreError(
                f"cannot open knowledge database {self.path}: {exc}"
            ) from None

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self.db.conn.close()
        self._tokenizer.close()

    # ------------------------------------------------------------------ ingest
    def ingest_file(
        self,
        persona_id: str,
        path: str | Path,
        *,
        name: str = "",
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Ingest a txt/md/pdf file from disk under `name` (default: its file name)."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise KnowledgeError(f"cannot read {path}: {exc.strerror}") from None
        if size > self.limits.max_bytes:
            raise KnowledgeError(
                f"{path.name}: {size / 1e6:.1f} MB is over the limit of "
                f"{self.limits.max_bytes / 1e6:.1f} MB"
            )
        return self.ingest_bytes(
            persona_id, name or path.name, path.read_bytes(), progress=progress
        )

    def ingest_bytes(
        self,
        persona_id: str,
        name: str,
        data: bytes,
        *,
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Extract, chunk, embed and store a document; a document of the same name is replaced.

        `progress(done, total)` is called after each embedding batch (and once with 0 before
        the first); an exception raised by it aborts the ingest with nothing stored. Raises
        KnowledgeError for a bad document, EmbeddingModelMissing without the model.
        """
        started = time.monotonic()
        persona_id = self._persona(persona_id)
        try:
            document = extract(name, data, self.limits)
        except DocumentError as exc:
            raise KnowledgeError(str(exc)) from None
        digest = hashlib.sha256(data).hexdigest()
        existing = self._document_row(persona_id, document.name)
        if existing and existing["sha256"] == digest:
            return IngestReport(
                document.name, existing["chunk_count"], existing["words"], existing["pages"],
                replaced=False, unchanged=True, seconds=time.monotonic() - started,
            )  # fmt: skip
        if existing is None and self._document_count(persona_id) >= (
            self.limits.max_documents_per_persona
        ):
            raise KnowledgeError(
                f"persona {persona_id!r} has {self.limits.max_documents_per_persona} documents,"
                " the limit; delete some first"
            )
        chunks = chunk_text(document.text, self.settings.chunk_words, self.settings.overlap_words)
        if len(chunks) > self.limits.max_chunks_per_document:
            raise KnowledgeError(
                f"{document.name}: {len(chunks)} chunks is over the limit of "
                f"{self.limits.max_chunks_per_document}"
            )
        self._check_model()
        vectors = self._embed_with_progress([c.text for c in chunks], progress)
        record = self._store(persona_id, document, digest, len(data), chunks, vectors)
        return IngestReport(
            document.name, len(chunks), record["words"], document.pages,
            replaced=existing is not None, unchanged=False, seconds=time.monotonic() - started,
        )  # fmt: skip

    def _embed_with_progress(
        self, texts: list[str], progress: ProgressCallback | None
    ) -> list[np.ndarray]:
        """One (windows, dim) float32 array per text; progress counts finished texts."""
        window = self.settings.embed_window_words
        windows = [embedding_windows(t, window) for t in texts]
        flat = [w for ws in windows for w in ws]
        owner_end = np.cumsum([len(ws) for ws in windows])
        batch = max(1, getattr(self.embedder, "batch_size", 16))
        parts = []
        if progress:
            progress(0, len(texts))
        for start in range(0, len(flat), batch):
            parts.append(self.embedder.encode(flat[start : start + batch]))
            if progress:
                done = int(np.searchsorted(owner_end, start + batch, side="right"))
                progress(min(done, len(texts)), len(texts))
        dim = self.embedder.dim
        matrix = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        return np.split(matrix, owner_end[:-1]) if texts else []

    def _store(self, persona_id, document: ExtractedDocument, digest, size, chunks, vectors):
        words = sum(c.words for c in chunks)
        record = {
            "persona": persona_id,
            "name": document.name,
            "kind": document.kind,
            "sha256": digest,
            "bytes": size,
            "pages": document.pages,
            "words": words,
            "chunk_count": len(chunks),
            "added": time.time(),
        }
        with self._lock:
            try:
                with immediate_transaction(self.db):
                    self._delete_document_rows(persona_id, document.name)
                    doc_id = self.db["documents"].insert(record).last_pk
                    self.db.conn.executemany(
                        "INSERT INTO chunks (document_id, persona, seq, text, words, embedding)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (doc_id, persona_id, c.seq, c.text, c.words, vectors[i].tobytes())
                            for i, c in enumerate(chunks)
                        ],
                    )
                    self.db.execute(
                        "INSERT INTO meta (key, value) VALUES ('embedding_model', ?)"
                        " ON CONFLICT(key) DO NOTHING",
                        [self._model_tag()],
                    )
            except sqlite3.Error as exc:
                raise KnowledgeStoreError(f"cannot write to {self.path}: {exc}") from None
            self._matrices.pop(persona_id, None)
            self._writes += 1
        return record

    def _model_tag(self) -> str:
        # The window size is part of what a stored vector means.
        return f"{self.embedder.name}:{self.embedder.dim}:w{self.settings.embed_window_words}"

    def _check_model(self) -> None:
        """Vectors of two different models cannot be compared: refuse to mix them."""
        with self._lock:
            rows = list(self.db.query("SELECT value FROM meta WHERE key = 'embedding_model'"))
            if rows and rows[0]["value"] != self._model_tag():
                empty = not self.db.execute("SELECT 1 FROM chunks LIMIT 1").fetchall()
                if empty:  # nothing stored any more: the new model may take over
                    with immediate_transaction(self.db):
                        self.db.execute("DELETE FROM meta WHERE key = 'embedding_model'")
                    return
        if rows and rows[0]["value"] != self._model_tag():
            raise KnowledgeStoreError(
                f"{self.path} holds vectors of {rows[0]['value']}, not {self._model_tag()}: "
                "clear the knowledge base or use the same model"
            )

    # ------------------------------------------------------------ management
    def documents(self, persona_id: str) -> list[DocumentInfo]:
        persona_id = self._persona(persona_id)
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM documents WHERE persona = ? ORDER BY name", [persona_id]
                )
            )
        return [
            DocumentInfo(
                name=r["name"],
                kind=r["kind"],
                bytes=r["bytes"],
                pages=r["pages"],
                words=r["words"],
                chunks=r["chunk_count"],
                added=r["added"],
                sha256=r["sha256"],
            )  # fmt: skip
            for r in rows
        ]

    def delete_document(self, persona_id: str, name: str) -> int:
        """Delete one document; returns its chunk count. KnowledgeError if there is none."""
        persona_id = self._persona(persona_id)
        try:
            name = check_name(name)
        except DocumentError as exc:
            raise KnowledgeError(str(exc)) from None
        with self._lock:
            with immediate_transaction(self.db):
                deleted = self._delete_document_rows(persona_id, name)
            self._matrices.pop(persona_id, None)
            self._writes += 1
        if deleted is None:
            raise KnowledgeError(f"persona {persona_id!r} has no document {name!r}")
        return deleted

    def clear(self, persona_id: str) -> int:
        """Delete every document of a persona; returns how many there were."""
        persona_id = self._persona(persona_id)
        with self._lock:
            with immediate_transaction(self.db):
                self.db.execute("DELETE FROM chunks WHERE persona = ?", [persona_id])
                count = self.db.execute(
                    "DELETE FROM documents WHERE persona = ?", [persona_id]
                ).rowcount
            self._matrices.pop(persona_id, None)
            self._writes += 1
        return count

    def chunk_count(self, persona_id: str = "") -> int:
        with self._lock:
            if persona_id:
                sql, args = "SELECT COUNT(*) AS n FROM chunks WHERE persona = ?", [persona_id]
            else:
                sql, args = "SELECT COUNT(*) AS n FROM chunks", []
            return next(iter(self.db.query(sql, args)))["n"]

    def chunk(self, chunk_id: int) -> tuple[str, int, str] | None:
        """(document name, seq, text) of a chunk id, or None."""
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT d.name, c.seq, c.text FROM chunks c JOIN documents d"
                    " ON d.id = c.document_id WHERE c.id = ?",
                    [chunk_id],
                )
            )
        return (rows[0]["name"], rows[0]["seq"], rows[0]["text"]) if rows else None

    def _chunks(self, chunk_ids: list[int]) -> dict[int, tuple[str, int, str]]:
        """{chunk id: (document name, seq, text)} in one query."""
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        with self._lock:
            rows = self.db.execute(
                "SELECT c.id, d.name, c.seq, c.text FROM chunks c JOIN documents d"
                f" ON d.id = c.document_id WHERE c.id IN ({marks})",
                list(chunk_ids),
            ).fetchall()
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def _delete_document_rows(self, persona_id: str, name: str) -> int | None:
        """Inside a write transaction and the lock."""
        rows = list(
            self.db.query(
                "SELECT id, chunk_count FROM documents WHERE persona = ? AND name = ?",
                [persona_id, name],
            )
        )
        if not rows:
            return None
        self.db.execute("DELETE FROM chunks WHERE document_id = ?", [rows[0]["id"]])
        self.db.execute("DELETE FROM documents WHERE id = ?", [rows[0]["id"]])
        return rows[0]["chunk_count"]

    def _document_row(self, persona_id: str, name: str) -> dict | None:
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM documents WHERE persona = ? AND name = ?", [persona_id, name]
                )
            )
        return rows[0] if rows else None

    def _document_count(self, persona_id: str) -> int:
        with self._lock:
            rows = list(
                self.db.query("SELECT COUNT(*) AS n FROM documents WHERE persona = ?", [persona_id])
            )
        return rows[0]["n"]

    @staticmethod
    def _persona(persona_id: str) -> str:
        try:
            return validate_persona_id(persona_id)
        except ValueError as exc:
            raise KnowledgeError(str(exc)) from None

    # ---------------------------------------------------------------- search
    def search(
        self, persona_id: str, query: str, *, top_k: int = 3, mode: str = "hybrid"
    ) -> list[KnowledgeHit]:
        """The chunks of the persona's documents that answer `query`, best first, at most
        `top_k`, only those above the relevance threshold (possibly none)."""
        persona_id = self._persona(persona_id)
        if mode not in MODES:
            raise KnowledgeError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        query = query.strip()
        if not query:
            raise KnowledgeError("the query is empty")
        if len(query) > self.settings.max_query_chars:
            raise KnowledgeError(
                f"the query is {len(query)} characters long; the limit is "
                f"{self.settings.max_query_chars}"
            )
        if top_k < 1:
            raise KnowledgeError(f"top_k must be at least 1, got {top_k}")
        settings = self.settings
        terms = content_terms(query)
        lexical: list[tuple[int, float]] = []
        if mode in ("hybrid", "lexical") and terms:
            lexical = self._lexical(persona_id, terms, settings.candidates)
        dense: list[int] = []
        similarity: dict[int, float] = {}
        sims_of: Callable[[int], float | None] = lambda _cid: None  # noqa: E731
        if mode in ("hybrid", "dense"):
            ids, matrix, starts = self._matrix(persona_id)
            if len(ids):
                vector = self.embedder.encode([query])[0]
                sims = np.maximum.reduceat(matrix @ vector, starts)  # best window per chunk
                count = min(settings.candidates, len(ids))
                top = np.argpartition(-sims, count - 1)[:count]
                top = top[np.argsort(-sims[top], kind="stable")]
                dense = [int(ids[i]) for i in top]
                similarity = {int(ids[i]): float(sims[i]) for i in top}

                def sims_of(cid: int) -> float | None:
                    if cid in similarity:
                        return similarity[cid]
                    index = int(np.searchsorted(ids, cid))  # ids are sorted (ORDER BY id)
                    found = index < len(ids) and ids[index] == cid
                    return float(sims[index]) if found else None

        fused: dict[int, float] = {}
        lexical_rank = {cid: rank for rank, (cid, _) in enumerate(lexical, 1)}
        bm25 = dict(lexical)
        dense_rank = {cid: rank for rank, cid in enumerate(dense, 1)}
        for ranks in (lexical_rank, dense_rank):
            for cid, rank in ranks.items():
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (settings.rrf_k + rank)
        # Chunk id breaks ties: the order never depends on dict or thread timing. Only the
        # best few are examined: past them, fused rank and relevance both fall, and fetching
        # and testing 100 candidates would cost more than the search itself.
        order = sorted(fused, key=lambda c: (-fused[c], c))[: max(4 * top_k, 12)]
        rows = self._chunks(order)
        hits: list[KnowledgeHit] = []
        for cid in order:
            row = rows.get(cid)
            if row is None:
                continue  # deleted by another thread since the search started
            cosine = sims_of(cid)
            relevant = not settings.apply_threshold or (
                cosine is not None and cosine >= settings.min_similarity
            )
            if not relevant and cid in bm25:
                found, share = term_coverage(terms, row[2])
                enough_terms = found >= min(2, len(terms)) and share >= settings.min_term_coverage
                relevant = enough_terms and (
                    cosine is None or cosine >= settings.min_similarity_with_terms
                )
            if not relevant:
                continue
            hits.append(
                KnowledgeHit(
                    chunk_id=cid,
                    document=row[0],
                    seq=row[1],
                    text=row[2],
                    score=fused[cid],
                    similarity=cosine,
                    bm25=bm25.get(cid),
                    lexical_rank=lexical_rank.get(cid),
                    dense_rank=dense_rank.get(cid),
                )
            )
            if len(hits) >= top_k:
                break
        return hits

    def _lexical(self, persona_id: str, terms: list[str], limit: int) -> list[tuple[int, float]]:
        snapshot = self._lexical_snapshot() if self.settings.lexical_index else None
        if snapshot is not None:
            tokens = self._tokenizer.tokens(terms)
            # A word FTS5 reads as several tokens ("don't", "foo_bar") is a phrase query,
            # which needs positions: FTS5 ranks those questions itself.
            if all(len(t) <= 1 for t in tokens):
                return snapshot.rank(persona_id, [t[0] for t in tokens if t], limit)
        return self._lexical_fts(persona_id, terms, limit)

    def _generation(self) -> tuple[int, int]:
        """Changes whenever the stored chunks may have changed (any connection)."""
        with self._lock:
            version = self.db.execute("PRAGMA data_version").fetchone()[0]
            return version, self._writes

    def _lexical_snapshot(self) -> LexicalSnapshot | None:
        """The postings snapshot if it is current; otherwise None, and a rebuild starts in
        the background (a search never waits for one)."""
        generation = self._generation()
        with self._lex_lock:
            if self._lex is not None and self._lex[0] == generation:
                return self._lex[1]
            if not self._lex_building and not self._closed and self._lex_failed != generation:
                self._lex_building = True
                threading.Thread(
                    target=self._build_lexical,
                    args=(generation,),
                    name="knowledge-bm25",
                    daemon=True,
                ).start()
        return None

    def _build_lexical(self, generation: tuple[int, int]) -> None:
        # A write committed after `generation` was read may already be in the snapshot: it
        # is then labelled older than it is and rebuilt once more, never used stale.
        try:
            snapshot = build_snapshot(self.path)
            error = ""
        except (sqlite3.Error, OSError, RuntimeError, ValueError) as exc:
            snapshot, error = None, f"lexical index: {exc}"
        with self._lex_lock:
            self._lex_building = False
            self.lexical_index_error = error
            if snapshot is not None:
                self._lex = (generation, snapshot)
            else:  # not retried (by every search) until the documents change
                self._lex_failed = generation
            self._lex_ready.notify_all()

    def wait_lexical_index(self, timeout: float) -> bool:
        """Start (if needed) and wait for a current postings snapshot; False on timeout or
        when it cannot be built (searches then rank with FTS5)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._lexical_snapshot() is not None:
                return True
            with self._lex_lock:
                if not self._lex_building and self._lex_failed == self._generation():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lex_ready.wait(min(left, 0.5))

    def _lexical_fts(
        self, persona_id: str, terms: list[str], limit: int
    ) -> list[tuple[int, float]]:
        # Each term quoted: FTS5 syntax in a question ("AND", "NEAR", '*') stays plain text.
        match = " OR ".join('"' + t.replace('"', "") + '"' for t in terms)
        with self._lock:
            try:
                rows = self.db.execute(
                    "SELECT c.id, bm25(chunks_fts) AS rank FROM chunks_fts"
                    " JOIN chunks c ON c.id = chunks_fts.rowid"
                    # Ties by chunk id, as the in-memory postings rank them.
                    " WHERE chunks_fts MATCH ? AND c.persona = ? ORDER BY rank, c.id LIMIT ?",
                    [match, persona_id, limit],
                ).fetchall()
            except sqlite3.OperationalError as exc:
                raise KnowledgeError(f"cannot search for {terms}: {exc}") from None
        return [(int(cid), float(rank)) for cid, rank in rows]

    def _matrix(self, persona_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(chunk ids, window vectors, first row of each chunk) of a persona, cached until
        its documents change. A chunk's windows are consecutive rows.

        PRAGMA data_version changes when another connection (another process) commits, so a
        document ingested by the gateway is seen by fusion_node's next search.
        """
        with self._lock:
            version = self.db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._matrices.clear()
                self._data_version = version
            cached = self._matrices.get(persona_id)
            if cached is not None:
                return cached
            rows = self.db.execute(
                "SELECT id, embedding FROM chunks WHERE persona = ? ORDER BY id", [persona_id]
            ).fetchall()
            dim = self.embedder.dim
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            counts = np.fromiter((len(r[1]) // (4 * dim) for r in rows), np.int64, len(rows))
            starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(rows) else counts
            if rows:
                matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                matrix = matrix.reshape(-1, dim)
            else:
                matrix = np.zeros((0, dim), dtype=np.float32)
            self._matrices[persona_id] = (ids, matrix, starts)
            return ids, matrix, starts
