"""Statement helpers every store module shares: ``?`` placeholders for a list, lists in chunks (SQLite's limit of
bound parameters), and many rows in few statements (one round trip for many over a network)."""

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


def insert_rows(cur: Any, sql: str, rows: list[tuple], per_statement: int = 300) -> list[tuple]:
    """Insert ``rows`` by ``sql`` (``INSERT INTO table (columns) VALUES {} ...``: ``{}`` where the rows go, then
    any ``ON CONFLICT`` and ``RETURNING``), inside the caller's transaction (``cur``: the store's cursor, ``?``
    placeholders); returns what ``RETURNING`` gives (else an empty list). SQLite: multi-row ``VALUES``
    statements of ``per_statement`` rows. A cursor with an ``insert_rows`` of its own takes them instead
    (PostgreSQL: one statement of column arrays, ``unnest``)."""
    if not rows:
        return []
    own = getattr(cur, "insert_rows", None)
    if own is not None:
        return own(sql, rows)
    returned: list[tuple] = []
    for chunk in chunks(rows, per_statement):
        row = "(" + ", ".join("?" * len(chunk[0])) + ")"
        result = cur.execute(sql.format(", ".join([row] * len(chunk))), [x for r in chunk for x in r])
        if "RETURNING" in sql:
            returned += result.fetchall()
    return returned


def replace_rows(cur: Any, table: str, columns: tuple[str, ...], rows: list[tuple], key: str = "key") -> None:
    """Insert ``rows`` (``columns``, ``key`` first) into ``table``, each replacing the row of its key if there is
    one, inside the caller's transaction. SQLite: ``insert_rows`` with ``ON CONFLICT (key) DO UPDATE``. A
    cursor with a ``replace_rows`` of its own takes them instead (PostgreSQL: the keys' rows deleted, then one
    binary ``COPY``, the bulk path PostgreSQL's docs name for loading many rows)."""
    if not rows:
        return
    own = getattr(cur, "replace_rows", None)
    if own is not None:
        own(table, columns, rows, key)
        return
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    insert_rows(cur, f"INSERT INTO {table} ({', '.join(columns)}) VALUES {{}} ON CONFLICT ({key}) DO UPDATE SET "
                     f"{updates}", rows)


def where_in(cur: Any, sql: str, values: list, per_statement: int = 900) -> list[tuple]:
    """Run ``sql`` (a statement with ``IN ({})`` where the values go) over ``values`` inside the caller's
    transaction; returns the rows it gives (a ``SELECT`` or ``RETURNING``; else an empty list). SQLite: one
    statement per ``per_statement`` values (its limit of bound parameters). A cursor with a ``where_in`` of its
    own takes them instead (PostgreSQL: one statement, ``= ANY`` of one binary array)."""
    if not values:
        return []
    own = getattr(cur, "where_in", None)
    if own is not None:
        return own(sql, values)
    out: list[tuple] = []
    for chunk in chunks(values, per_statement):
        result = cur.execute(sql.format(marks(chunk)), chunk)
        if result.description is not None:
            out += result.fetchall()
    return out
