"""What every SQLite store of the package (memory, knowledge, personas) does the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stores import sqlite_utils when they open, so a missing one is one line
    import sqlite_utils


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
