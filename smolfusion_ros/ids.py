"""Identifier checks shared by core/ (requests) and memory/ (the SQLite store).

A leaf module: it imports nothing from this package, so memory/ can validate session ids
without importing core/, and both layers reject a bad id with the same words.
"""

from __future__ import annotations

import re

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class RequestRejected(Exception):
    """The request is invalid or cannot be served now; str(exc) is the error for the caller."""


def validate_session_id(session_id: str, default: str = "default") -> str:
    """Return the effective session id (empty = `default`) or raise RequestRejected."""
    session_id = session_id.strip() or default
    if not SESSION_ID_PATTERN.match(session_id):
        shown = session_id if len(session_id) <= 40 else session_id[:40] + "..."
        raise RequestRejected(
            f"invalid session_id {shown!r}: use 1-64 letters, digits, '_', '-', '.' or ':'"
        )
    return session_id
