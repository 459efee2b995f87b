"""What every SQLite store of the package (memory, knowledge, personas) does the same way."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sqlite_utils is imported when a store opens: a missing one is one line
    from pathlib import Path

    import sqlite_utils


def open_database(path: Path, synchronous: str) -> sqlite_utils.Database:
    """Open (creating its folder) a store's SQLite file the one way every store does: WAL, the
    given synchronous level, a 10 s busy timeout, autocommit (transactions are explicit), and
    usable from any thread (each store serialises its own writes)."""
    import sqlite_utils  # here, not at import: the stores report a missing one in one line

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10.0, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=10000")
    return db


@contextmanager
def immediate_transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """Run the block in one BEGIN IMMEDIATE transaction, rolled back on any exception.

    IMMEDIATE takes the write lock up front: a deferred transaction that upgrades from read to
    write fails at once with "database is locked" when another process wrote in between,
    instead of waiting for busy_timeout.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
