"""Ranking rules (boost, bury, pin, exclude, diversity) for ``recommend``: the rules of ``catalog/ranking.py``
turned into dense per-product arrays, so that a block of queries is ranked without building ``Match`` rows.

``recommend`` fetches, for each product, as many candidate products as a ranked ``Catalog.similar`` does
(``ranking.candidates(k)``: 4 k, at least k + 40), and orders them with the very function ``rerank`` uses
(``ranking.order_candidates``): boosts add to the similarity, buried products go last, MMR re-ranks with the
vectors of the photos the candidates were found by, pins come first (never a product to itself; a pin's
similarity is its best photo against the best of the product's photos, as ``Catalog.similar`` scores it).
Excluded products are left out of the candidates by ``recommend`` itself (they still get recommendations).

Each written row says which rules moved it, in the words of ``Match.rules``. The work returns a small flag per
row (``PIN``, ``DIVERSITY``); the words for boosts and buries follow from the recommended product and are
added when the rows are written (``RuleTexts``), so Ray actors send back numbers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..catalog.ranking import Ranking, boost_text, bury_text, candidates, diversity_text, order_candidates

PIN = 1  # row flag: a pinned product
DIVERSITY = 2  # row flag: MMR moved it from its place in score order


@dataclass
class RankRules:
    """The rules one product's candidates are ordered by (picklable, for Ray actors)."""

    k: int
    boost: np.ndarray | None  # dense product key -> sum of the boosts that match it (float64)
    buried: np.ndarray | None  # dense product key -> matches a bury rule
    diversity: float | None
    pins: tuple[tuple[int, np.ndarray], ...]  # (product key, its photos' vectors P x D float32), in pin order

    @property
    def pool(self) -> int:
        """Candidate products to collect before ranking: as many as the search path fetches."""
        return candidates(self.k)

    def apply(self, product: int, query_vectors: np.ndarray, found: list[tuple[int, float, int]], index
              ) -> list[tuple[int, float, int]]:
        """The k (product key, similarity, flags) rows of one query product, best first. ``query_vectors``: its
        photos' vectors (P x D float32); ``found``: candidate (product key, cosine, photo key) best first;
        ``index``: the catalog's index (the candidates' photo vectors, for diversity)."""
        pins = [(key, vecs) for key, vecs in self.pins if key != product]
        pinned = {key for key, _ in pins}
        rows = [row for row in found if row[0] not in pinned]
        out: list[tuple[int, float, int]] = []
        for key, vecs in pins[:self.k]:
            sims = np.einsum("qd,pd->qp", query_vectors, vecs)  # not BLAS: see ranking.mmr
            out.append((key, float(sims.max()) if sims.size else 0.0, PIN))
        need = self.k - len(out)
        if need <= 0 or not rows:
            return out
        keys = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        scores = np.fromiter((r[1] for r in rows), np.float64, len(rows))
        if self.boost is not None:
            scores = scores + self.boost[keys]
        buried = self.buried[keys] if self.buried is not None else np.zeros(len(rows), dtype=bool)

        def vectors(idx: np.ndarray) -> np.ndarray:
            return photo_vectors(index, np.array([rows[i][2] for i in idx.tolist()], dtype=np.int64))

        order, moved = order_candidates(scores, buried, need, self.diversity, vectors)
        out += [(rows[i][0], rows[i][1], DIVERSITY if div else 0)
                for i, div in zip(order.tolist(), moved.tolist(), strict=True)]
        return out


def photo_vectors(index, keys: np.ndarray) -> np.ndarray:
    """The index's vectors of these photo keys (N x D float32)."""
    many = getattr(index, "vectors_of", None)
    if many is not None:
        return np.asarray(many(keys), dtype=np.float32)
    return np.stack([np.asarray(index.vector(int(k)), np.float32) for k in keys.tolist()])


class RuleTexts:
    """The ``Match.rules`` words of each written row: ``["pin"]`` for a pin, otherwise the boosts and the bury
    that match the recommended product, then ``diversity LAMBDA`` where MMR moved it."""

    def __init__(self, ranking: Ranking, by_key: dict[int, tuple[str, ...]]):
        self.diversity = diversity_text(ranking.diversity) if ranking.diversity is not None else ""
        self.by_key = by_key

    def column(self, similar: np.ndarray, flags: np.ndarray) -> list[list[str]]:
        out = []
        by_key, div = self.by_key, self.diversity
        for key, flag in zip(similar.tolist(), flags.tolist(), strict=True):
            if flag & PIN:
                out.append(["pin"])
                continue
            words = list(by_key.get(key, ()))
            if flag & DIVERSITY:
                words.append(div)
            out.append(words)
        return out


def rank_rules(catalog, ranking: Ranking, k: int, size: int) -> tuple[RankRules, RuleTexts]:
    """``ranking`` (already checked and merged with the catalog's defaults) as dense arrays over the product keys
    below ``size``, and the words each recommended product's row will carry."""
    texts: dict[int, list[str]] = {}
    boost = None
    if ranking.boost:
        boost = np.zeros(size, dtype=np.float64)
        for rule in ranking.boost:
            keys = catalog.store.keys_where({rule.label: rule.value})
            keys = keys[keys < size]
            np.add.at(boost, keys, rule.weight)
            for key in keys.tolist():
                texts.setdefault(key, []).append(boost_text(rule))
    buried = None
    if ranking.bury:
        buried = np.zeros(size, dtype=bool)
        for rule in ranking.bury:
            keys = catalog.store.keys_where({rule.label: rule.value})
            keys = keys[keys < size]
            for key in keys[~buried[keys]].tolist():  # the first bury rule that matches names it
                texts.setdefault(key, []).append(bury_text(rule))
            buried[keys] = True
    pins = []
    index, products = catalog.index, catalog.products
    for item_id in dict.fromkeys(ranking.pin):
        key = products.key_by_id[str(item_id)]  # checked by catalog.ranking_for
        photos = np.array(products.photos_of[key], dtype=np.int64)
        pins.append((key, photo_vectors(index, photos)))
    rules = RankRules(k=k, boost=boost, buried=buried, diversity=ranking.diversity, pins=tuple(pins))
    return rules, RuleTexts(ranking, {key: tuple(words) for key, words in texts.items()})
