"""Zero-shot labels: `lookalike tag` scores every item against prompts, stores the best class apart from the
manifest's labels, filters and facets use it, the API marks it predicted, and --evaluate compares it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import word_options
from lookalike import Catalog
from lookalike.analysis.tag import class_vectors, evaluate_predictions, scores, tag_catalog
from lookalike.core.errors import NoTextModelError, QueryError

CLASSES = ["casual", "formal", "sports", "party"]


@pytest.fixture
def catalog(word_shop, tiny_clip):
    with Catalog.open(word_shop / "shop.lk", embedder=tiny_clip) as cat:
        cat.encoder(word_options())
        yield cat


def test_each_item_gets_the_class_its_photo_matches_best(catalog):
    templates = ["a photo of {}", "a {} outfit"]
    report = tag_catalog(catalog, "style", CLASSES, templates)
    assert report.items == 12 and sum(report.counts.values()) == 12 and report.rule == "softmax"
    enc = catalog.encoder()
    texts = enc.encode_text([t.replace("{}", c) for c in CLASSES for t in templates]).reshape(4, 2, -1).mean(axis=1)
    targets = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    np.testing.assert_allclose(class_vectors(enc, CLASSES, templates), targets, atol=1e-6)
    scale = catalog.embedder.logit_scale
    for item in catalog.ids():
        sims = targets @ catalog.vector(item)
        probs = np.exp(scale * sims - (scale * sims).max())
        probs /= probs.sum()
        got = catalog.item(item)
        assert got.labels["style"] == CLASSES[int(np.argmax(sims))]
        assert got.predicted == {"style": pytest.approx(float(probs.max()), rel=1e-4)}
        assert got.labels["colour"] == item.split("-")[0]  # the manifest's labels are untouched


def test_predictions_filter_facet_and_survive_reindexing(catalog, word_shop):
    tag_catalog(catalog, "style", CLASSES)
    styles = {i: catalog.item(i).labels["style"] for i in catalog.ids()}
    common = max(set(styles.values()), key=list(styles.values()).count)
    found = catalog.similar(next(iter(styles)), k=12, where={"style": common})
    assert {m.id for m in found} == {i for i, s in styles.items() if s == common} - {next(iter(styles))}
    assert all("style" in m.predicted and "colour" not in m.predicted for m in found)
    assert catalog.facets()["style"] == {s: list(styles.values()).count(s) for s in set(styles.values())} or \
        len(set(styles.values())) == 1
    assert "style" in catalog.store.label_names() and "style" not in catalog.store.manifest_label_names()
    catalog.add(word_shop / "photos" / "labels.csv", options=word_options())  # the manifest again
    assert {i: catalog.item(i).labels["style"] for i in catalog.ids()} == styles
    assert catalog.remove_predicted("style") == 12
    assert "style" not in catalog.item("red-rect").labels and catalog.item("red-rect").predicted == {}


def test_evaluate_against_an_existing_label(catalog):
    report = tag_catalog(catalog, "colour_guess", ["red", "green", "blue", "yellow"], ["a {} thing"], against="colour")
    ev = report.evaluation
    truth = {i: i.split("-")[0] for i in catalog.ids()}
    predicted = {i: catalog.item(i).labels["colour_guess"] for i in catalog.ids()}
    assert ev.items == 12 and ev.accuracy == pytest.approx(np.mean([truth[i] == predicted[i] for i in truth]))
    assert ev.chance_uniform == pytest.approx(0.25) and ev.chance_majority == pytest.approx(0.25)
    assert ev.unreachable == 0 and set(ev.per_class) == {"red", "green", "blue", "yellow"}


def test_evaluation_figures_on_known_predictions():
    ev = evaluate_predictions(["a", "a", "a", "b", "b", "c", None], ["a", "a", "b", "b", "a", "a", "a"],
                              ["a", "b"], "kind")
    assert ev.items == 6 and ev.accuracy == pytest.approx(3 / 6)
    # a: P 2/4 R 2/3; b: P 1/2 R 1/2; c: never predictable (not a class)
    f1_a, f1_b = 2 * (0.5 * 2 / 3) / (0.5 + 2 / 3), 0.5
    assert ev.macro_f1 == pytest.approx((f1_a + f1_b + 0) / 3)
    assert ev.confusions[0] == ("a", "b", 1) and len(ev.confusions) == 3
    assert ev.unreachable == 1 and ev.chance_majority == pytest.approx(0.5)
    assert ev.chance_uniform == pytest.approx(5 / 6 * 0.5)


def test_scores_use_the_models_own_rule():
    sims = np.array([[0.1, 0.3, 0.2]])
    best, p = scores(sims, 10.0, None)
    e = np.exp(10 * sims[0])
    assert best[0] == 1 and p[0] == pytest.approx(e[1] / e.sum())
    best, p = scores(sims, 10.0, -2.0)  # SigLIP: a sigmoid of the class's own logit
    assert p[0] == pytest.approx(1 / (1 + np.exp(-(3.0 - 2.0))))


def test_bad_tag_requests_fail_in_one_line(catalog, labelled_catalog):
    with pytest.raises(QueryError, match="'colour' is a label of the catalog's manifest.*colour_predicted"):
        tag_catalog(catalog, "colour", CLASSES)
    with pytest.raises(QueryError, match="at least two classes"):
        tag_catalog(catalog, "style", ["casual"])
    with pytest.raises(QueryError, match="no \\{\\}"):
        tag_catalog(catalog, "style", CLASSES, ["a photo"])
    with pytest.raises(QueryError, match="unknown label 'nope'"):
        tag_catalog(catalog, "style", CLASSES, against="nope")
    with pytest.raises(NoTextModelError, match="fashion-siglip"):
        tag_catalog(labelled_catalog, "style", CLASSES)


def test_the_api_marks_predicted_labels(word_shop, hub_cache, tiny_clip):
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    with Catalog.open(word_shop / "shop.lk", embedder=tiny_clip) as catalog:
        catalog.encoder(word_options())
        tag_catalog(catalog, "style", CLASSES)
        style = catalog.item("red-rect").labels["style"]
    with TestClient(create_app(ServeSettings(catalog=word_shop / "shop.lk", device="cpu"))) as client:
        item = client.get("/api/items/red-rect").json()
        assert item["labels"]["style"] == style and "style" in item["predicted"]
        assert item["labels"]["colour"] == "red" and "colour" not in item["predicted"]
        page = client.get("/api/items", params={"limit": 3, "where": f"style={style}"}).json()
        assert "style" in page["predicted_labels"] and "colour" not in page["predicted_labels"]
        assert all(it["labels"]["style"] == style for it in page["items"])
        similar = client.get("/api/items/red-rect/similar", params={"k": 3}).json()["results"]
        assert all("style" in r["predicted"] and "colour" not in r["predicted"] for r in similar)


@pytest.mark.slow
def test_tag_from_the_command_line(word_shop, clip_hub):
    env = {**os.environ, "HF_HOME": str(clip_hub), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "lookalike.cli"]
    res = subprocess.run([*cli, "tag", "--catalog", "shop.lk", "--column", "kind", "--classes-from", "shape",
                          "--template", "a {} shape", "--evaluate", "--json"], capture_output=True, text=True,
                         cwd=word_shop, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["classes"] == ["ellipse", "rect", "stripes"] and report["items"] == 12
    assert report["evaluation"]["against"] == "shape" and report["evaluation"]["chance_uniform"] == pytest.approx(1 / 3)
    table = subprocess.run([*cli, "tag", "--catalog", "shop.lk", "--column", "style", "--classes", "casual,formal"],
                           capture_output=True, text=True, cwd=word_shop, env=env, timeout=300)
    assert table.returncode == 0 and "12 items tagged 'style'" in table.stdout, table.stderr
    from lookalike import Catalog

    with Catalog.open(word_shop / "shop.lk") as catalog:  # the random tiny model may put every item in one class
        styles = catalog.facets()["style"]
    style = max(styles, key=styles.get)
    where = subprocess.run([*cli, "similar", "red-rect", "--catalog", "shop.lk", "--where", f"style={style}", "--json"],
                           capture_output=True, text=True, cwd=word_shop, env=env, timeout=300)
    assert where.returncode == 0 and all(m["labels"]["style"] == style for m in json.loads(where.stdout))
    if len(styles) == 1:  # a predicted value no item has is told like a manifest's, with the values that exist
        other = next(c for c in ("casual", "formal") if c != style)
        none = subprocess.run([*cli, "similar", "red-rect", "--catalog", "shop.lk", "--where", f"style={other}"],
                              capture_output=True, text=True, cwd=word_shop, env=env, timeout=300)
        assert none.returncode == 2 and style in none.stderr
    clash = subprocess.run([*cli, "tag", "--catalog", "shop.lk", "--column", "colour", "--classes", "a,b"],
                           capture_output=True, text=True, cwd=word_shop, env=env, timeout=300)
    assert clash.returncode == 2 and len(clash.stderr.strip().splitlines()) == 1
