"""Offline A/B from logged clicks: replay the searches a server logged against one or more settings (a catalog
with its model; later, its ranking rules) and score each by the products shoppers clicked or added to the cart.

Judgements come from the events (``store/events.py``): a clicked product of a query is relevant (grade 1), one
added to the cart more so (grade 2). Only queries with at least one click or cart event are judged. Each is
replayed as it was asked: by item (``similar``, with its words), by words, or by an uploaded photo when the
catalog holds a photo with the same SHA-256 (the upload itself is not kept); a region search (``box``) crops
that photo, read from the catalog's copy, to the logged box and embeds the crop with the setting's model.
Queries whose photo the catalog does not hold are left out of every setting alike, and counted.

A setting is a catalog with its model and its ranking: its own default rules (``rules set``), none
(``rules=False``), or others (``ranking``, e.g. a rules file a merchandiser is weighing): the same catalog
twice, with and without rules, is an offline A/B of the rules.

Metrics (``ir-measures``, over pytrec_eval: MacAvaney et al. 2022) per setting, over the same queries:

* click MRR: mean reciprocal rank of the first clicked product in the replayed top k (``RR@k``);
* recall@k: share of a query's clicked products in the replayed top k (``R@k``);
* CTR@k: share of queries with a clicked product in the replayed top k (``Success@k``): the click-through rate
  the setting would have had at k if shoppers clicked what they clicked before.

Each setting after the first is compared with the first by a paired t-test on the per-query reciprocal ranks
(``scipy.stats.ttest_rel``). The logged answers themselves ("as served") are scored the same way, and the
observed CTR (clicked impressions / impressions) is reported beside them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..catalog import Catalog
from ..catalog.query import QueryPart
from ..catalog.ranking import Ranking
from ..core.errors import ImageError, LookalikeError, NoTextModelError, QueryError, UnknownItemError
from ..core.images import load_image
from ..core.regions import crop_region
from ..store import Store
from ..store.events import QueryRecord

CLICK_GRADES = {"click": 1, "cart": 2}
AS_SERVED = "as served"


@dataclass(frozen=True)
class Setting:
    """One arm of the offline A/B: a name, the catalog (with its model) that answers, and its ranking: the
    catalog's default rules when ``rules``, with ``ranking`` on top (as a request's rules are); neither: plain
    similarity. A new kind of arm is a new field here, read by ``replay``."""

    name: str
    catalog: Catalog
    rules: bool = True
    ranking: Ranking | None = None

    def describe(self) -> str:
        """What ranks the answers: ``rules on``, ``no rules``, or the rules given."""
        if self.ranking is not None and self.ranking.active:
            return ("default rules + " if self.rules else "") + self.ranking.describe()
        return "default rules" if self.rules else "no rules"


@dataclass
class SettingScores:
    name: str
    model: str
    queries: int
    mrr: float
    recall: float
    ctr: float
    p_value: float | None = None  # paired t-test of its reciprocal ranks against the first setting's
    ranking: str = ""  # what ranked the answers (``Setting.describe``); empty for the answers as served


@dataclass
class ClickReport:
    k: int
    judged: int  # queries with a click or cart event
    replayed: int  # of those, replayed in every setting
    skipped: dict[str, int]  # reason -> queries left out
    rows: list[SettingScores]
    impressions: int = 0
    clicked_impressions: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def observed_ctr(self) -> float | None:
        return self.clicked_impressions / self.impressions if self.impressions else None

    def to_dict(self) -> dict:
        return {"k": self.k, "judged": self.judged, "replayed": self.replayed, "skipped": self.skipped,
                "observed_ctr": self.observed_ctr, "impressions": self.impressions,
                "rows": [vars(r) for r in self.rows]}


def judgements(store: Store) -> dict[str, dict[str, int]]:
    """Query id -> clicked product id -> grade (1 click, 2 added to the cart; the highest per product)."""
    out: dict[str, dict[str, int]] = {}
    for event in store.events(CLICK_GRADES):
        graded = out.setdefault(event.query_id, {})
        graded[event.item] = max(graded.get(event.item, 0), CLICK_GRADES[event.kind])
    return out


def click_pairs(store: Store) -> list[tuple[str, str]]:
    """(product searched from, product clicked or added to the cart) of every logged "more like this" search:
    positives for ``train finetune --pairs-from events``; one pair per distinct (query item, clicked item)."""
    items = {q.id: q.item for q in store.logged_queries(with_events=CLICK_GRADES) if q.kind.startswith("item")}
    pairs = {(items[e.query_id], e.item) for e in store.events(CLICK_GRADES)
             if items.get(e.query_id) and items[e.query_id] != e.item}
    return sorted(pairs)


def replay(setting: Setting, query: QueryRecord, k: int, photos: dict[str, int] | None = None) -> list[str] | str:
    """The product ids the setting answers to a logged query, best first; or why it cannot be replayed.
    ``photos``: the catalog's photo keys by SHA-256 (``photo_keys``), for uploads and regions."""
    catalog = setting.catalog
    where = query.where or None
    ranked = {"ranking": setting.ranking, "rules": setting.rules}
    try:
        if query.kind.startswith("item"):
            return [m.id for m in catalog.similar(query.item or "", k, where, text=query.words, **ranked)]
        if query.kind in ("text", "keywords"):
            return [m.id for m in catalog.search(None, k, where, text=query.words, **ranked)]
        if query.kind.startswith(("upload", "region")):
            key = (photo_keys(catalog) if photos is None else photos).get(query.photo or "")
            if key is None:
                return "the uploaded photo is not in the catalog"
            if query.kind.startswith("region"):
                if query.box is None:
                    return "a region search logged before regions were (no box)"
                parts = catalog.image_parts([_region(catalog, key, query.box)])
            else:
                vector = catalog.store.vectors_for([key], catalog.config.embedder.dim)[key]
                parts = [QueryPart("image", np.asarray(vector, np.float32), False, "upload")]
            keywords = None
            if query.words:
                if catalog.has_text:
                    parts += catalog.text_parts([query.words])
                keywords = query.words
            return [m.id for m in catalog.search_parts(parts, k, where, keywords=keywords, **ranked)]
    except UnknownItemError:
        return "the item searched from is not in the catalog"
    except NoTextModelError:
        return "words, and the model has no text tower"
    except ImageError:
        return "the photo searched from cannot be read here"
    except QueryError as exc:
        return f"refused: {str(exc).split(';')[0]}"
    return f"{query.kind} queries are not replayed"


def _region(catalog: Catalog, key: int, box: tuple[int, int, int, int]):
    """The logged region (pixels of the upright photo) of the catalog's copy of the searched photo.

    Raises:
        ImageError: the photo cannot be read. QueryError: the box does not fit the photo.
    """
    photo = load_image(catalog.image_file(catalog.table.path_by_key[key]))
    return crop_region(photo, [float(v) for v in box])[0]


def evaluate_clicks(store: Store, settings: Sequence[Setting], k: int = 10) -> ClickReport:
    """Score ``settings`` (the first is the baseline) on the logged queries with clicks in ``store``.

    Raises:
        QueryError: no logged query has a click or cart event.
    """
    try:
        import ir_measures
        from ir_measures import RR, R, Success
    except ImportError:
        raise LookalikeError("evaluate --events needs ir-measures: pip install 'lookalike[events]'") from None
    from scipy.stats import ttest_rel

    qrels = judgements(store)
    queries = [q for q in store.logged_queries(with_events=CLICK_GRADES) if q.id in qrels]
    if not queries:
        raise QueryError(f"{store.location}: no logged search has a click or add-to-cart event yet; serve the "
                         "catalog (`lookalike serve`), let the page or your shop POST /api/events, then try again")
    runs: dict[str, dict[str, list[str]]] = {AS_SERVED: {q.id: list(q.results[:k]) for q in queries}}
    if not settings:
        raise QueryError("name at least one setting (a catalog) to replay the logged searches against")
    if len({s.name for s in settings}) != len(settings):
        raise QueryError("two settings share a name; give each arm its own")
    skipped: Counter[str] = Counter()
    uploads = any(q.kind.startswith(("upload", "region")) for q in queries)
    photos = {s.name: photo_keys(s.catalog) if uploads else {} for s in settings}
    for setting in settings:
        runs[setting.name] = {}
    for q in queries:
        answers = {s.name: replay(s, q, k, photos[s.name]) for s in settings}
        why = next((a for a in answers.values() if isinstance(a, str)), None)
        if why is not None:
            skipped[why] += 1
            continue
        for name, ids in answers.items():
            runs[name][q.id] = ids
    kept = [q.id for q in queries if q.id in runs[settings[0].name]]
    measures = [RR @ k, R @ k, Success @ k]
    judged = {qid: qrels[qid] for qid in kept}
    per_query: dict[str, dict[str, list[float]]] = {}
    rows = []
    models = {AS_SERVED: "the answers logged", **{s.name: s.catalog.config.embedder.name for s in settings}}
    rankings = {s.name: s.describe() for s in settings}
    for name, run in runs.items():
        scored = {qid: {pid: float(len(ids) - n) for n, pid in enumerate(ids)} or {"": 0.0}
                  for qid, ids in run.items() if qid in judged}
        values: dict[str, dict[str, float]] = {str(m): {} for m in measures}
        for metric in ir_measures.iter_calc(measures, judged, scored):
            values[str(metric.measure)][metric.query_id] = float(metric.value)
        per_query[name] = {m: [values[m].get(qid, 0.0) for qid in kept] for m in values}
        means = {m: float(np.mean(v)) if v else math.nan for m, v in per_query[name].items()}
        rows.append(SettingScores(name, models[name], len(kept), means[str(RR @ k)], means[str(R @ k)],
                                  means[str(Success @ k)], ranking=rankings.get(name, "")))
    if len(settings) > 1 and len(kept) > 1:
        base = per_query[settings[0].name][str(RR @ k)]
        for row in rows[2:]:
            other = per_query[row.name][str(RR @ k)]
            if np.allclose(base, other):
                row.p_value = 1.0
            else:
                row.p_value = float(ttest_rel(other, base).pvalue)
    impressions, clicked = _observed(store, k)
    return ClickReport(k=k, judged=len(queries), replayed=len(kept), skipped=dict(skipped), rows=rows,
                       impressions=impressions, clicked_impressions=clicked)


def _observed(store: Store, k: int) -> tuple[int, int]:
    """Impressions shown in the top k, and how many of them were clicked (or added to the cart)."""
    shown: set[tuple[str, str]] = set()
    for event in store.events(["impression"]):
        if event.position is None or event.position < k:
            shown.add((event.query_id, event.item))
    clicked = {(e.query_id, e.item) for e in store.events(CLICK_GRADES)}
    return len(shown), len(shown & clicked)


def photo_keys(catalog: Catalog) -> dict[str, int]:
    """SHA-256 -> key of the catalog's embedded photos."""
    return {sha: int(key) for key, _, _, sha in catalog.store.ok_items() if sha}
