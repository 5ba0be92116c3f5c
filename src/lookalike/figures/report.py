"""One self-contained HTML file about a catalog: summary, metrics, per-class table, map, examples, clusters.

Everything is inside the file (photos as base64 JPEG thumbnails, figures as base64 PNG, the map as inline
SVG with a few lines of inline script), so it opens offline and can be mailed; it references no URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ..analysis.catalog_data import CatalogData, load_catalog_data
from ..analysis.cluster import cluster_catalog, project_2d, stored_summaries
from ..analysis.evaluate import (
    METRIC_NAMES,
    REFERENCES,
    Evaluation,
    evaluate_catalog,
    format_estimate,
)
from ..catalog.query import Match, distance_from_similarity
from ..core.version import __version__
from .plots import GridRow, categories_for, cluster_figure, grid_figure, load_thumbnail, palette, png_bytes

log = logging.getLogger(__name__)

MAP_SIZE = 640
MAP_THUMBS = 1500  # points with a hover thumbnail; a bigger catalog shows a seeded sample of points
EXAMPLES = 3  # queries per group: best, typical, worst

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
caption{text-align:left;font-weight:bold;margin-bottom:.3em}
.note{color:#555;font-size:.9em}
img.fig{max-width:100%}
.pt image,.pt .bg{display:none}
.pt:hover image,.pt:hover .bg{display:inline}
.pt:hover circle{stroke:#000;stroke-width:2}
.legend span{display:inline-block;margin-right:1em;font-size:.85em}
.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border-radius:50%}
"""


def build_report(catalog, out: str | Path, label: str | None = None, k: int = 5, *, method: str = "pca",
                 links: int = 20, clusters: int = 6, bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write the report for ``catalog`` to ``out`` and return its path.

    Without ``label`` the metrics, per-class table and examples are left out (they need a label).
    Clusters stored by ``lookalike cluster`` are shown; otherwise ``clusters`` k-means clusters are
    computed for the report only (not stored).

    Raises:
        QueryError: unknown label, a catalog without items.
        LookalikeError: the map method is not available; the file cannot be written.
    """
    from ..core.errors import LookalikeError, QueryError

    data = load_catalog_data(catalog)
    if len(data) == 0:
        raise QueryError(f"{catalog.name} has no embedded items; index a source first")
    rows: list[Evaluation] = []
    if label is not None:
        rows = evaluate_catalog(catalog, label, k, references=REFERENCES, bootstrap=bootstrap, seed=seed,
                                keep_per_query=True)
    colour_by = label or ("cluster" if data.clusters else None)
    values = data.values(colour_by) if colour_by else [None] * len(data)
    parts = [f"<h1>lookalike report: {_e(catalog.title)}</h1>", _summary(catalog, data, label)]
    if rows:
        parts += [_metrics_table(rows), _per_class_table(rows[0])]
    parts.append(_map_section(data, values, rows[0] if rows else None, colour_by, method, links, seed))
    if rows:
        parts.append(_examples(data, rows[0], label))
    parts.append(_clusters_section(catalog, data, label, clusters, seed))
    body = "\n".join(parts)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>lookalike report: {_e(catalog.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"{body}\n<p class=\"note\">Made by lookalike {__version__} on {stamp}.</p>\n"
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise LookalikeError(f"{out}: cannot write the report ({exc.strerror or exc})") from exc
    return out


# Hovered points come to the front, so their thumbnail is not hidden under later points.
_SCRIPT = ("document.querySelectorAll('.pt').forEach(function(g){g.addEventListener('mouseenter',"
           "function(){g.parentNode.appendChild(g);});});")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _summary(catalog, data: CatalogData, label: str | None) -> str:
    status = catalog.status(failures=0)
    rows = [("catalog", catalog.name), ("model", status.embedder.describe()),
            ("items", f"{status.items} searchable, {status.failed} failed"),
            ("labels", ", ".join(status.labels) or "(none)")]
    if data.clusters:
        rows.append(("clusters", f"{len(set(data.clusters.values()))} stored"))
    out = ["<h2>Catalog</h2>", "<table>"]
    out += [f"<tr><th>{_e(a)}</th><td>{_e(b)}</td></tr>" for a, b in rows]
    out.append("</table>")
    if label is not None:
        counts = Counter(v for v in data.values(label) if v is not None)
        missing = sum(1 for v in data.values(label) if v is None)
        top = ", ".join(f"{_e(v)} {n}" for v, n in counts.most_common(12))
        out.append(f"<p>{_e(label)}: {len(counts)} values ({top}{', ...' if len(counts) > 12 else ''}); "
                   f"{missing} items without it.</p>")
    return "\n".join(out)


def _metrics_table(rows: list[Evaluation]) -> str:
    first = rows[0]
    names = list(METRIC_NAMES)
    head = "".join(f"<th>{_e(METRIC_NAMES[n].replace('@k', f'@{first.k}'))}</th>" for n in names)
    out = [f"<h2>Metrics: {_e(first.label)}, k = {first.k}, {_e(first.mode)}</h2>",
           f"<table><tr><th>run</th><th>embedder</th><th>queries</th>{head}<th>macro F1 (top-1)</th></tr>"]
    for row in rows:
        cells = "".join(f"<td>{_e(format_estimate(row.metrics[n]))}</td>" for n in names)
        f1 = row.classification["top1"].macro_f1 if "top1" in row.classification else float("nan")
        out.append(f"<tr><td>{_e(row.name)}</td><td>{_e(row.embedder)}</td><td>{row.retrieval_queries}</td>"
                   f"{cells}<td>{f1:.3f}</td></tr>")
    out.append("</table>")
    excluded = ", ".join(f"{n} {c}" for n, c in first.excluded.items() if c)
    out.append(f"<p class=\"note\">± is half the 95 % bootstrap interval over queries. Queries: items with the "
               f"label and at least one other item of their class; not used: {_e(excluded or 'none')}. Chance "
               "ranks candidates at random; colorhist re-embeds the same photos as colour histograms.</p>")
    out += [f"<p class=\"note\">{_e(n)}</p>" for n in first.notes]
    return "\n".join(out)


def _per_class_table(row: Evaluation) -> str:
    out = [f"<h2>Per class ({_e(row.name)})</h2>",
           "<table><tr><th>class</th><th>items</th><th>queries</th><th>precision@k</th><th>recall@k</th>"
           "<th>AP@k</th><th>hit rate</th><th>top-1 precision</th><th>top-1 recall</th><th>top-1 F1</th></tr>"]
    for c in row.per_class:
        cells = [c.items, c.queries] + [_num(v) for v in (c.precision, c.recall, c.map, c.hit_rate,
                                                           c.top1.precision, c.top1.recall, c.top1.f1)]
        out.append(f"<tr><td>{_e(c.label)}</td>" + "".join(f"<td>{_e(v)}</td>" for v in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _num(v: float) -> str:
    return "-" if v is None or np.isnan(v) else f"{v:.3f}"


def _thumb_uri(path: str, size: int) -> str | None:
    img = load_thumbnail(path, size)
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _map_section(data: CatalogData, values, row: Evaluation | None, colour_by: str | None, method: str,
                 links: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    shown = np.arange(len(data))
    if len(shown) > MAP_THUMBS:
        shown = np.sort(rng.choice(len(data), MAP_THUMBS, replace=False))
    coords = project_2d(data.vectors[shown], method, seed)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    pad, size = 20, MAP_SIZE
    xy = pad + (coords - lo) / span * (size - 2 * pad)
    xy[:, 1] = size - xy[:, 1]  # y up, as in the plots
    shown_values = [values[i] for i in shown]
    entries, order = categories_for(shown_values)
    colours = palette(order)
    pos = {int(i): n for n, i in enumerate(shown)}
    lines = []
    if row is not None and row.per_query is not None and links:
        by_id = {item_id: i for i, item_id in enumerate(data.ids)}
        queries = [q for q in range(len(row.per_query.ids)) if by_id.get(row.per_query.ids[q]) in pos]
        for q in rng.permutation(queries)[:links].tolist():
            a = pos[by_id[row.per_query.ids[q]]]
            for j in row.per_query.neighbours[q].tolist():
                if j >= 0 and by_id[row.per_query.base_ids[j]] in pos:
                    b = pos[by_id[row.per_query.base_ids[j]]]
                    lines.append(f'<line x1="{xy[a, 0]:.1f}" y1="{xy[a, 1]:.1f}" x2="{xy[b, 0]:.1f}" '
                                 f'y2="{xy[b, 1]:.1f}" stroke="#555" stroke-width="0.8" stroke-dasharray="2,2"/>')
    points = []
    thumb = 96
    for n, i in enumerate(shown.tolist()):
        x, y = xy[n]
        tip = f"{data.ids[i]}: {shown_values[n] or '(no label)'}"
        uri = _thumb_uri(data.paths[i], thumb)
        image = ""
        if uri:
            ix = min(max(x + 8, 0), size - thumb)
            iy = min(max(y - thumb - 8, 0), size - thumb)
            image = (f'<rect x="{ix - 2:.1f}" y="{iy - 2:.1f}" width="{thumb + 4}" height="{thumb + 4}" '
                     f'fill="#fff" stroke="#333" class="bg"/>'
                     f'<image x="{ix:.1f}" y="{iy:.1f}" width="{thumb}" height="{thumb}" href="{uri}"/>')
        points.append(f'<g class="pt"><title>{_e(tip)}</title><circle cx="{x:.1f}" cy="{y:.1f}" r="4" '
                      f'fill="{colours[entries[n]]}"/>{image}</g>')
    legend = "".join(f'<span><i style="background:{colours[e]}"></i>{_e(e)} ({entries.count(e)})</span>'
                     for e in order)
    note = f"a seeded sample of {len(shown)} of {len(data)} items; " if len(shown) < len(data) else ""
    return "\n".join([
        f"<h2>Map ({_e(method.upper())}, coloured by {_e(colour_by or 'nothing')})</h2>",
        f'<p class="note">{note}hover a point for its photo; dotted lines join sampled queries to their '
        "recommendations.</p>",
        f'<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img" '
        f'aria-label="map of the catalog">',
        f'<rect width="{size}" height="{size}" fill="#fafafa"/>', *lines, *points, "</svg>",
        f'<div class="legend">{legend}</div>',
    ])


def _examples(data: CatalogData, row: Evaluation, label: str) -> str:
    pq = row.per_query
    if pq is None:
        return ""
    scored = np.flatnonzero(~np.isnan(pq.precision))
    if len(scored) == 0:
        return ""
    mean_sim = np.nanmean(np.where(pq.neighbours >= 0, pq.similarity, np.nan), axis=1)
    # Best: highest precision, then most confident; worst: lowest precision, then most confident (the most
    # misleading); typical: precision nearest the median.
    best = sorted(scored, key=lambda q: (-pq.precision[q], -mean_sim[q]))[:EXAMPLES]
    worst = sorted(scored, key=lambda q: (pq.precision[q], -mean_sim[q]))[:EXAMPLES]
    median = float(np.median(pq.precision[scored]))
    typical = sorted(scored, key=lambda q: (abs(pq.precision[q] - median), q))[:EXAMPLES]
    index = {item_id: i for i, item_id in enumerate(data.ids)}
    out = [f"<h2>Examples by precision@{row.k} ({_e(label)})</h2>",
           '<p class="note">Green frame: same label as the query; red: a different one.</p>']
    for title, chosen in (("Best", best), ("Typical", typical), ("Worst", worst)):
        grid_rows = []
        for q in chosen:
            qi = index[pq.ids[q]]
            matches = []
            for rank, (j, s) in enumerate(zip(pq.neighbours[q].tolist(), pq.similarity[q].tolist(), strict=True), 1):
                if j < 0:
                    continue
                b = index[pq.base_ids[j]]
                matches.append(Match(rank=rank, id=data.ids[b], path=data.paths[b], similarity=float(s),
                                     distance=distance_from_similarity(float(s)), labels=data.labels[b]))
            grid_rows.append(GridRow(data.ids[qi], data.paths[qi], data.labels[qi], matches))
        fig = grid_figure(grid_rows, label=label, k=row.k, thumb=128)
        out.append(f"<h3>{title}</h3>" + _png(fig, f"{title} queries and their recommendations"))
    return "\n".join(out)


def _png(fig, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi=72)).decode("ascii")
    return f'<img class="fig" alt="{_e(alt)}" src="{uri}">'


def _clusters_section(catalog, data: CatalogData, label: str | None, n: int, seed: int) -> str:
    if data.clusters:
        summaries = stored_summaries(data, label)
        source = "as stored by `lookalike cluster`"
    else:
        n = min(n, len(data) - 1)
        if n < 2:
            return ""
        result = cluster_catalog(catalog, n, label=label, seed=seed, store=False)
        summaries = result.clusters
        source = f"k-means with {n} clusters, computed for this report (not stored)"
    paths = dict(zip(data.ids, data.paths, strict=True))
    fig = cluster_figure(summaries, paths, thumb=96)
    return f'<h2>Clusters</h2>\n<p class="note">{_e(source)}; photos nearest each centre.</p>\n' + _png(fig, "clusters")
