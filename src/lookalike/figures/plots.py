"""Figures from results computed elsewhere (search, evaluate, cluster): grids, maps, histograms.

Each function returns a matplotlib ``Figure`` (built without pyplot, so no global backend state and no
window); ``save`` writes PNG or SVG by the file's extension. Nothing here computes a metric, a projection
or a cluster: callers pass those in, so a figure always shows the numbers the tables report.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..catalog.query import Match
from ..core.errors import LookalikeError

log = logging.getLogger(__name__)

FORMATS = (".png", ".svg")
RIGHT, WRONG, NEUTRAL = "#2e7d32", "#c62828", "#9e9e9e"
NO_LABEL = "(no label)"
OTHER = "other"


def save(fig, out: str | Path, dpi: int = 100) -> Path:
    """Write a figure as PNG or SVG, chosen by the extension.

    Raises:
        LookalikeError: another extension, or the folder cannot be written.
    """
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise LookalikeError(f"{out}: write the figure as .png or .svg")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi, format=out.suffix.lower()[1:], bbox_inches="tight")
    except OSError as exc:
        raise LookalikeError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    return out


def png_bytes(fig, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png", bbox_inches="tight")
    return buf.getvalue()


def load_thumbnail(path: str | Path, size: int = 160) -> Image.Image | None:
    """The photo shrunk to fit ``size`` (JPEG draft decoding), or None when it cannot be read now."""
    from ..core.images import load_image

    try:
        img = load_image(path, draft_size=size)
    except LookalikeError as exc:
        log.warning("thumbnail of %s: %s", path, exc)
        return None
    img.thumbnail((size, size))
    return img


# -- grids --------------------------------------------------------------------------------------------


@dataclass
class GridRow:
    """One query and its recommendations, as ``Catalog.similar`` returned them."""

    query_id: str
    query_path: str
    query_labels: dict[str, str]
    matches: list[Match]


def grid_figure(rows: Sequence[GridRow], label: str | None = None, k: int | None = None, thumb: int = 160,
                title: str | None = None):
    """One row per query: the query photo, then its k recommendations with similarity and ``label``.

    A recommendation whose ``label`` differs from the query's is framed red and marked "wrong", an equal
    one green; without ``label`` (or a query or result without it) frames stay grey. Every row has 1 + k panels
    (empty ones where fewer matches came back), so rows line up.
    """
    from matplotlib.figure import Figure

    if not rows:
        raise LookalikeError("nothing to draw: no query items")
    k = k or max(len(r.matches) for r in rows) or 1
    fig = Figure(figsize=(1.9 * (k + 1), 2.35 * len(rows) + (0.3 if title else 0)))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, row in enumerate(rows):
        want = row.query_labels.get(label) if label else None
        _panel(axes[r][0], row.query_path, f"query {row.query_id}\n{_short(want or _first_label(row.query_labels))}",
               "#000000", thumb, bold=True)
        for j in range(k):
            ax = axes[r][j + 1]
            if j >= len(row.matches):
                ax.axis("off")
                continue
            m = row.matches[j]
            got = m.labels.get(label) if label else None
            # Unlabelled results stay grey: not a hit in the metrics, but not known to be wrong either.
            colour = NEUTRAL if want is None or (label and got is None) else (RIGHT if got == want else WRONG)
            mark = " wrong" if colour == WRONG else ""
            shown = got if label else _first_label(m.labels)
            text = f"#{m.rank} {m.id}  {m.similarity:.2f}\n{_short(shown or NO_LABEL)}{mark}"
            _panel(ax, m.path, text, colour, thumb)
    if title:
        fig.suptitle(title)
    fig.set_layout_engine("constrained")
    return fig


def _panel(ax, path: str, text: str, colour: str, thumb: int, bold: bool = False) -> None:
    img = load_thumbnail(path, thumb)
    if img is None:
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.imshow(np.asarray(img))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3 if colour != NEUTRAL else 1)
    ax.set_title(text, fontsize=7, color=colour if colour in (RIGHT, WRONG) else "black",
                 fontweight="bold" if bold else "normal")


def _first_label(labels: dict[str, str]) -> str:
    for name in ("articleType", "baseColour"):
        if labels.get(name):
            return labels[name]
    return next(iter(labels.values()), "")


def _short(text: str | None, width: int = 22) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


# -- maps ---------------------------------------------------------------------------------------------


def categories_for(values: Sequence[str | None], top: int = 12) -> tuple[list[str], list[str]]:
    """Each item's legend entry (its value, ``other`` beyond the ``top`` most common, ``(no label)``) and
    the legend order; shared with the report so both colour alike."""
    counts = Counter(v for v in values if v is not None)
    keep = [v for v, _ in counts.most_common(top)]
    kept = set(keep)
    entries = [NO_LABEL if v is None else (v if v in kept else OTHER) for v in values]
    order = keep + [e for e in (OTHER, NO_LABEL) if e in entries]
    return entries, order


def palette(order: Sequence[str]) -> dict[str, str]:
    """Colour per legend entry: tab20 for values, grey for ``other`` and ``(no label)``."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"]
    out, i = {}, 0
    for entry in order:
        if entry == OTHER:
            out[entry] = "#b0b0b0"
        elif entry == NO_LABEL:
            out[entry] = "#e0e0e0"
        else:
            out[entry] = to_hex(cmap(2 * (i % 10) + (i // 10) % 2))
            i += 1
    return out


def map_figure(coords: np.ndarray, values: Sequence[str | None], links: Sequence[tuple[int, Sequence[int]]] = (),
               title: str = "", colour_by: str = "", top: int = 12):
    """The catalog as points in 2D coloured by a label or cluster, with dotted lines from each sampled
    query (a star) to its recommendations."""
    from matplotlib.figure import Figure

    coords = np.asarray(coords, dtype=float)
    if len(coords) != len(values):
        raise LookalikeError("a map needs one label value per point")
    entries, order = categories_for(values, top)
    colours = palette(order)
    fig = Figure(figsize=(9, 7))
    ax = fig.subplots()
    for q, recs in links:
        for j in recs:
            ax.plot(*zip(coords[q], coords[j], strict=True), linestyle=":", color="#555555", linewidth=0.8, zorder=1)
    entries_arr = np.array(entries, dtype=object)
    for entry in order:
        sel = entries_arr == entry
        ax.scatter(coords[sel, 0], coords[sel, 1], s=16, color=colours[entry], label=f"{entry} ({sel.sum()})",
                   edgecolors="none", zorder=2)
    if links:
        qs = [q for q, _ in links]
        ax.scatter(coords[qs, 0], coords[qs, 1], s=90, marker="*", color="black", zorder=3,
                   label=f"sampled query ({len(qs)})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(title=colour_by or None, fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    fig.set_layout_engine("constrained")
    return fig


# -- sizes --------------------------------------------------------------------------------------------


def sizes_figure(sizes: np.ndarray, title: str = "", bins: int = 30):
    """Histograms of image widths and heights (``sizes`` is N x 2), to choose a resize knowingly."""
    from matplotlib.figure import Figure

    sizes = np.asarray(sizes).reshape(-1, 2)
    if len(sizes) == 0:
        raise LookalikeError("no readable images to plot")
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    for ax, column, name in ((axes[0], 0, "width"), (axes[1], 1, "height")):
        values = sizes[:, column]
        ax.hist(values, bins=bins, color="#4c72b0")
        ax.set_xlabel(f"{name} (pixels)")
        ax.set_ylabel("images")
        ax.set_title(f"{name}: median {np.median(values):.0f}, {values.min()}-{values.max()}", fontsize=9)
    fig.suptitle(title or f"{len(sizes)} images")
    fig.set_layout_engine("constrained")
    return fig


# -- clusters -----------------------------------------------------------------------------------------


def cluster_figure(summaries: Sequence, paths: dict[str, str], thumb: int = 120):
    """A row per cluster: its size and most common label, then photos nearest its centre."""
    from matplotlib.figure import Figure

    if not summaries:
        raise LookalikeError("no clusters to draw")
    cols = max(1, max(len(s.samples) for s in summaries))
    fig = Figure(figsize=(1.5 * cols + 1.6, 1.6 * len(summaries)))
    axes = fig.subplots(len(summaries), cols + 1, squeeze=False)
    for r, s in enumerate(summaries):
        head = axes[r][0]
        head.axis("off")
        label = f"\n{_short(s.top_label, 16)} {s.top_share:.0%}" if s.top_label else ""
        head.text(0.0, 0.5, f"cluster {s.cluster}\n{s.size} items{label}", va="center", fontsize=8,
                  transform=head.transAxes)
        for j in range(cols):
            ax = axes[r][j + 1]
            if j < len(s.samples):
                _panel(ax, paths[s.samples[j]], s.samples[j], NEUTRAL, thumb)
            else:
                ax.axis("off")
    fig.set_layout_engine("constrained")
    return fig


# -- from a catalog: gather with the library's own functions, then draw ---------------------------------


def default_label(catalog) -> str | None:
    """The label that marks right and wrong when none is named: articleType if present, else the first."""
    names = catalog.store.label_names()
    return "articleType" if "articleType" in names else (names[0] if names else None)


def grid_for_catalog(catalog, item_ids: Sequence[str], k: int = 5, label: str | None = None, where=None,
                     same_cluster: bool = False):
    """The grid of ``Catalog.similar`` for each item: exactly the recommendations a user gets.

    Raises:
        QueryError: unknown item id, bad ``k``/``where``, or an unknown ``label``.
    """
    from ..core.errors import QueryError

    if label is not None and label not in catalog.store.label_names():
        raise QueryError(f"unknown label {label!r}; labels in this catalog: "
                         f"{', '.join(catalog.store.label_names()) or 'none'}")
    rows = []
    for item_id in item_ids:
        matches = catalog.similar(item_id, k=k, where=where, same_cluster=same_cluster)
        rows.append(GridRow(item_id, catalog.item(item_id).path, catalog.labels(item_id), matches))
    return grid_figure(rows, label=label, k=k, title=f"{catalog.title}: {k} most similar items")


def map_for_catalog(catalog, method: str = "pca", colour_by: str | None = None, links: int = 20, k: int = 5,
                    seed: int = 0):
    """The catalog's 2D map (``cluster.project_2d``) with ``links`` seeded sample queries joined to their
    k nearest items (``evaluate.nearest``, the item itself and its copies left out)."""
    from ..analysis.catalog_data import load_catalog_data
    from ..analysis.cluster import project_2d
    from ..analysis.evaluate import content_group_codes, nearest

    data = load_catalog_data(catalog)
    values = data.values(colour_by) if colour_by else [None] * len(data)
    coords = project_2d(data.vectors, method, seed)
    pairs: list[tuple[int, list[int]]] = []
    if links:
        queries = np.random.default_rng(seed).permutation(len(data))[:links]
        groups = content_group_codes(data.content, len(data))
        idx, _ = nearest(data.vectors[queries], data.vectors, k, groups[queries], groups)
        pairs = [(int(q), [j for j in row.tolist() if j >= 0]) for q, row in zip(queries, idx, strict=True)]
    title = f"{catalog.title}: {method.upper()} of {len(data)} items ({catalog.config.embedder.name})"
    return map_figure(coords, values, pairs, title=title, colour_by=colour_by or "")


def clusters_for_catalog(catalog, label: str | None = None, samples: int = 6):
    """The overview of the clusters stored by ``lookalike cluster``.

    Raises:
        QueryError: the catalog has no clusters yet.
    """
    from ..analysis.catalog_data import load_catalog_data
    from ..analysis.cluster import stored_summaries

    data = load_catalog_data(catalog)
    summaries = stored_summaries(data, label, samples)
    return cluster_figure(summaries, dict(zip(data.ids, data.paths, strict=True)))
