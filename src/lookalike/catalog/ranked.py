"""A catalog's default ranking rules, and rules applied to a search's candidates (``ranking.py`` holds the rules
and the maths; this part holds what needs the catalog: its store, index and product tables).

A part of ``Catalog`` (``catalog.py``), which inherits it; it reads the catalog's attributes set there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .query import Match
from .ranking import META_KEY, Ranking, candidates, rerank

RULES_CHECK_S = 0.25  # a serving process sees rules set by another process within this long


class Ranked:
    """Default rules kept in the catalog's store (``rules``, ``set_rules``, ``clear_rules``) and the steps of a
    ranked search: how many candidates to fetch, which products to leave out, and the final ``rerank``."""

    def rules(self) -> Ranking:
        """The catalog's default rules (empty when none are set), read from its store at most every 0.25 s.

        Raises:
            QueryError: the stored rules cannot be read (set them again).
        """
        now = time.monotonic()
        cached = getattr(self, "_rules_cache", None)
        if cached is not None and now - cached[0] < RULES_CHECK_S:
            return cached[1]
        text = self.store.get_meta(META_KEY)
        ranking = Ranking.from_json(text)
        self._rules_cache = (now, ranking)
        return ranking

    def set_rules(self, ranking: Ranking) -> None:
        """Keep ``ranking`` as the rules every search of this catalog applies unless told otherwise. Pinned ids
        and labels are checked first.

        Raises:
            UnknownItemError: a pinned id is not a product of the catalog.
            QueryError: a rule names a label the catalog does not have.
        """
        self.check_ranking(ranking)
        self.store.set_meta(META_KEY, ranking.to_json())
        self._rules_cache = None

    def clear_rules(self) -> None:
        """Forget the catalog's default rules."""
        self.store.set_meta(META_KEY, "{}")
        self._rules_cache = None

    def _check_now(self, ranking: Ranking) -> None:
        for item_id in ranking.pin:
            self._key(item_id)
        for rule in ranking.boost + ranking.bury + ranking.exclude:
            self.check_where({rule.label: rule.value})

    def ranking_for(self, ranking: Ranking | None, rules: bool = True) -> Ranking:
        """What a search applies: the catalog's defaults (unless ``rules`` is False) with the request's on top.

        Raises:
            UnknownItemError, QueryError: as ``check_ranking`` for the request's rules.
        """
        if ranking is not None:
            self.check_ranking(ranking)
        if not rules:
            return ranking or Ranking()
        return self.rules().merged(ranking)

    def check_ranking(self, ranking: Ranking) -> None:
        """Raises UnknownItemError for a pinned id that is no product, QueryError for a label not in the catalog.
        A ranking that passed is remembered while the catalog's labels and products stay as they are (a label
        check reads the store's label names: a tenth of a second on 100k products)."""
        self.index  # noqa: B018 - follows the store's generations
        state = (self._labels_generation, self._index_generation)
        cache = getattr(self, "_checked_rankings", None)
        if cache is None or cache[0] != state:
            cache = self._checked_rankings = (state, set())
        if ranking not in cache[1]:
            self._check_now(ranking)
            if len(cache[1]) < 1000:
                cache[1].add(ranking)

    def fetch_count(self, k: int, ranking: Ranking) -> int:
        """How many candidates to fetch for k results: ``ranking.candidates(k)`` when rules or diversity act."""
        return candidates(k) if ranking.active else k

    def excluded_products(self, ranking: Ranking) -> frozenset[int]:
        """Product keys matching any ``exclude`` rule (a product with that value among its values)."""
        if not ranking.exclude:
            return frozenset()
        self.index  # noqa: B018 - follows the store's generations
        state = (self._labels_generation, self._index_generation)
        cache = getattr(self, "_excluded_cache", None)
        if cache is None or cache[0] != state:
            cache = self._excluded_cache = (state, {})
        wanted = tuple(sorted({(rule.label, rule.value) for rule in ranking.exclude}))
        found = cache[1].get(wanted)
        if found is None:  # the union of each rule's products, kept as such: no copy of it per search
            if len(cache[1]) > 200:
                cache[1].clear()
            keys: set[int] = set()
            for label, value in wanted:
                keys.update(self.store.keys_where({label: value}).tolist())
            found = cache[1][wanted] = frozenset(keys)
        return found

    def finish(self, matches: list[Match], k: int, ranking: Ranking, queries: Sequence[np.ndarray],
               by: str = "product", relevance: Sequence[float] | None = None) -> list[Match]:
        """The k results of ``ranking`` among candidates; ``queries``: the query's unit vectors (a pinned product
        not among the candidates scores its best photo against the best of them); ``relevance``: scores to
        rank by instead of the similarities (fused lists, ``keywords.py``)."""
        if not ranking.active:
            return matches[:k]
        return rerank(matches, k, ranking, vectors=self._match_vectors,
                      pinned=lambda ids: self._pinned(ids, queries, by), relevance=relevance)

    def _match_vectors(self, matches: Sequence[Match]) -> np.ndarray:
        """The matched photos' vectors (N x D float32), what diversity compares."""
        index, table = self.index, self.table
        return index.vectors_of(np.array([table.key_by_id[m.photo] for m in matches], dtype=np.int64))  # one read

    def _pinned(self, ids: Sequence[str], queries: Sequence[np.ndarray], by: str) -> dict[str, Match]:
        out = {}
        query = np.stack([np.asarray(q, np.float32).reshape(-1) for q in queries]) if len(queries) else None
        for item_id in ids:
            key = self._key(item_id)
            photos = self.products.photos_of[key]
            if query is None:
                photo, sim = int(photos[0]), 0.0
            else:
                vectors = np.stack([np.asarray(self.index.vector(int(p)), np.float32) for p in photos])
                sims = np.einsum("qd,pd->qp", query, vectors)  # not BLAS: see ranking.mmr
                best = np.unravel_index(int(np.argmax(sims)), sims.shape)
                photo, sim = int(photos[best[1]]), float(sims[best])
            out[item_id] = self._matches([(key, photo, sim)], by=by)[0]
        return out
