"""The HTML report: valid, self-contained (no URL anywhere in src/href), with every promised section."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from lookalike.analysis.cluster import cluster_catalog
from lookalike.cli import main
from lookalike.figures.report import build_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Checker(HTMLParser):
    """Tags must nest and close; collects src/href values and the tags seen."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action")]

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check(text: str) -> Checker:
    assert text.startswith("<!DOCTYPE html>")
    parser = Checker()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    return parser


def test_report_is_valid_self_contained_and_complete(labelled_catalog, tmp_path):
    cluster_catalog(labelled_catalog, 4)
    out = build_report(labelled_catalog, tmp_path / "r.html", label="colour", k=2, bootstrap=50)
    text = out.read_text()
    parsed = check(text)
    assert parsed.refs and all(r.startswith("data:image/") for r in parsed.refs)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "http://" not in text and "https://" not in text
    for heading in ("Catalog", "Metrics: colour", "Per class", "Map (PCA", "Best", "Typical", "Worst", "Clusters"):
        assert f">{heading}" in text, heading
    assert ">chance</td>" in text and "13 searchable" in text  # reference row, summary
    assert text.count('<g class="pt">') == 13  # a map point with a hover photo per item
    assert parsed.tags.count("image") == 13 and "<line " in text
    assert "as stored by `lookalike cluster`" in text


def test_report_without_label_still_has_map_and_clusters(labelled_catalog, tmp_path):
    out = build_report(labelled_catalog, tmp_path / "plain.html", clusters=3)
    text = out.read_text()
    check(text)
    assert "Metrics" not in text and "Map (PCA" in text and "computed for this report" in text


@pytest.mark.slow
def test_report_command(labelled_catalog, tmp_path, capsys):
    assert main(["report", "--catalog", str(labelled_catalog.path), "--label", "shape", "--method", "tsne",
                 "--out", str(tmp_path / "r.html"), "--bootstrap", "20"]) == 0
    assert "self-contained" in capsys.readouterr().out
    check((tmp_path / "r.html").read_text())
