"""Queries: photos, words, items, for and against; answers that are products at their best photo.

A part of ``Catalog`` (``catalog.py``), which inherits it; it reads the catalog's attributes set there.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import (
    QueryError,
)
from ..core.images import ImageInput, content_hash
from .dedupe import nearest_distinct
from .keywords import keyword_weight
from .products import (
    check_by,
    matching_variants,
    merge_best,
)
from .query import (
    Match,
    QueryPart,
    QueryWeights,
    Where,
    check_k,
    combine,
    match_rows,
    parse_where,
)
from .ranking import RRF_K, Ranking, candidates

log = logging.getLogger(__name__)


class Searching:
    """Search by photo, words or items (each for or against), ``similar``, and ``nearest``: FAISS over the
    photos, grouped into products at their best photo (``catalog.products``)."""

    def search(self, image: ImageInput | Sequence[ImageInput] | None = None, k: int = 10, where: Where = None,
               dedupe: bool = False, *, text: str | Sequence[str] | None = None, items: Sequence[str] = (),
               not_items: Sequence[str] = (), not_text: str | Sequence[str] | None = None,
               not_images: ImageInput | Sequence[ImageInput] | None = None,
               weights: QueryWeights | Mapping[str, float] | Sequence[str] | None = None,
               min_similarity: float | None = None, by: str = "product", ranking: Ranking | None = None,
               rules: bool = True) -> list[Match]:
        """The k catalog products (``by="photo"``: photos) most like a query: a photo (a path, bytes or a PIL
        image), words (``text``, for a catalog whose model has a text tower), catalog ``items``, or any mix of
        them, each also as something to avoid (``not_images``, ``not_text``, ``not_items``). A mix is one vector
        (``query.combine``: a weighted sum of unit vectors, renormalised; ``weights`` per kind). Items named in
        the query and their exact copies are never results. ``dedupe``: one item per near-duplicate group (see
        ``duplicates``); ``min_similarity``: leave out results less similar to the query. A product scores the
        best of its photos (``Match.photo`` names it, ``Match.photos`` counts them). ``ranking``: boosts,
        buries, pins, excludes and diversity (``ranking.py``), on top of the catalog's default rules unless
        ``rules`` is False; ``Match.rules`` tells what moved each result.

        Words are also keywords (``keywords.py``): matched against the products' titles and labels, that list
        is fused with the vector results by reciprocal rank fusion (``ranking.keyword_weight``, default 1; 0 =
        vectors only). A catalog whose model embeds photos only answers words by keyword alone (fused with the
        photos and items of the query, if any); ``Match.found_by`` tells which list found each result.

        Raises:
            ImageError: a query image cannot be read.
            NoTextModelError: words to avoid (``not_text``) for a catalog whose model embeds photos only (the
                message names models that embed words).
            QueryError: bad ``k``, ``where`` or ``weights``; an unknown item; nothing to look for.
        """
        check_k(k)
        images, texts = _listed(image), _listed(text)
        avoid_images, avoid_texts = _listed(not_images), _listed(not_text)
        weights = QueryWeights.parse(weights)
        self.check_text(texts, need_model=False)
        self.check_text(avoid_texts)
        if not (images or texts or items):
            raise QueryError("nothing to search for: give a photo, words (text) or catalog items")
        check_by(by)
        keywords = " ".join(str(t) for t in texts) or None
        if texts and not self.has_text:
            if not (images or items):
                return self.search_keywords(keywords, k, where, by=by, ranking=ranking, rules=rules)
            texts = []  # the words are keywords only, fused with the photos and items
        allowed = self.allowed(where)
        ranking = self.ranking_for(ranking, rules)
        if len(images) == 1 and not (texts or keywords or items or avoid_images or avoid_texts or not_items):
            vector = self.encoder().encode(images[0])
            fetch, excluded = self.fetch_count(k, ranking), self.excluded_products(ranking)
            if dedupe:
                matches = nearest_distinct(self, vector, fetch, allowed, exclude=set(), by=by,
                                           exclude_products=excluded)
            else:
                matches = self._with_exact_copies(self.nearest(vector, fetch, allowed, exclude=set(), by=by,
                                                               where=where, exclude_products=excluded),
                                                  images[0], vector, fetch, allowed, by)
            return self.finish(above(matches, min_similarity), k, ranking, [vector], by)
        parts = [*self.image_parts(images), *self.image_parts(avoid_images, negative=True),
                 *self.text_parts(texts), *self.text_parts(avoid_texts, negative=True)]
        return self.search_parts(parts, k, where, dedupe, items=items, not_items=not_items, weights=weights,
                                 min_similarity=min_similarity, by=by, ranking=ranking, rules=False,
                                 keywords=keywords)

    def search_keywords(self, text: str, k: int = 10, where: Where = None, *, by: str = "product",
                        ranking: Ranking | None = None, rules: bool = True) -> list[Match]:
        """The k products (``by="photo"``: their best photos) whose titles and labels best match the words of
        ``text`` (``keywords.py``), with the catalog's rules (``ranking``, ``rules`` as in ``search``); no
        model is loaded. ``similarity`` is 0 (there is no query vector); ``found_by`` is ``["keyword"]``.

        Raises:
            QueryError: bad ``k``, ``by`` or ``where``; empty or over-long words.
        """
        check_k(k)
        check_by(by)
        self.check_text([text], need_model=False)
        allowed = self.allowed(where)
        ranking = self.ranking_for(ranking, rules)
        matches = self.keyword_matches(text, self.fetch_count(k, ranking), allowed, self.excluded_products(ranking),
                                       by)
        return self.finish(matches, k, ranking, [], by, relevance=[(RRF_K + 1) / (RRF_K + m.rank) for m in matches])

    def image_parts(self, images: Sequence[ImageInput], negative: bool = False) -> list[QueryPart]:
        """Photos embedded as query parts.

        Raises:
            ImageError: a photo cannot be read.
        """
        if not images:
            return []
        vectors = self.encoder().encode(list(images))
        return [QueryPart("image", v, negative, _describe(im)) for v, im in zip(vectors, images, strict=True)]

    def text_parts(self, texts: Sequence[str], negative: bool = False) -> list[QueryPart]:
        """Words embedded by the catalog's text tower as query parts.

        Raises:
            NoTextModelError: the catalog's model embeds photos only and no text tower was added.
        """
        if not texts:
            return []
        self.check_text(texts)
        vectors = self.encode_text(list(texts))
        return [QueryPart("text", v, negative, t) for v, t in zip(vectors, texts, strict=True)]

    def search_parts(self, parts: Sequence[QueryPart], k: int = 10, where: Where = None, dedupe: bool = False, *,
                     items: Sequence[str] = (), not_items: Sequence[str] = (),
                     weights: QueryWeights | Mapping[str, float] | Sequence[str] | None = None,
                     min_similarity: float | None = None, by: str = "product", ranking: Ranking | None = None,
                     rules: bool = True, keywords: str | None = None) -> list[Match]:
        """``search`` for parts already embedded (the server embeds photos and words on its model thread), plus
        catalog items by id, for or against; never returns the items named, or their exact copies. ``keywords``:
        words whose keyword results are fused with the vector results (``keywords.py``; ``min_similarity``
        applies to the vector list only).

        Raises:
            QueryError: bad ``k``, ``where`` or ``weights``; an unknown item; nothing to look for.
        """
        check_k(k)
        check_by(by)
        allowed = self.allowed(where)
        ranking = self.ranking_for(ranking, rules)
        parts = list(parts)
        exclude: set[int] = set()
        named: set[int] = set()
        first_item: int | None = None
        for negative, ids in ((False, items), (True, not_items)):
            for item_id in ids:
                key = self._key(str(item_id))
                photos = self.products.photos_of[key]
                first_item = int(photos[0]) if first_item is None and not negative else first_item
                parts.append(QueryPart("item", self.vector(str(item_id)), negative, str(item_id)))
                named.add(key)
                for photo in photos.tolist():
                    exclude |= self.table.same_content(photo)
        vector = combine(parts, QueryWeights.parse(weights))
        weight = keyword_weight(ranking) if keywords else 0.0
        fetch = max(self.fetch_count(k, ranking), candidates(k)) if weight > 0 else self.fetch_count(k, ranking)
        leave_out = named | self.excluded_products(ranking)
        matches = above(self._answer(vector, fetch, allowed, exclude, dedupe, first_item, leave_out, by, where),
                        min_similarity)
        if not keywords:
            return self.finish(matches, k, ranking, [vector], by)
        matches, relevance = self.fuse(matches, keywords, fetch, weight, allowed, leave_out, by, vector)
        return self.finish(matches, k, ranking, [vector], by, relevance=relevance)

    def _answer(self, vector: np.ndarray, k: int, allowed: np.ndarray | None, exclude: set[int], dedupe: bool,
                query_key: int | None = None, exclude_products: set[int] | frozenset[int] = frozenset(),
                by: str = "product", where: Where = None) -> list[Match]:
        if dedupe:
            return nearest_distinct(self, vector, k, allowed, exclude, query_key=query_key,
                                    exclude_products=exclude_products, by=by)
        return self.nearest(vector, k, allowed, exclude=exclude, exclude_products=exclude_products, by=by,
                            where=where)

    def _with_exact_copies(self, matches: list[Match], image: ImageInput, vector: np.ndarray, k: int,
                           allowed: np.ndarray | None, by: str = "product") -> list[Match]:
        """A product with a photo whose file is byte for byte the query photo always comes back, whatever an
        approximate index missed."""
        data = image if isinstance(image, bytes) else None
        if isinstance(image, (str, Path)):
            try:
                data = Path(image).read_bytes()
            except OSError:
                data = None
        table, products = self.table, self.products
        copies = table.keys_by_hash.get(content_hash(data), set()) if data is not None else set()
        if not copies:
            return matches
        allowed_set = set(allowed.tolist()) if allowed is not None else None
        shown = {m.id for m in matches}
        extra = []
        for photo in sorted(copies):
            sim = float(np.dot(self.index.vector(photo), vector))
            if by == "photo":
                owners = [p for p in products.products_of.get(photo, ()) if allowed_set is None or p in allowed_set]
                if owners and table.id_by_key[photo] not in shown:
                    extra += self._matches([(owners[0], photo, sim)], by=by)
                continue
            hits = [(p, photo, sim) for p in products.products_of.get(photo, ())
                    if (allowed_set is None or p in allowed_set) and products.id_by_key.get(p) not in shown]
            extra += self._matches(hits)
            shown |= {m.id for m in extra}
        if not extra:
            return matches
        ranked = sorted([*extra, *matches], key=lambda m: -m.similarity)[:k]
        return [dataclasses.replace(m, rank=rank) for rank, m in enumerate(ranked, start=1)]

    def search_vector(self, vector: np.ndarray, k: int = 10, where: Where = None, dedupe: bool = False,
                      ranking: Ranking | None = None, rules: bool = True) -> list[Match]:
        """The k products most like an embedded query (unit vector, float32, D); ``ranking`` and ``rules`` as
        for ``search``."""
        check_k(k)
        vector = np.asarray(vector, dtype=np.float32)
        allowed = self.allowed(where)
        ranking = self.ranking_for(ranking, rules)
        fetch, excluded = self.fetch_count(k, ranking), self.excluded_products(ranking)
        if dedupe:
            matches = nearest_distinct(self, vector, fetch, allowed, set(), exclude_products=excluded)
        else:
            matches = self.nearest(vector, fetch, allowed, exclude=set(), where=where, exclude_products=excluded)
        return self.finish(matches, k, ranking, [vector])

    def similar(self, item_id: str, k: int = 10, where: Where = None, same_cluster: bool = False,
                dedupe: bool = False, *, text: str | Sequence[str] | None = None,
                not_text: str | Sequence[str] | None = None,
                weights: QueryWeights | Mapping[str, float] | Sequence[str] | None = None,
                min_similarity: float | None = None, by: str = "product", ranking: Ranking | None = None,
                rules: bool = True) -> list[Match]:
        """"More like this": the k products most like a catalog product, never itself, and never by its own
        photos or their exact copies. A product of several photos queries with all of them: another product
        scores its best (query photo, photo) pair.

        ``same_cluster`` keeps to the item's k-means cluster (``lookalike cluster``), as the autoencoder
        seed recommended; it combines with ``where`` (both must hold). ``dedupe`` shows one item per
        near-duplicate group and leaves out the item's own near-copies (see ``duplicates``). ``text`` (and
        ``not_text``): "more like this, but ..." in words, combined with the item as ``search`` combines parts.
        ``ranking`` and ``rules``: as for ``search``.

        Raises:
            NoTextModelError: words for a catalog whose model embeds photos only.
            QueryError: unknown id, bad ``k`` or ``where``; ``same_cluster`` without clusters for the item.
        """
        check_k(k)
        check_by(by)
        texts, avoid_texts = _listed(text), _listed(not_text)
        self.check_text(texts + avoid_texts)
        weights = QueryWeights.parse(weights)
        allowed = self.allowed(where)
        key = self._key(item_id)
        if same_cluster:
            members = self._cluster_members(item_id, key)
            allowed = members if allowed is None else np.intersect1d(allowed, members)
        photos = [int(p) for p in self.products.photos_of[key]]
        exclude: set[int] = set()
        for photo in photos:
            exclude |= self.table.same_content(photo)
        ranking = self.ranking_for(ranking, rules)
        itself = {key} | self.excluded_products(ranking)
        fetch = self.fetch_count(k, ranking)
        if texts or avoid_texts:
            parts = [QueryPart("item", self.vector(item_id), False, str(item_id)), *self.text_parts(texts),
                     *self.text_parts(avoid_texts, negative=True)]
            vector = combine(parts, weights)
            matches = self._answer(vector, fetch, allowed, exclude, dedupe, photos[0], itself, by, where)
            return self.finish(above(matches, min_similarity), k, ranking, [vector], by)
        queries = [self.index.vector(photo) for photo in photos]
        if dedupe:
            matches = nearest_distinct(self, queries[0], fetch, allowed, exclude, query_key=photos[0],
                                       exclude_products=itself, by=by)
            return self.finish(above(matches, min_similarity), k, ranking, queries[:1], by)
        lists = [self.nearest(query, fetch, allowed, exclude=exclude, items=True,
                              exclude_products=itself, by=by, where=where) for query in queries]
        return self.finish(above(merge_best(lists, fetch), min_similarity), k, ranking, queries, by)

    def nearest(self, vector: np.ndarray, k: int, allowed: np.ndarray | None, exclude: set[int],
                items: bool = False, *, exclude_products: set[int] | frozenset[int] = frozenset(),
                by: str = "product", where: Where = None) -> list[Match]:
        """The k best products (``by="photo"``: photos) for a unit ``vector`` (float32, D) among the products
        keyed in ``allowed`` (None: all), leaving out the photo keys in ``exclude`` and the product keys in
        ``exclude_products``; ``items``: the query is a catalog item (use the index's item setting). A product
        ranks by its best photo (``catalog.products``); ``where`` names the variants that matched."""
        products, index = self.products, self.index
        allowed_set = None
        photos_allowed = None
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            if exclude_products:
                allowed = allowed[~np.isin(allowed, list(exclude_products))]
            photos_allowed = products.photo_keys(allowed)
            # a photo two products share can bring in the one outside the filter: only then check each hit's
            allowed_set = None if products.one_to_one else set(allowed.tolist())
            if exclude:
                photos_allowed = photos_allowed[~np.isin(photos_allowed, list(exclude))]
            if len(photos_allowed) == 0:
                return []
        settings = index.item_settings if items else None
        total = index.size
        fetch = k + len(exclude) + (0 if products.one_to_one else 2 * k) + (k // 4 if exclude_products else 0)
        while True:
            sims, keys = index.search(vector, fetch, photos_allowed, settings=settings)
            hits = [(key, sim) for key, sim in zip(keys[0].tolist(), sims[0].tolist(), strict=True)
                    if key >= 0 and key not in exclude]
            if by == "photo":
                picked = []
                for key, sim in hits:
                    owners = products.products_of.get(key, ())
                    if owners and all(o in exclude_products for o in owners):
                        continue
                    if allowed_set is not None and not any(o in allowed_set for o in owners):
                        continue
                    picked.append((owners[0] if owners else -1, key, sim))
                    if len(picked) == k:
                        break
            else:
                picked = products.group([h[0] for h in hits], [h[1] for h in hits], k, allowed_set,
                                        exclude_products)
            if len(picked) >= k or fetch >= total:
                break
            fetch = min(total, fetch * 4)
        return self._matches(picked, by=by, where=where)

    def _matches(self, picked: Sequence[tuple[int, int, float]], by: str = "product", where: Where = None,
                 start: int = 1) -> list[Match]:
        """Result rows for (product key, photo key, similarity) triples, ranked from ``start``."""
        table, products = self.table, self.products
        product_keys = [p for p, _, _ in picked]
        labels = table.labels_for(product_keys, self.store)
        predicted = table.predicted_for(product_keys, self.store)
        terms = parse_where(where) if where else {}
        variants = (matching_variants(self.store.variants_for(product_keys), terms) if terms else {})
        id_by_key, path_by_key, photos_of, product_ids = (table.id_by_key, table.path_by_key, products.photos_of,
                                                          products.id_by_key)
        rows = []
        for product, photo, _ in picked:
            photos = photos_of.get(product)
            photo_id = id_by_key[photo]
            rows.append((photo_id if by == "photo" else product_ids[product], path_by_key[photo], photo_id,
                         product_ids.get(product, ""), len(photos) if photos is not None else 1,
                         labels.get(product, {}), predicted.get(product, {}), variants.get(product, [])))
        return match_rows(rows, [s for _, _, s in picked], start=start)


def _listed(value) -> list:
    """None -> [], one query value (a path, bytes, an image, a string) -> [it], a list or tuple -> a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _describe(image) -> str:
    return str(image) if isinstance(image, (str, Path)) else type(image).__name__


def above(matches: list[Match], min_similarity: float | None) -> list[Match]:
    """Results at least ``min_similarity`` similar to the query (all when None)."""
    if min_similarity is None:
        return matches
    return [m for m in matches if m.similarity >= min_similarity]
