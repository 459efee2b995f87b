"""Text out of an uploaded document (txt, md, pdf), with bounded size and clear errors.

Every failure is a DocumentError whose message says what is wrong with the file ("not a PDF",
"empty", "binary", "too many pages"), ready to be returned to a caller as it is.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import PurePath

KINDS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".pdf": "pdf"}
_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,128}$")


class DocumentError(ValueError):
    """The document cannot be used; str(exc) says why, for the person who uploaded it."""


@dataclass(frozen=True)
class DocumentLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pages: int = 500
    max_chars: int = 5_000_000


@dataclass(frozen=True)
class ExtractedDocument:
    name: str
    kind: str
    text: str
    pages: int  # 0 for text files


def document_kind(name: str) -> str:
    """'txt', 'md' or 'pdf' from the file name; DocumentError for anything else."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in KINDS:
        raise DocumentError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}; use .txt, .md or .pdf"
        )
    return KINDS[suffix]


def check_name(name: str) -> str:
    """A document name is a plain file name (no directories, no control characters)."""
    name = name.strip()
    if not _NAME.match(name) or name in (".", ".."):
        raise DocumentError(
            f"invalid document name {name[:60]!r}: use a plain file name of 1-128 characters"
        )
    return name


def extract(name: str, data: bytes, limits: DocumentLimits | None = None) -> ExtractedDocument:
    """The document's text. Raises DocumentError for a bad, empty, binary or oversized file."""
    limits = limits or DocumentLimits()
    name = check_name(name)
    kind = document_kind(name)
    if len(data) > limits.max_bytes:
        raise DocumentError(
            f"{name}: {len(data) / 1e6:.1f} MB is over the limit of {limits.max_bytes / 1e6:.1f} MB"
        )
    if not data.strip():
        raise DocumentError(f"{name}: the file is empty")
    if kind == "pdf":
        text, pages = _pdf_text(name, data, limits)
    else:
        text, pages = _plain_text(name, data), 0
        if kind == "md":
            text = markdown_to_text(text)
    text = _tidy(text)
    if not text.strip():
        raise DocumentError(f"{name}: no text in the file")
    if len(text) > limits.max_chars:
        raise DocumentError(
            f"{name}: {len(text)} characters of text is over the limit of {limits.max_chars}"
        )
    return ExtractedDocument(name=name, kind=kind, text=text, pages=pages)


def _plain_text(name: str, data: bytes) -> str:
    if data.startswith(b"%PDF-"):
        raise DocumentError(f"{name}: this is a PDF; give it a .pdf name")
    if b"\x00" in data[:65536]:
        raise DocumentError(f"{name}: binary data, not a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{name}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8"
        ) from None
    sample = text[:65536]
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\n\r\t\f")
    if controls > len(sample) * 0.01:
        raise DocumentError(f"{name}: binary data, not a text file")
    return text


def _pdf_text(name: str, data: bytes, limits: DocumentLimits) -> tuple[str, int]:
    if not data.lstrip()[:5] == b"%PDF-":
        raise DocumentError(f"{name}: not a PDF (the file does not start with %PDF-)")
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DocumentError(
            "PDF support is not installed: pip install -r requirements/knowledge.txt (pypdf)"
        ) from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{name}: the PDF is encrypted")
        pages = len(reader.pages)
        if pages > limits.max_pages:
            raise DocumentError(f"{name}: {pages} pages is over the limit of {limits.max_pages}")
        texts = []
        total = 0
        for page in reader.pages:
            page_text = page.extract_text() or ""
            total += len(page_text)
            if total > limits.max_chars:
                raise DocumentError(
                    f"{name}: more than {limits.max_chars} characters of text (the limit)"
                )
            texts.append(page_text)
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError(f"{name}: cannot read the PDF: {exc}") from None
    if not any(t.strip() for t in texts):
        raise DocumentError(f"{name}: the PDF has no extractable text (a scan without OCR?)")
    # Pages end paragraphs: a chunk may span a page break but a sentence rarely does.
    return "\n\n".join(t.strip() for t in texts if t.strip()), pages


_MD_RULES = (
    (re.compile(r"^```.*$", re.M), ""),  # code fences (the code itself stays)
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> link text
    (re.compile(r"^\s{0,3}#{1,6}\s*(.*?)\s*#*\s*$", re.M), r"\1."),  # headings end a sentence
    (re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.M), ""),  # list markers
    (re.compile(r"^\s*>\s?", re.M), ""),  # block quotes
    (re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # emphasis, inline code
    (re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$", re.M), ""),  # horizontal rules
    (re.compile(r"<[^>\n]+>"), ""),  # inline HTML tags
)


def markdown_to_text(text: str) -> str:
    """Markdown reduced to its words: what a reader sees, not the markup."""
    for pattern, replacement in _MD_RULES:
        text = pattern.sub(replacement, text)
    return text.replace("..\n", ".\n")


def _tidy(text: str) -> str:
    # Keep paragraph breaks (blank lines): the chunker ends chunks there.
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = re.sub(r"-\n(?=[a-z])", "", text)  # words hyphenated across PDF lines
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
