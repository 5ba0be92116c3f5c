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

import dataclasses
from collections.abc import Sequence

import numpy as np

from .query import Match
from .ranking import RRF_K, Ranking, rrf

DEFAULT_KEYWORD_WEIGHT = 1.0  # the keyword list counts as much as the vector list (plain RRF)


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
        ``text`` (any word; more and rarer words rank higher), among the product keys in ``allowed`` (None:
        all) less ``exclude_products``. ``query``: a unit vector (float32, D) to score each hit's photos
        against (``similarity`` = the best photo's cosine); without it, the first photo and similarity 0."""
        self.index  # noqa: B018 - follows the store's generations
        allowed_set = None if allowed is None else set(allowed.tolist())
        limit = k + len(exclude_products) + (k if allowed_set is not None else 0)
        while True:
            hits = self.store.keyword_search(text, limit)
            keys = [key for key, _ in hits if key not in exclude_products and key in self.products.photos_of
                    and (allowed_set is None or key in allowed_set)]
            if len(keys) >= k or len(hits) < limit:
                break
            limit *= 4
        return self._keyword_rows(keys[:k], query, by)

    def _keyword_rows(self, keys: Sequence[int], query: np.ndarray | None, by: str) -> list[Match]:
        photos = [self.products.photos_of[key] for key in keys]
        if query is None or not keys:
            picked = [(key, int(p[0]), 0.0) for key, p in zip(keys, photos, strict=True)]
        else:  # every hit's photos in one index read, one product of sums (not BLAS: see ranking.mmr)
            flat = np.concatenate(photos)
            sims = np.einsum("pd,d->p", self.index.vectors_of(flat), np.asarray(query, np.float32).reshape(-1))
            picked, start = [], 0
            for key, p in zip(keys, photos, strict=True):
                best = start + int(np.argmax(sims[start:start + len(p)]))
                picked.append((key, int(flat[best]), float(sims[best])))
                start += len(p)
        return [dataclasses.replace(m, found_by=["keyword"]) for m in self._matches(picked, by=by)]

    def fuse(self, vector_matches: Sequence[Match], text: str, fetch: int, weight: float,
             allowed: np.ndarray | None, exclude_products: set[int] | frozenset[int], by: str,
             query: np.ndarray) -> tuple[list[Match], list[float]]:
        """Vector results fused with the keyword results of ``text`` by RRF (module docstring): (the fused
        list, best first, ranks renumbered; each one's fused score scaled so that first in both lists is 1).
        ``weight`` 0: the vector results as they are."""
        vectors = [dataclasses.replace(m, found_by=["vector"]) for m in vector_matches]
        if weight <= 0:
            return vectors, [m.similarity for m in vectors]
        keywords = self.keyword_matches(text, fetch, allowed, exclude_products, by, query=query)
        by_id = {m.id: m for m in keywords}
        by_id.update({m.id: m for m in vectors})
        found: dict[str, list[str]] = {}
        for name, matches in (("vector", vectors), ("keyword", keywords)):
            for m in matches:
                found.setdefault(m.id, []).append(name)
        fused = rrf([[m.id for m in vectors], [m.id for m in keywords]], [1.0, weight], k=RRF_K)
        top = (1.0 + weight) / (RRF_K + 1)
        out = [dataclasses.replace(by_id[i], rank=rank, found_by=found[i])
               for rank, (i, _) in enumerate(fused, start=1)]
        return out, [score / top for _, score in fused]
