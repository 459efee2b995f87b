"""Split a document into overlapping chunks of about 300 words at sentence boundaries.

A chunk ends at a paragraph end once it has `min_words` words, otherwise at the sentence that
would take it past `chunk_words`; the next chunk starts with the last sentences of the previous
one (about `overlap_words` words), so a fact that straddles a boundary is whole in one chunk.
Sentences longer than `chunk_words - overlap_words` are cut into word windows (tables, lists
and PDF text without full stops have no sentence ends to respect).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! ? (or their CJK forms) followed by whitespace, optionally after a
# closing quote or bracket. Abbreviations ("e.g. this") split too: harmless for retrieval.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])[\"'”’)\]]*\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    seq: int
    text: str
    words: int
    overlap_words: int  # words repeated from the previous chunk


@dataclass(frozen=True)
class _Sentence:
    words: tuple[str, ...]
    paragraph_end: bool


def _sentences(text: str, max_words: int) -> list[_Sentence]:
    out: list[_Sentence] = []
    for paragraph in _PARAGRAPH.split(text):
        pieces = [p for p in _SENTENCE_END.split(paragraph.strip()) if p.strip()]
        for index, piece in enumerate(pieces):
            words = piece.split()
            last = index == len(pieces) - 1
            for start in range(0, len(words), max_words):
                window = tuple(words[start : start + max_words])
                out.append(_Sentence(window, last and start + max_words >= len(words)))
    return out


def chunk_text(
    text: str, chunk_words: int = 300, overlap_words: int = 50, min_words: int = 200
) -> list[Chunk]:
    """Chunks of at most `chunk_words` words; consecutive chunks share about `overlap_words`."""
    if not 0 <= overlap_words < chunk_words // 2:
        raise ValueError("overlap_words must be below half of chunk_words")
    min_words = min(min_words, chunk_words)
    sentences = _sentences(text, chunk_words - overlap_words)
    chunks: list[Chunk] = []
    current: list[_Sentence] = []
    count = 0
    carried = 0  # words in `current` that came from the previous chunk
    for sentence in sentences:
        size = len(sentence.words)
        if current and count + size > chunk_words and count > carried:
            chunks.append(_make_chunk(len(chunks), current, carried))
            current, count = _overlap(current, overlap_words)
            carried = count
        current.append(sentence)
        count += size
        if sentence.paragraph_end and count >= min_words:
            chunks.append(_make_chunk(len(chunks), current, carried))
            current, count = _overlap(current, overlap_words)
            carried = count
    if count > carried:
        chunks.append(_make_chunk(len(chunks), current, carried))
    return chunks


def _make_chunk(seq: int, sentences: list[_Sentence], carried: int) -> Chunk:
    paragraphs: list[str] = []
    line: list[str] = []
    for sentence in sentences:
        line.append(" ".join(sentence.words))
        if sentence.paragraph_end:
            paragraphs.append(" ".join(line))
            line = []
    if line:
        paragraphs.append(" ".join(line))
    words = sum(len(s.words) for s in sentences)
    return Chunk(seq=seq, text="\n\n".join(paragraphs), words=words, overlap_words=carried)


def _overlap(sentences: list[_Sentence], overlap_words: int) -> tuple[list[_Sentence], int]:
    """The trailing whole sentences with at most `overlap_words` words; when they would give
    less than half of that (a long last sentence), the last `overlap_words` words instead (a
    mid-sentence start beats losing the context)."""
    if overlap_words == 0:
        return [], 0
    kept: list[_Sentence] = []
    count = 0
    for sentence in reversed(sentences):
        if count + len(sentence.words) > overlap_words:
            break
        kept.insert(0, sentence)
        count += len(sentence.words)
    if count < overlap_words // 2:
        words = tuple(w for s in sentences for w in s.words)[-overlap_words:]
        return [_Sentence(words, sentences[-1].paragraph_end)], len(words)
    return kept, count
