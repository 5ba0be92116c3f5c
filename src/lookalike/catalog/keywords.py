"""Words as keywords: products whose titles and labels hold the words (the store's full-text index,
``store/fulltext.py``), alone or fused with the vector results by reciprocal rank fusion.

* A catalog whose model has no text tower answers words by keyword alone (``search --text``): the results'
  ``similarity`` is 0 (no query vector) and ``found_by`` is ``["keyword"]``.
* With a text tower (the model's own or an added LiT tower), the vector list (the words, and any photo or item,
  as one query vector) and the keyword list are fused: ``score = 1 / (60 + vector rank) + w / (60 + keyword
  rank)`` (Cormack, Clarke and Buettcher 2009, "Reciprocal rank fusion outperforms Condorcet and individual rank
  learning methods", SIGIR; k = 60 as there), ``w`` being the keyword weight: 0 = vectors only. The default,
  1.0, gives both lists the same say, as the paper's unweighted RRF does: a brand name the model never saw
  still reaches the top through the keyword list, and a photo-like query still ranks by looks.
* Fused results keep their cosine to the query vector in ``similarity`` (computed for keyword-only hits) and
  list the lists that found them in ``found_by``. Rules then act on the fused order: a boost adds its weight to
  the fused score scaled so that first place in both lists is 1.

A part of ``Catalog`` (``catalog.py``), which inherits it; it reads the catalog's attributes set there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from ..store import fulltext
from .query import Match, amended
from .ranking import RRF_K, Ranking, rrf

DEFAULT_KEYWORD_WEIGHT = 1.0  # the keyword list counts as much as the vector list (plain RRF)
MAX_CACHED_POSTINGS = 2_000_000  # (product, score) pairs of searched words kept in memory: about 32 MB


def keyword_weight(ranking: Ranking | None) -> float:
    """The keyword weight a search applies: the ranking's, else ``DEFAULT_KEYWORD_WEIGHT``."""
    if ranking is None or ranking.keyword_weight is None:
        return DEFAULT_KEYWORD_WEIGHT
    return float(ranking.keyword_weight)


class Keywords:
    """Keyword results and their fusion with vector results (see the module's docstring)."""

    def keyword_matches(self, text: str, k: int, allowed: np.ndarray | None = None,
                        exclude_products: set[int] | frozenset[int] = frozenset(), by: str = "product",
                        query: np.ndarray | None = None) -> list[Match]:
        """The k products (``by="photo"``: their best photos) whose titles and labels best match the words of
        ``text`` (any word; more and rarer words rank higher), among the product keys in ``allowed`` (sorted
        int64; None: all) less ``exclude_products``. ``query``: a unit vector (float32, D) to score each hit's
        photos against (``similarity`` = the best photo's cosine); without it, the first photo and similarity 0."""
        picks = self._keyword_picks(self._keyword_keys(text, k, allowed, exclude_products), query)
        return self._keyword_rows(picks, by)

    def _keyword_keys(self, text: str, k: int, allowed: np.ndarray | None,
                      exclude_products: set[int] | frozenset[int]) -> list[int]:
        """The product keys of ``keyword_matches``, best first."""
        photos_of = self.products.photos_of
        keys, scores = self.keyword_scores(text)
        if allowed is not None and len(keys):
            at = np.clip(np.searchsorted(allowed, keys), 0, max(len(allowed) - 1, 0))
            inside = allowed[at] == keys if len(allowed) else np.zeros(len(keys), bool)
            keys, scores = keys[inside], scores[inside]
        picked: list[int] = []
        step = 4 * k + 16
        for start in range(0, len(keys), step):  # best first, a slice at a time: stops at k
            for key in keys[start:start + step].tolist():
                if key in photos_of and key not in exclude_products:
                    picked.append(key)
                    if len(picked) == k:
                        return picked
        return picked

    def keyword_scores(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Every product whose labels hold a word of ``text``, best first (``store.fulltext.best``): (keys int64,
        scores float64, higher is better; ``store.fulltext.combine``). Each word's postings are kept in memory,
        sorted best first, until the catalog changes (at most
        ``MAX_CACHED_POSTINGS`` entries, least recently used first out), so a word searched before costs a
        NumPy sum, not a full-text ranking of all its matches (FTS5's bm25 scores every match whatever the
        LIMIT: about 4 ms for a word held by 5,000 products here)."""
        generations = self.store.generations()
        cache = getattr(self, "_postings_cache", None)
        if cache is None or cache[0] != generations:
            cache = self._postings_cache = (generations, OrderedDict(), [0])
        _, postings, size = cache
        lists = []
        for term in fulltext.words(text):
            found = postings.get(term)
            if found is None:
                keys, scores = self.store.keyword_postings(term)
                order = fulltext.best(keys, scores)
                found = postings[term] = (keys[order], scores[order])
                size[0] += len(found[0])
                while size[0] > MAX_CACHED_POSTINGS and len(postings) > 1:
                    _, dropped = postings.popitem(last=False)
                    size[0] -= len(dropped[0])
            else:
                postings.move_to_end(term)
            lists.append(found)
        if len(lists) == 1:
            return lists[0]
        keys, scores = fulltext.combine(lists)
        order = fulltext.best(keys, scores)
        return keys[order], scores[order]

    def _keyword_picks(self, keys: Sequence[int], query: np.ndarray | None) -> list[tuple[int, int, float]]:
        """(product key, best photo key, cosine to ``query``) of each product key; without a query, the first
        photo and 0."""
        photos_of = self.products.photos_of
        photos = [photos_of[key] for key in keys]
        if query is None or not keys:
            return [(key, int(p[0]), 0.0) for key, p in zip(keys, photos, strict=True)]
        # every hit's photos in one index read, one product of sums (not BLAS: see ranking.mmr)
        flat = np.concatenate(photos)
        sims = np.einsum("pd,d->p", self.index.vectors_of(flat), np.asarray(query, np.float32).reshape(-1))
        if len(flat) == len(keys):  # one photo each
            return list(zip(keys, flat.tolist(), sims.tolist(), strict=True))
        picked, start = [], 0
        for key, p in zip(keys, photos, strict=True):
            best = start + int(np.argmax(sims[start:start + len(p)]))
            picked.append((key, int(flat[best]), float(sims[best])))
            start += len(p)
        return picked

    def _keyword_rows(self, picks: Sequence[tuple[int, int, float]], by: str) -> list[Match]:
        rows = self._matches(picks, by=by)
        for m in rows:  # new rows: their list is theirs
            m.found_by.append("keyword")
        return rows

    def fuse(self, vector_matches: Sequence[Match], text: str, fetch: int, weight: float,
             allowed: np.ndarray | None, exclude_products: set[int] | frozenset[int], by: str,
             query: np.ndarray) -> tuple[list[Match], list[float]]:
        """Vector results fused with the keyword results of ``text`` by RRF (module docstring): (the first
        ``fetch`` of the fused list, best first, ranks renumbered; each one's fused score scaled so that first
        in both lists is 1). ``weight`` 0: the vector results as they are. Result rows are made only for the
        keyword hits that reach the fused list."""
        if weight <= 0:
            return ([amended(m, found_by=["vector"]) for m in vector_matches],
                    [m.similarity for m in vector_matches])
        vectors = list(vector_matches)
        picks = self._keyword_picks(self._keyword_keys(text, fetch, allowed, exclude_products), query)
        table, products = self.table, self.products
        keyword_ids = [table.id_by_key[photo] if by == "photo" else products.id_by_key[product]
                       for product, photo, _ in picks]
        found: dict[str, list[str]] = {}
        for name, ids in (("vector", [m.id for m in vectors]), ("keyword", keyword_ids)):
            for i in ids:
                found.setdefault(i, []).append(name)
        fused = rrf([[m.id for m in vectors], keyword_ids], [1.0, weight], k=RRF_K)[:fetch]
        by_id = {m.id: m for m in vectors}
        wanted = {i for i, _ in fused} - by_id.keys()
        by_id.update((m.id, m) for m in self._matches([p for i, p in zip(keyword_ids, picks, strict=True)
                                                       if i in wanted], by=by))
        top = (1.0 + weight) / (RRF_K + 1)
        out = []
        for rank, (i, _) in enumerate(fused, start=1):  # rows of this search only: numbered in place
            m = by_id[i]
            m.__dict__["rank"] = rank
            m.found_by[:] = found[i]
            out.append(m)
        return out, [score / top for _, score in fused]
