"""Statement helpers every store module shares: ``?`` placeholders for a list, lists in chunks (SQLite's limit of
bound parameters), and many rows in multi-row ``VALUES`` statements (one round trip for many over a network)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def marks(values) -> str:
    """``?,?,?``: one placeholder per value."""
    return ",".join("?" * len(values))


def chunks(values: list, size: int) -> Iterator[list]:
    """``values`` in consecutive slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def insert_rows(cur: Any, sql: str, rows: list[tuple], per_statement: int = 300) -> None:
    """Rows in multi-row ``VALUES`` statements (``sql`` has ``{}`` where they go), inside the caller's transaction
    (``cur``: the store's cursor, ``?`` placeholders)."""
    for chunk in chunks(rows, per_statement):
        row = "(" + ", ".join("?" * len(chunk[0])) + ")"
        cur.execute(sql.format(", ".join([row] * len(chunk))), [x for r in chunk for x in r])
