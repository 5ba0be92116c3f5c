"""`lookalike evaluate --events`: logged searches replayed and scored by their clicks, side by side for two
settings, on small catalogs whose answers are known."""

from __future__ import annotations

import json

import pytest

from lookalike import Catalog, EncodeOptions
from lookalike.analysis.clicks import Setting, evaluate_clicks
from lookalike.cli import main
from lookalike.store.events import EventRecord, QueryRecord


def build(path, photo_dir, model: str) -> str:
    with Catalog.create(path, model) as catalog:
        catalog.add(photo_dir, options=EncodeOptions(workers=0, progress=False))
    return str(path)


def log_clicks(catalog: Catalog, k: int = 4) -> list[list[str]]:
    """Three clicked searches with known reciprocal ranks 1, 1/3 and 0 in this catalog, one region search of a
    photo the catalog does not hold (not replayed), one search without clicks; the answers as served are logged
    reversed."""
    answers = [[m.id for m in catalog.similar(item, k)] for item in ("red-rect", "green-ellipse", "blue-rect")]
    queries = [QueryRecord(f"q{n}-aaaaaaaaaaaaaaaaaa", float(n), "item", k, tuple(reversed(ids)),
                           item=item) for n, (item, ids) in enumerate(zip(
                               ("red-rect", "green-ellipse", "blue-rect"), answers, strict=True))]
    queries += [QueryRecord("q3-aaaaaaaaaaaaaaaaaa", 3.0, "region", k, tuple(answers[0]), photo="0" * 64,
                            box=(0, 0, 8, 8)),
                QueryRecord("q4-aaaaaaaaaaaaaaaaaa", 4.0, "item", k, tuple(answers[0]), item="red-rect")]
    catalog.store.log_queries(queries)
    far = next(i for i in catalog.store.items() if i not in answers[2] and i != "blue-rect")
    catalog.store.add_events([
        EventRecord(queries[0].id, "impression", answers[0][0], 5.0, 3),
        EventRecord(queries[0].id, "click", answers[0][0], 5.0, 3),
        EventRecord(queries[1].id, "cart", answers[1][2], 6.0, 1),
        EventRecord(queries[2].id, "click", far, 7.0),
        EventRecord(queries[3].id, "click", answers[0][0], 8.0),
        EventRecord(queries[4].id, "impression", answers[0][1], 9.0, 1),
    ])
    return answers


def test_click_mrr_recall_and_ctr_are_known(tmp_path, photo_dir):
    path = build(tmp_path / "hist.lk", photo_dir, "colorhist")
    with Catalog.open(path) as catalog:
        log_clicks(catalog)
        report = evaluate_clicks(catalog.store, [Setting("this", catalog), Setting("same again", catalog)], k=4)
    assert (report.judged, report.replayed) == (4, 3)
    assert report.skipped == {"the uploaded photo is not in the catalog": 1}
    served, this, again = report.rows
    assert this.mrr == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert this.recall == pytest.approx(2 / 3) and this.ctr == pytest.approx(2 / 3)
    # as served, the lists were reversed: ranks 4 and 2 (1/2 + 1/4), the third clicked nothing shown
    assert served.mrr == pytest.approx((1 / 4 + 1 / 2 + 0) / 3)
    assert again.mrr == this.mrr and again.p_value == 1.0
    assert (report.impressions, report.clicked_impressions) == (2, 1)


def test_evaluate_events_compares_two_catalogs_from_the_command_line(tmp_path, photo_dir, capsys):
    first = build(tmp_path / "hist.lk", photo_dir, "colorhist")
    second = build(tmp_path / "pixels.lk", photo_dir, "pixels")
    with Catalog.open(first) as catalog:
        log_clicks(catalog)
    assert main(["evaluate", "--events", "--catalog", first, "--against", second, "-k", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in report["rows"]]
    assert names == ["as served", "this catalog", f"against {second}"]
    assert report["rows"][1]["mrr"] == pytest.approx(4 / 9)
    assert 0.0 <= report["rows"][2]["p_value"] <= 1.0
    assert main(["evaluate", "--events", "--catalog", first, "--against", second, "-k", "4"]) == 0
    table = capsys.readouterr().out
    assert "click MRR" in table and "0.444" in table and "not replayed: the uploaded photo is not" in table


def test_evaluate_events_without_clicks_says_what_to_do(tmp_path, photo_dir, capsys):
    path = build(tmp_path / "hist.lk", photo_dir, "colorhist")
    assert main(["evaluate", "--events", "--catalog", path]) == 2
    err = capsys.readouterr().err
    assert "no logged search has a click" in err and "POST /api/events" in err


@pytest.mark.slow
def test_click_pairs_feed_finetune_as_positives(tmp_path, photo_dir):
    """(query item, clicked item) pairs from the events train a tiny model (the contrastive pair term runs and
    the record counts the pairs)."""
    from conftest import TINY_MODEL
    from lookalike.analysis.clicks import click_pairs
    from lookalike.models.modelfile import read_meta
    from lookalike.train.common import TrainOptions
    from lookalike.train.finetune import FinetuneConfig, pair_contrastive, train_finetune
    from lookalike.train.pack import Pack, pack_source

    path = build(tmp_path / "hist.lk", photo_dir, "colorhist")
    with Catalog.open(path) as catalog:
        answers = log_clicks(catalog)
        pairs = click_pairs(catalog.store)
    assert ("red-rect", answers[0][0]) in pairs and ("green-ellipse", answers[1][2]) in pairs
    assert all(a != b for a, b in pairs)
    rows = ["path,shape"] + [f"{p.name},{p.stem.split('-')[1]}" for p in sorted(photo_dir.glob("*.jpg"))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    pack_source(tmp_path / "labels.csv", tmp_path / "p.pack", size=32, images=photo_dir)
    pack = Pack.open(tmp_path / "p.pack")
    where = {pid: n for n, pid in enumerate(pack.ids)}
    positions = tuple((where[a], where[b]) for a, b in pairs)
    train_finetune(pack, tmp_path / "ft.lkm", backbone=TINY_MODEL, weights="random",
                   config=FinetuneConfig(labels=("shape",), unfreeze="all", dim=8, hidden=16, pairs=positions),
                   options=TrainOptions(epochs=2, batch_size=8, lr=1e-2, val_fraction=0.3, patience=0))
    assert read_meta(tmp_path / "ft.lkm").training["config"]["pairs"] == len(positions)

    import torch

    a = torch.eye(4)
    assert pair_contrastive(a, a) < pair_contrastive(a, a.roll(1, dims=0))  # matching pairs score a lower loss


def reciprocal_rank(ids: list[str], clicked: set[str]) -> float:
    return next((1 / n for n, pid in enumerate(ids, start=1) if pid in clicked), 0.0)


def test_a_region_search_is_replayed_on_the_catalogs_copy_of_its_photo(tmp_path, photo_dir):
    """A logged region (box in pixels of the photo, the photo's SHA-256) is cropped from the catalog's copy and
    searched with each setting's model: the replay scores what searching that crop answers."""
    import hashlib

    from PIL import Image

    path = build(tmp_path / "hist.lk", photo_dir, "colorhist")
    photo = photo_dir / "blue-stripes.jpg" if (photo_dir / "blue-stripes.jpg").exists() else next(
        photo_dir.rglob("blue-stripes.jpg"))
    with Image.open(photo) as im:
        width, height = im.size
    box = (0, 0, width // 2, height)
    with Catalog.open(path) as catalog:
        with Image.open(photo) as im:
            direct = [m.id for m in catalog.search(im.convert("RGB").crop(box), k=4)]
        clicked = direct[2]
        query = QueryRecord("q5-aaaaaaaaaaaaaaaaaa", 5.0, "region", 4, tuple(direct),
                            photo=hashlib.sha256(photo.read_bytes()).hexdigest(), box=box)
        catalog.store.log_queries([query])
        catalog.store.add_events([EventRecord(query.id, "click", clicked, 6.0, 2)])
        assert catalog.store.logged_queries()[0].box == box  # the box survives the store
        report = evaluate_clicks(catalog.store, [Setting("this", catalog)], k=4)
    assert report.replayed == 1 and report.skipped == {}
    assert report.rows[1].mrr == pytest.approx(1 / 3)


def test_rules_on_and_off_are_two_arms_of_the_same_catalog(tmp_path, photo_dir, capsys):
    """The catalog's default rules pin a product: replayed with them, every search shows it first; the arm
    without rules answers as plain similarity; a rules file is a third arm, instead of the defaults."""
    from lookalike.catalog.ranking import Ranking

    path = build(tmp_path / "hist.lk", photo_dir, "colorhist")
    with Catalog.open(path) as catalog:
        answers = log_clicks(catalog)
        clicked = {e.query_id[:2]: {e.item} for e in catalog.store.events(["click", "cart"])}
        pinned = next(i for i in sorted(catalog.store.items()) if i not in answers[0] + answers[1]
                      and i not in ("red-rect", "green-ellipse", "blue-rect") and {i} not in clicked.values())
        catalog.set_rules(Ranking.parse(pin=[pinned]))
        with_rules = [[m.id for m in catalog.similar(item, 4)] for item in ("red-rect", "green-ellipse", "blue-rect")]
        assert with_rules[0][0] == pinned
        report = evaluate_clicks(catalog.store, [Setting("rules", catalog),
                                                 Setting("no rules", catalog, rules=False)], k=4)
    _, ruled, plain = report.rows
    assert plain.mrr == pytest.approx((1 + 1 / 3 + 0) / 3) and plain.ranking == "no rules"
    expected = sum(reciprocal_rank(ids, clicked[f"q{n}"]) for n, ids in enumerate(with_rules)) / 3
    assert ruled.mrr == pytest.approx(expected) and ruled.mrr < plain.mrr and ruled.ranking == "default rules"
    (tmp_path / "bury.toml").write_text(f'pin = ["{pinned}"]\n')
    assert main(["evaluate", "--events", "--catalog", path, "--against-no-rules", "--against-rules",
                 str(tmp_path / "bury.toml"), "-k", "4", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["this catalog"]["mrr"] == pytest.approx(expected)
    assert rows["this catalog, no rules"]["mrr"] == pytest.approx(plain.mrr)
    assert rows["this catalog, rules of bury.toml"]["mrr"] == pytest.approx(expected)
    assert rows["this catalog, rules of bury.toml"]["ranking"] == f"pin {pinned}"
    (tmp_path / "bad.toml").write_text('pin = ["no-such-product"]\n')
    assert main(["evaluate", "--events", "--catalog", path, "--against-rules", str(tmp_path / "bad.toml")]) != 0
    assert "no-such-product" in capsys.readouterr().err
