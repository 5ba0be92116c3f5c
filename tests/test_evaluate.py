"""Retrieval metrics and kNN classification: hand-computed tiny cases, scikit-learn where they overlap,
and whole catalogs (leave-one-out, held-out queries, reference rows, the CLI)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import make_image, random_unit
from lookalike import Catalog, QueryError
from lookalike.analysis.evaluate import evaluate_catalog, evaluate_catalogs, evaluate_vectors, nearest
from lookalike.cli import main
from lookalike.core.config import EncodeOptions


def unit(rows) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def values(result) -> dict[str, float]:
    return {name: e.value for name, e in result.metrics.items()}


# Five items in 2D: 0 and 1 point the same way (equal vectors, different files), 2 between, 3 and 4 the
# other way; 4 has no label. Similarities from 2 to (0, 1) tie at 0.8 and to (3, 4) at 0.6.
TINY = unit([[1, 0], [1, 0], [0.8, 0.6], [0, 1], [0, 1]])
TINY_LABELS = ["a", "a", "b", "b", None]


def test_tiny_case_by_hand_with_ties_and_a_missing_label():
    r = evaluate_vectors(TINY, TINY_LABELS, k=2, bootstrap=0)
    # Neighbours (ties to the lower index): 0 -> [1, 2], 1 -> [0, 2], 2 -> [0, 1], 3 -> [4, 2].
    assert r.per_query.neighbours.tolist() == [[1, 2], [0, 2], [0, 1], [4, 2]]
    # hits: 1, 1, 0, 1 (3's hit is 2 at rank 2); R = 1 for every query.
    # precision 1/2, 1/2, 0, 1/2; recall 1, 1, 0, 1; AP 1, 1, 0, 1/2; nDCG 1, 1, 0, 1/log2(3).
    got = values(r)
    assert got["precision"] == pytest.approx(1.5 / 4)
    assert got["recall"] == pytest.approx(3 / 4)
    assert got["map"] == pytest.approx(2.5 / 4)
    assert got["ndcg"] == pytest.approx((2 + 1 / np.log2(3)) / 4)
    assert got["hit_rate"] == pytest.approx(3 / 4)
    # top-1: a, a, a (wrong), unlabelled (wrong); majority: a (tie a/b broken by summed similarity 1.0 > 0.8),
    # a, a (wrong), b (the unlabelled neighbour does not vote).
    assert got["top1_accuracy"] == pytest.approx(2 / 4)
    assert got["majority_accuracy"] == pytest.approx(3 / 4)
    # distances sqrt(2 - 2s): 0 -> (0, .632), 1 -> same, 2 -> (.632, .632), 3 -> (0, .894)
    d6, d8 = np.sqrt(2 - 2 * 0.8), np.sqrt(2 - 2 * 0.6)
    per_query = [d6 / 2, d6 / 2, d6, d8 / 2]
    assert got["mean_distance"] == pytest.approx(np.mean(per_query), abs=1e-6)
    assert got["median_distance"] == pytest.approx(np.median(per_query), abs=1e-6)
    assert r.excluded == {"unlabelled": 1, "no_relevant": 0}
    assert (r.queries, r.retrieval_queries, r.items) == (4, 4, 5)
    assert r.classification["top1"].per_class["a"].support == 2


def test_exact_duplicates_are_never_hits_nor_counted_as_relevant():
    # 0 and 1 are copies of one file (same group); 2 is another "a", 3 a "b".
    v = unit([[1, 0], [1, 0], [0.9, 0.3], [0.3, 0.9]])
    r = evaluate_vectors(v, ["a", "a", "a", "b"], k=2, base_groups=["h1", "h1", "h2", "h3"], bootstrap=0)
    nb = r.per_query.neighbours.tolist()
    assert nb[0] == [2, 3] and nb[1] == [2, 3]  # never the copy
    assert 0 not in nb[1] and 1 not in nb[0]
    # For 0 and 1 the only relevant item is 2 (the copy does not count): recall 1, precision 1/2, AP 1.
    assert r.per_query.precision[:2].tolist() == [0.5, 0.5]
    assert values(r)["recall"] == pytest.approx((1 + 1 + 1) / 3)  # 2 finds 0 or 1 first; 3 has no other b
    assert r.excluded["no_relevant"] == 1 and r.retrieval_queries == 3
    # Without groups the copy is an ordinary neighbour: it is found first.
    plain = evaluate_vectors(v, ["a", "a", "a", "b"], k=2, bootstrap=0)
    assert plain.per_query.neighbours[0, 0] == 1


def test_k_larger_than_the_class_and_than_the_catalog():
    v = unit([[1, 0], [0.95, 0.1], [0, 1], [0.1, 0.95], [0.5, 0.5]])
    labels = ["a", "a", "b", "b", "c"]
    r = evaluate_vectors(v, labels, k=3, bootstrap=0)
    # Item 0: neighbours 1 (a), 4 (c), 3 (b): R = 1 < k. Recall 1, AP 1 (normalised by min(R, k) = 1),
    # precision 1/3, nDCG 1.
    q0 = r.per_query.ids.index("0")
    assert r.per_query.neighbours[q0].tolist() == [1, 4, 3]
    assert r.per_query.precision[q0] == pytest.approx(1 / 3)
    assert r.metrics["map"].value == pytest.approx(1.0)  # every a/b query finds its partner first
    assert r.metrics["recall"].value == pytest.approx(1.0)
    assert r.excluded["no_relevant"] == 1  # "c" is alone
    # k beyond the catalog: 4 candidates per query; missing slots are -1 and precision divides by 4.
    wide = evaluate_vectors(v, labels, k=10, bootstrap=0)
    assert (wide.per_query.neighbours[:, 4:] == -1).all() and (wide.per_query.neighbours[:, :4] >= 0).all()
    assert wide.per_query.precision[q0] == pytest.approx(1 / 4)
    assert wide.metrics["recall"].value == 1.0 and wide.metrics["hit_rate"].value == 1.0


def test_nearest_agrees_with_a_full_sort_and_excludes_groups():
    v = random_unit(200, 16, seed=3)
    groups = np.arange(200)
    groups[10] = groups[11] = 5  # 10 and 11 share a group with 5
    idx, sim = nearest(v, v, 7, groups, groups)
    s = v @ v.T
    for i in (0, 5, 10, 57):
        allowed = np.flatnonzero(groups != groups[i])
        expect = allowed[np.argsort(-s[i, allowed], kind="stable")[:7]]
        assert idx[i].tolist() == expect.tolist()
        assert np.allclose(sim[i], s[i, expect], atol=1e-6)
    assert not np.isin(idx[5], [5, 10, 11]).any()


def test_against_scikit_learn_where_they_overlap():
    from sklearn.metrics import average_precision_score, ndcg_score, precision_recall_fscore_support
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    n = 60
    v = random_unit(n, 8, seed=1)
    labels = [str(x) for x in rng.integers(0, 4, n)]
    k = 5
    r = evaluate_vectors(v, labels, k=k, bootstrap=0)
    # top-1 kNN classification == scikit-learn's nearest neighbour (cosine) + precision_recall_fscore_support
    nn = NearestNeighbors(n_neighbors=2, metric="cosine").fit(v)
    first = nn.kneighbors(v, return_distance=False)[:, 1]
    pred = [labels[j] for j in first]
    p, rec, f, s = precision_recall_fscore_support(labels, pred, labels=sorted(set(labels)), zero_division=0)
    top1 = r.classification["top1"]
    assert [top1.per_class[c].precision for c in sorted(set(labels))] == pytest.approx(p.tolist())
    assert [top1.per_class[c].f1 for c in sorted(set(labels))] == pytest.approx(f.tolist())
    assert top1.macro_f1 == pytest.approx(f.mean()) and top1.macro_recall == pytest.approx(rec.mean())
    assert r.metrics["top1_accuracy"].value == pytest.approx(np.mean(np.array(pred) == np.array(labels)))
    # nDCG@k per query == scikit-learn's ndcg_score over the query's candidates (no ties in random data)
    sims = v @ v.T
    full = evaluate_vectors(v, labels, k=n, bootstrap=0)  # k >= candidates: AP@k is the full AP
    sk_ndcg, sk_ap = [], []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        truth = np.array([labels[j] == labels[i] for j in others], dtype=float)
        sk_ndcg.append(ndcg_score(truth[None], sims[i, others][None], k=k))
        sk_ap.append(average_precision_score(truth, sims[i, others]))
    assert r.metrics["ndcg"].value == pytest.approx(np.mean(sk_ndcg), abs=1e-9)
    assert full.metrics["map"].value == pytest.approx(np.mean(sk_ap), abs=1e-9)


def test_chance_row_sits_at_the_class_prior():
    rng = np.random.default_rng(2)
    n = 400
    v = random_unit(n, 8, seed=2)
    labels = ["a" if x < 0.25 else "b" for x in rng.random(n)]
    r = evaluate_vectors(v, labels, k=10, ranking="random", bootstrap=200, seed=1)
    counts = {c: labels.count(c) for c in "ab"}
    expected = np.mean([(counts[c] - 1) / (n - 1) for c in labels])  # R / candidates, averaged
    p = r.metrics["precision"]
    assert p.low < expected < p.high
    assert abs(p.value - expected) < 0.03


def test_bootstrap_intervals_are_seeded_and_optional():
    v = random_unit(80, 8, seed=4)
    labels = [str(i % 3) for i in range(80)]
    a = evaluate_vectors(v, labels, k=5, bootstrap=300, seed=7)
    b = evaluate_vectors(v, labels, k=5, bootstrap=300, seed=7)
    for name, e in a.metrics.items():
        assert e == b.metrics[name]
        assert e.low <= e.value <= e.high
    assert evaluate_vectors(v, labels, k=5, bootstrap=0).metrics["precision"].low is None


def test_bad_input_is_a_query_error():
    with pytest.raises(QueryError, match="positive"):
        evaluate_vectors(TINY, TINY_LABELS, k=0)
    with pytest.raises(QueryError, match="one label"):
        evaluate_vectors(TINY, ["a"], k=1)


# -- catalogs -----------------------------------------------------------------------------------------


@pytest.fixture
def pixels_catalog(labelled_catalog, photo_dir, tmp_path):
    """The same photos and labels as ``labelled_catalog``, embedded as raw pixels."""
    catalog = Catalog.create(tmp_path / "pixels.lk", "pixels")
    catalog.add(photo_dir / "labels.csv", images=photo_dir, options=EncodeOptions(workers=0, progress=False))
    yield catalog
    catalog.close()


def test_catalog_leave_one_out_with_reference_rows(labelled_catalog, pixels_catalog):
    own = evaluate_catalog(labelled_catalog, "colour", k=2, bootstrap=100, keep_per_query=True)
    assert [r.name for r in own] == [str(labelled_catalog.path), "chance"]  # no colorhist row for itself
    own = own[0]
    assert own.items == 13 and own.queries == 12 and own.excluded["unlabelled"] == 1
    # red-rect and red-copy are one content: neither is the other's neighbour.
    pq = own.per_query
    for item in ("red-rect", "red-copy"):
        found = {pq.base_ids[j] for j in pq.neighbours[pq.ids.index(item)]}
        assert not found & {"red-rect", "red-copy"}
    rows = evaluate_catalog(pixels_catalog, "colour", k=2, bootstrap=100)
    assert [r.name for r in rows] == [str(pixels_catalog.path), "chance", "colorhist"]
    # Colour histograms group photos by colour: far above chance.
    assert own.metrics["precision"].value > 0.9 > rows[1].metrics["precision"].value
    # The colorhist reference re-embeds the same photos with the colorhist embedder: the same figures as the
    # catalog built with it.
    assert values(rows[2]) == pytest.approx(values(own))
    assert (pixels_catalog.path / "analysis" / "colorhist.npz").is_file()
    again = evaluate_catalog(pixels_catalog, "colour", k=2, bootstrap=100)  # from the cache
    assert values(again[2]) == values(rows[2])


def test_catalog_label_errors(labelled_catalog):
    with pytest.raises(QueryError, match="unknown label 'size'.*colour, shape"):
        evaluate_catalog(labelled_catalog, "size", k=2)
    with pytest.raises(QueryError, match="no clusters yet"):
        evaluate_catalog(labelled_catalog, "cluster", k=2)
    with pytest.raises(QueryError, match="unknown reference"):
        evaluate_catalog(labelled_catalog, "colour", k=2, references=["nope"])


def test_held_out_queries(labelled_catalog, pixels_catalog, photo_dir, tmp_path):
    queries = tmp_path / "queries"
    make_image(queries / "q-red.png", color=(210, 40, 35), shape="ellipse")
    make_image(queries / "q-green.png", color=(40, 170, 70), shape="rect")
    shutil.copy(photo_dir / "yellow-rect.jpg", queries / "q-yellow.jpg")  # same bytes as a catalog photo
    make_image(queries / "q-nolabel.png", color=(30, 60, 200))
    (queries / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (queries / "q.csv").write_text("path,colour\nq-red.png,red\nq-green.png,green\nq-yellow.jpg,yellow\n"
                                   "q-nolabel.png,\nbroken.jpg,blue\n")
    rows = evaluate_catalog(labelled_catalog, "colour", k=2, queries=queries / "q.csv", bootstrap=0,
                            options=EncodeOptions(workers=0, progress=False), keep_per_query=True)
    own = rows[0]
    assert own.mode == "held-out" and own.queries == 3
    assert own.excluded == {"unlabelled": 1, "unreadable": 1, "no_relevant": 0}
    pq = own.per_query
    yellow = [pq.base_ids[j] for j in pq.neighbours[pq.ids.index("q-yellow")]]
    assert "yellow-rect" not in yellow  # its exact copy is never its own hit
    assert own.metrics["precision"].value == pytest.approx(1.0)
    assert len(rows) == 2
    ref = evaluate_catalog(pixels_catalog, "colour", k=2, queries=queries / "q.csv", bootstrap=0,
                           options=EncodeOptions(workers=0, progress=False))
    assert ref[2].name == "colorhist" and ref[2].mode == "held-out"
    assert values(ref[2]) == pytest.approx(values(own))


def test_several_catalogs_side_by_side(labelled_catalog, pixels_catalog):
    rows = evaluate_catalogs([labelled_catalog.path, pixels_catalog.path], "shape", k=3, bootstrap=0)
    assert [r.embedder for r in rows] == ["colorhist", "random ranking", "pixels"]


def test_evaluate_command_json_and_table(labelled_catalog, capsys):
    path = str(labelled_catalog.path)
    assert main(["evaluate", "--catalog", path, "--label", "colour", "--label", "shape", "-k", "2",
                 "--bootstrap", "50", "--json", "--per-class"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["label"], d["name"]) for d in data] == [("colour", path), ("colour", "chance"),
                                                       ("shape", path), ("shape", "chance")]
    assert set(data[0]["metrics"]) >= {"precision", "recall", "map", "ndcg", "hit_rate", "mean_distance"}
    assert data[0]["per_class"][0]["label"] in {"red", "green", "yellow", "blue"}
    assert main(["evaluate", "--catalog", path, "--label", "colour", "-k", "2", "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert "P@2" in table and "chance" in table and "unlabelled 1" in table
    assert main(["evaluate", "--catalog", path, "--label", "size"]) == 2
    assert "unknown label 'size'" in capsys.readouterr().err
