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
