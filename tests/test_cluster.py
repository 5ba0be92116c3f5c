"""k-means clusters: planted clusters are recovered, n is chosen by silhouette, clusters are stored per item
and drive ``similar --same-cluster``; 2D projections for maps."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lookalike import LookalikeError, QueryError
from lookalike.analysis.cluster import choose_n, cluster_catalog, kmeans, project_2d, purity
from lookalike.cli import main
from lookalike.core.config import EncodeOptions


def planted(n_per: int = 40, centres: int = 3, dim: int = 16, spread: float = 0.15, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    truth = np.repeat(np.arange(centres), n_per)
    x = c[truth] + spread * rng.standard_normal((len(truth), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def test_kmeans_recovers_planted_clusters():
    x, truth = planted()
    found, centres, _ = kmeans(x, 3, seed=0)
    assert adjusted_rand_score(truth, found) == pytest.approx(1.0)
    assert centres.shape == (3, 16)


def test_auto_chooses_the_planted_number_by_silhouette():
    x, truth = planted(centres=4, n_per=30, seed=1)
    best, scores = choose_n(x, 2, 7)
    assert best == 4 and sorted(scores) == [2, 3, 4, 5, 6, 7]
    assert scores[4] == max(scores.values())


def test_purity_by_hand():
    # cluster 0: a a b -> 2; cluster 1: b b -> 2; cluster 2: only unlabelled -> nothing. 4 of 5 labelled.
    assert purity([0, 0, 0, 1, 1, 2], ["a", "a", "b", "b", "b", None]) == pytest.approx(4 / 5)
    assert purity([0, 1], ["a", "b"]) == 1.0


def test_bad_cluster_counts():
    x, _ = planted(n_per=2, centres=2)
    with pytest.raises(QueryError, match="at least 2"):
        kmeans(x, 1)
    with pytest.raises(QueryError, match="only 4 distinct"):
        kmeans(x, 5)


def test_catalog_clusters_are_stored_and_recommend_within(labelled_catalog, photo_dir):
    cat = labelled_catalog
    with pytest.raises(QueryError, match="no clusters yet"):
        cat.similar("red-rect", k=3, same_cluster=True)
    result = cluster_catalog(cat, 4, label="colour")
    assert result.n == 4 and sum(c.size for c in result.clusters) == 13
    clusters = cat.clusters()
    colours = [i.rsplit("/", 1)[-1].split("-")[0] for i in clusters]  # blue-stripes has no label row
    assert adjusted_rand_score(colours, list(clusters.values())) == pytest.approx(1.0)  # one colour each
    assert result.purity == pytest.approx(1.0)
    assert {c.top_label for c in result.clusters} == {"red", "green", "blue", "yellow"}
    mine = clusters["green-rect"]
    within = cat.similar("green-rect", k=10, same_cluster=True)
    assert within and all(clusters[m.id] == mine for m in within)
    assert len(within) == 2  # green-ellipse and green-stripes
    both = cat.similar("red-rect", k=10, same_cluster=True, where={"shape": "stripes"})
    assert [m.id for m in both] == ["shoes/red-stripes"]
    # Re-indexing the manifest with changed labels keeps the clusters (they are not labels).
    (photo_dir / "labels.csv").write_text((photo_dir / "labels.csv").read_text().replace(",rect", ",box"))
    cat.add(photo_dir / "labels.csv", images=photo_dir, options=EncodeOptions(workers=0, progress=False))
    assert cat.clusters() == clusters and cat.labels("green-rect")["shape"] == "box"


def test_items_added_after_clustering_are_told_to_recluster(labelled_catalog, photo_dir, tmp_path):
    from conftest import make_image

    cluster_catalog(labelled_catalog, 2)
    more = tmp_path / "more"
    make_image(more / "purple.jpg", color=(120, 30, 160))
    labelled_catalog.add(more, options=EncodeOptions(workers=0, progress=False))
    with pytest.raises(QueryError, match="added after the last clustering"):
        labelled_catalog.similar("purple", k=2, same_cluster=True)


def test_cluster_command(labelled_catalog, capsys):
    path = str(labelled_catalog.path)
    assert main(["cluster", "--catalog", path, "--auto", "--range", "2:6", "--label", "colour", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 2 <= data["n"] <= 6 and set(data["scores"]) == {"2", "3", "4", "5", "6"}
    assert main(["cluster", "--catalog", path, "-n", "4", "--label", "colour"]) == 0
    out = capsys.readouterr().out
    assert "4 clusters of 13 items" in out and "purity against colour 1.000" in out
    assert main(["similar", "green-rect", "--catalog", path, "--same-cluster", "--json"]) == 0
    assert {m["labels"].get("colour") for m in json.loads(capsys.readouterr().out)} == {"green"}
    assert main(["evaluate", "--catalog", path, "--label", "cluster", "-k", "2", "--no-reference", "--json",
                 "--bootstrap", "0"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["metrics"]["precision"]["value"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        main(["cluster", "--catalog", path])  # -n or --auto is required


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projections(method):
    x, _ = planted(n_per=10)
    xy = project_2d(x, method)
    assert xy.shape == (30, 2) and np.isfinite(xy).all()


def test_umap_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    x, _ = planted(n_per=10)
    with pytest.raises(LookalikeError, match="pip install 'lookalike\\[umap\\]'"):
        project_2d(x, "umap")
    with pytest.raises(LookalikeError, match="unknown map method"):
        project_2d(x, "mds")
