"""Figures: the structure they promise (panels, colours, lines), PNG and SVG files, and the plot command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from lookalike import LookalikeError
from lookalike.analysis.cluster import cluster_catalog
from lookalike.catalog.query import Match
from lookalike.cli import main
from lookalike.core.images import image_sizes, read_size
from lookalike.figures.plots import (
    NEUTRAL,
    RIGHT,
    WRONG,
    GridRow,
    grid_figure,
    grid_for_catalog,
    map_figure,
    save,
    sizes_figure,
)


def match(rank, path, label, sim=0.9):
    return Match(rank=rank, id=f"m{rank}", path=str(path), similarity=sim, distance=0.1,
                 labels={"colour": label} if label else {})


def frame(ax) -> str:
    from matplotlib.colors import to_hex

    return to_hex(ax.spines["left"].get_edgecolor())


def test_grid_has_one_plus_k_panels_and_marks_wrong_labels(tmp_path):
    img = make_image(tmp_path / "a.jpg")
    rows = [GridRow("q1", str(img), {"colour": "red"}, [match(1, img, "red"), match(2, img, "blue"),
                                                         match(3, img, None)]),
            GridRow("q2", str(img), {"colour": "blue"}, [match(1, img, "blue")])]
    fig = grid_figure(rows, label="colour", k=3)
    axes = fig.get_axes()
    assert len(axes) == 2 * (1 + 3)
    first = axes[:4]
    assert "query q1" in first[0].get_title()
    assert [frame(ax) for ax in first[1:]] == [RIGHT, WRONG, NEUTRAL]
    assert "wrong" in first[2].get_title() and "wrong" not in first[1].get_title()
    assert "0.90" in first[1].get_title()  # similarity shown
    assert [ax.axison for ax in axes[4:]] == [True, True, False, False]  # q2 found one match: 2 empty panels
    assert len(first[1].get_images()) == 1  # the photo


def test_save_png_and_svg_by_extension(tmp_path):
    img = make_image(tmp_path / "a.jpg")
    fig = grid_figure([GridRow("q", str(img), {}, [match(1, img, None)])], k=1)
    png = save(fig, tmp_path / "out" / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save(fig, tmp_path / "grid.svg")
    assert "<svg" in svg.read_text()[:2000]
    with pytest.raises(LookalikeError, match=".png or .svg"):
        save(fig, tmp_path / "grid.gif")


def test_map_colours_by_label_and_draws_links():
    coords = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 2]], dtype=float)
    fig = map_figure(coords, ["a", "a", "b", None, "b"], links=[(0, [1, 2]), (3, [4])], colour_by="colour")
    ax = fig.get_axes()[0]
    assert len(ax.get_lines()) == 3  # one dotted line per recommendation
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["a (2)", "b (2)", "(no label) (1)", "sampled query (2)"]
    with pytest.raises(LookalikeError):
        map_figure(coords, ["a"])


def test_sizes_from_headers_with_exif_rotation(tmp_path):
    a = make_image(tmp_path / "a.jpg", size=(100, 200))
    b = make_image(tmp_path / "b.png", size=(300, 50))
    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: shown as 200 x 120
    Image.new("RGB", (120, 200), "white").save(rotated, exif=exif)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert read_size(rotated) == (200, 120)
    sizes, failed = image_sizes([a, b, rotated, tmp_path / "bad.jpg"])
    assert sizes.tolist() == [[100, 200], [300, 50], [200, 120]]
    assert len(failed) == 1 and "bad.jpg" in failed[0][1]
    fig = sizes_figure(sizes)
    hist_axes = fig.get_axes()
    assert len(hist_axes) == 2 and [ax.get_xlabel() for ax in hist_axes] == ["width (pixels)", "height (pixels)"]
    assert sum(p.get_height() for p in hist_axes[0].patches) == 3


def test_grid_for_catalog_uses_similar(labelled_catalog):
    fig = grid_for_catalog(labelled_catalog, ["red-rect", "green-rect"], k=3, label="colour")
    axes = fig.get_axes()
    assert len(axes) == 2 * 4
    expected = [m.id for m in labelled_catalog.similar("red-rect", k=3)]
    assert [ax.get_title().split()[1] for ax in axes[1:4]] == expected


def test_plot_commands(labelled_catalog, photo_dir, tmp_path, capsys):
    path = str(labelled_catalog.path)
    assert main(["plot", "grid", "--catalog", path, "--items", "red-rect,blue-rect", "-k", "4", "--label", "colour",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size[0] > 400
    assert main(["plot", "map", "--catalog", path, "--color-by", "shape", "--links", "3",
                 "--out", str(tmp_path / "m.svg")]) == 0
    assert "<svg" in (tmp_path / "m.svg").read_text()[:2000]
    assert main(["plot", "sizes", str(photo_dir), "--out", str(tmp_path / "s.png")]) == 0
    assert "13 images, width median 96" in capsys.readouterr().out
    assert main(["plot", "clusters", "--catalog", path, "--out", str(tmp_path / "c.png")]) == 2
    assert "no clusters yet" in capsys.readouterr().err
    cluster_catalog(labelled_catalog, 3)
    assert main(["plot", "clusters", "--catalog", path, "--out", str(tmp_path / "c.png")]) == 0
    assert main(["plot", "grid", "--catalog", path, "--items", "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown item id 'nope'" in capsys.readouterr().err
