"""The query log and shoppers' events in the store (store/events.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from lookalike.store import open_store
from lookalike.store.events import EventRecord, QueryRecord


def query(qid: str, results=("a", "b", "c"), **kw) -> QueryRecord:
    return QueryRecord(id=qid, at=1.0, kind=kw.pop("kind", "item"), k=len(results), results=tuple(results), **kw)


def test_queries_and_events_round_trip(store_location):
    store = open_store(store_location, create=True)
    generation = store.generations()
    store.log_queries([query("q1", item="x", where={"colour": "red"}), query("q2", kind="text", words="red shirt")])
    store.log_queries([query("q1", results=("z",))])  # logged twice: the first row is kept
    stored, unknown = store.add_events([EventRecord("q1", "impression", "a", 2.0, 0),
                                        EventRecord("q1", "click", "b", 3.0, 1),
                                        EventRecord("nope", "click", "a", 3.0, 0)])
    assert (stored, unknown) == (2, 1)
    assert store.generations() == generation  # the catalog's caches stay valid
    logged = store.logged_queries()
    assert [q.id for q in logged] == ["q1", "q2"]
    assert logged[0].results == ("a", "b", "c") and logged[0].where == {"colour": "red"} and logged[0].item == "x"
    assert logged[1].words == "red shirt"
    assert [q.id for q in store.logged_queries(with_events=["click"])] == ["q1"]
    assert [(e.kind, e.item, e.position) for e in store.events()] == [("impression", "a", 0), ("click", "b", 1)]
    assert store.event_counts() == {"impression": 1, "click": 1, "cart": 0, "queries": 2}
    store.close()


def test_concurrent_event_writers_lose_nothing(store_location):
    first = open_store(store_location, create=True)
    second = open_store(store_location)
    first.log_queries([query(f"q{i}") for i in range(10)])
    errors = []

    def writer(store, name):
        try:
            for batch in range(20):
                second_half = [EventRecord(f"q{batch % 10}", "click", f"{name}-{batch}-{j}", float(batch), j)
                               for j in range(5)]
                store.log_queries([query(f"{name}-{batch}")])
                assert store.add_events(second_half) == (5, 0)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, n)) for s, n in ((first, "one"), (second, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    counts = second.event_counts()
    assert counts["click"] == 200 and counts["queries"] == 50
    assert len({e.item for e in first.events(["click"])}) == 200
    first.close()
    second.close()


def test_a_query_log_from_before_regions_were_logged_opens_and_keeps_its_rows(store_location):
    """A ``queries`` table without its ``box`` column (the release before region replay): a read-only SQLite
    file reads its rows (no box); opened for writing, the column is added and a region's box round-trips."""
    from lookalike.store import SQLiteStore

    store = open_store(store_location, create=True)
    store.log_queries([query("old", item="x")])
    with store._begin() as cur:
        if store_location.startswith("postgresql"):
            cur.execute("ALTER TABLE queries DROP COLUMN box")
        else:  # SQLite's DROP COLUMN cannot reparse the table's commented SQL: the old table is made again
            cur.execute("CREATE TABLE queries_old (id TEXT PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, "
                        "item TEXT, photo TEXT, words TEXT, k INTEGER NOT NULL, filters TEXT NOT NULL, "
                        "results TEXT NOT NULL)")
            cur.execute("INSERT INTO queries_old SELECT id, at, kind, item, photo, words, k, filters, results "
                        "FROM queries")
            cur.execute("DROP TABLE queries")
            cur.execute("ALTER TABLE queries_old RENAME TO queries")
    store.close()
    if not store_location.startswith("postgresql"):
        old = SQLiteStore(store_location, read_only=True)
        assert [(q.id, q.box) for q in old.logged_queries()] == [("old", None)]
        old.close()
    store = open_store(store_location)
    store.log_queries([query("region", kind="region", photo="ab" * 32, box=(1, 2, 30, 40))])
    assert [(q.id, q.box) for q in store.logged_queries()] == [("old", None), ("region", (1, 2, 30, 40))]
    store.close()
