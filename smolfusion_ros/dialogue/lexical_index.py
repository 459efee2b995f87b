"""FTS5's bm25, evaluated in numpy over an in-memory copy of the FTS5 index's postings.

Why: SQLite FTS5 computes bm25 for every row that matches an OR query before it sorts; an
OR over a question's content words matches about a tenth of a 10,000-chunk corpus (median
~1,100 rows, up to 8,000), and at ~3 us a row the ranking costs milliseconds although finding
the rows costs 0.2 ms. Here the same postings (term -> chunk, term frequency), read from
FTS5's own index through the fts5vocab 'instance' table, so the tokens are exactly FTS5's
(porter, unicode61, remove_diacritics 2), are scored with FTS5's bm25 formula and statistics:

    idf(t)   = ln((N - n_t + 0.5) / (n_t + 0.5)), 1e-6 when <= 0 (fts5_aux.c)
    score(d) = sum over the query's terms t of
               idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))
    k1 = 1.2, b = 0.75; N, n_t and avgdl over the whole table (all personas), as FTS5 does

so the ranking is FTS5's (test_knowledge checks it against ORDER BY bm25) at a fraction of the
cost: only the postings of the question's terms are touched.

A snapshot is immutable; the knowledge base builds a new one in a background thread (its
own read connection, one read transaction) whenever its documents change, and ranks with
FTS5 itself until the new one is ready. Query words are tokenised by FTS5 too: a private
in-memory SQLite with an FTS5 table of the same tokenizer.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import numpy as np

K1 = 1.2
B = 0.75
TOKENIZER = "porter unicode61 remove_diacritics 2"


class QueryTokenizer:
    """Query words -> FTS5 tokens, with the FTS5 tokenizer of the knowledge table."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._conn.execute(f"CREATE VIRTUAL TABLE q USING fts5(t, tokenize='{TOKENIZER}')")
        self._conn.execute("CREATE VIRTUAL TABLE q_inst USING fts5vocab(q, instance)")
        self._lock = threading.Lock()

    def tokens(self, words: list[str]) -> list[list[str]]:
        """Each word's tokens in order (a word may give none, one or several)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(
                    "INSERT INTO q (rowid, t) VALUES (?, ?)",
                    [(i, w) for i, w in enumerate(words)],
                )
                rows = self._conn.execute(
                    "SELECT doc, term FROM q_inst ORDER BY doc, offset"
                ).fetchall()
            finally:
                self._conn.execute("ROLLBACK")  # the table stays empty
        out: list[list[str]] = [[] for _ in words]
        for doc, term in rows:
            out[doc].append(term)
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class LexicalSnapshot:
    """The postings of every chunk at one moment, ready for bm25 scoring."""

    def __init__(
        self,
        ids: np.ndarray,
        personas: np.ndarray,
        persona_names: list[str],
        doc_len: np.ndarray,
        terms: dict[str, int],
        offsets: np.ndarray,
        post_pos: np.ndarray,
        post_tf: np.ndarray,
    ) -> None:
        self.ids = ids  # chunk ids, ascending
        self._persona_code = personas  # per row, an index into persona_names
        self._persona_index = {name: i for i, name in enumerate(persona_names)}
        self.rows = len(ids)
        total = float(doc_len.sum())
        avgdl = total / self.rows if self.rows else 1.0
        # The length part of bm25's denominator, per row.
        self._norm = (K1 * (1.0 - B + B * doc_len / (avgdl or 1.0))).astype(np.float64)
        self._terms = terms
        self._offsets = offsets
        self._post_pos = post_pos
        self._post_tf = post_tf.astype(np.float64)

    @property
    def postings(self) -> int:
        return len(self._post_pos)

    def rank(self, persona: str, term_tokens: list[str], limit: int) -> list[tuple[int, float]]:
        """(chunk id, bm25) of the persona's best `limit` chunks, best first; bm25 negative
        as FTS5's bm25() returns it (lower is better); ties by chunk id."""
        code = self._persona_index.get(persona)
        if code is None or not self.rows:
            return []
        scores = np.zeros(self.rows, dtype=np.float64)
        n_rows = self.rows
        for token in term_tokens:  # one per query phrase, repeats included (as FTS5 counts)
            index = self._terms.get(token)
            if index is None:
                continue
            start, end = self._offsets[index], self._offsets[index + 1]
            pos = self._post_pos[start:end]
            tf = self._post_tf[start:end]
            hits = end - start
            idf = math.log((n_rows - hits + 0.5) / (hits + 0.5))
            if idf <= 0.0:
                idf = 1e-6
            scores[pos] += idf * tf * (K1 + 1.0) / (tf + self._norm[pos])
        scores[self._persona_code != code] = 0.0
        matched = np.flatnonzero(scores > 0.0)
        if not len(matched):
            return []
        if len(matched) > limit:
            # Every chunk scoring at least the limit-th best: the chunks tied at the cut all
            # stay for the sort below to choose from by id (a plain partial selection would
            # keep an arbitrary one of them).
            cut = np.partition(scores[matched], len(matched) - limit)[len(matched) - limit]
            matched = matched[scores[matched] >= cut]
        # Best first; equal scores by chunk id (rows are in id order), also at the `limit`
        # cut (the FTS5 query orders ties the same way).
        order = np.lexsort((matched, -scores[matched]))[:limit]
        best = matched[order]
        return [(int(self.ids[i]), -float(scores[i])) for i in best]


def build_snapshot(path: Path, fts_table: str = "chunks_fts") -> LexicalSnapshot:
    """Read the FTS5 index of `path` into a snapshot (one read transaction, own connection)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, isolation_level=None)
    try:
        conn.execute(
            f"CREATE VIRTUAL TABLE temp.sf_inst USING fts5vocab(main, {fts_table}, instance)"
        )
        conn.execute(f"CREATE VIRTUAL TABLE temp.sf_row USING fts5vocab(main, {fts_table}, row)")
        conn.execute("BEGIN")  # the three reads see one state of the file
        try:
            rows = conn.execute("SELECT id, persona FROM chunks ORDER BY id").fetchall()
            vocab = conn.execute("SELECT term, cnt FROM sf_row ORDER BY term").fetchall()
            # Instances come term by term (in the vocabulary's order), each term's by chunk.
            docs = np.fromiter(
                (r[0] for r in conn.execute("SELECT doc FROM sf_inst")), dtype=np.int64
            )
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    persona_names = sorted({r[1] for r in rows})
    code_of = {name: i for i, name in enumerate(persona_names)}
    personas = np.fromiter((code_of[r[1]] for r in rows), dtype=np.int32, count=len(rows))
    counts = np.fromiter((r[1] for r in vocab), dtype=np.int64, count=len(vocab))
    if int(counts.sum()) != len(docs):
        raise RuntimeError("the FTS5 vocabulary and its instances disagree")
    term_of_instance = np.repeat(np.arange(len(vocab), dtype=np.int64), counts)
    pos = np.searchsorted(ids, docs)  # row of each instance
    if len(docs):
        change = np.empty(len(docs), dtype=bool)
        change[0] = True
        change[1:] = (pos[1:] != pos[:-1]) | (term_of_instance[1:] != term_of_instance[:-1])
        starts = np.flatnonzero(change)
    else:
        starts = np.zeros(0, dtype=np.int64)
    post_pos = pos[starts]
    post_term = term_of_instance[starts]
    post_tf = np.diff(np.append(starts, len(docs))).astype(np.float32)
    offsets = np.searchsorted(post_term, np.arange(len(vocab) + 1))
    doc_len = np.bincount(pos, minlength=len(ids)).astype(np.float64)
    terms = {r[0]: i for i, r in enumerate(vocab)}
    return LexicalSnapshot(
        ids, personas, persona_names, doc_len, terms, offsets, post_pos.astype(np.int64), post_tf
    )
