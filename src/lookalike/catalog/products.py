"""Products in a catalog: which photos a listing's rows make (each file once), which products they show, and
the in-memory table that turns photo hits into product hits.

A photo is embedded once however many rows, products or variants name it; a product is ranked by its
best-matching photo (the maximum of its photos' cosine similarities to the query, as Qdrant's ``group_by`` and
Google Product Search's grouped results do), and a query made of several photos (``similar PRODUCT``) scores a
product by its best pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..core.errors import QueryError
from ..core.sources import SourceItem
from ..store.products import ProductRecord
from .query import Match

PHOTO_SUFFIX = "#"  # the second photo of product P is P#2, the third P#3, ...


def plan_photos(items: Sequence[SourceItem]) -> list[SourceItem]:
    """The distinct photo files a listing's rows name, in the listing's order, each with a proposed id: its
    first product's id (``P``), or ``P#2``, ``P#3`` for later places, taken in sorted (product, place) order and
    made unique, so the ids never depend on the order of the rows. A row without a product of its own proposes
    its id for its first photo."""
    first_place: dict[str, tuple[str, int]] = {}
    for item in sorted(items, key=lambda it: (it.product_id, it.position, it.id)):
        first_place.setdefault(str(item.path), (item.product_id, item.position))
    taken: set[str] = set()
    photo_ids: dict[str, str] = {}
    for path in sorted(first_place, key=lambda p: (first_place[p], p)):
        pid, n = first_place[path]
        base = pid if n == 0 else f"{pid}{PHOTO_SUFFIX}{n + 1}"
        photo_id, extra = base, 1
        while photo_id in taken:
            extra += 1
            photo_id = f"{base}~{extra}"
        taken.add(photo_id)
        photo_ids[path] = photo_id
    first: dict[str, SourceItem] = {}
    for item in items:
        first.setdefault(str(item.path), item)
    return [replace(item, id=photo_ids[path], labels={}, product=None, position=0) for path, item in first.items()]


def plan_products(items: Sequence[SourceItem], photo_ids: Mapping[str, str]) -> list[ProductRecord]:
    """Group a listing's rows into products, once the catalog has given each photo path its id.

    A row of a named product (``SourceItem.product``: a manifest's product column, a leaf folder) belongs to
    it; a row of several photos is a product with the row's id; a row of one photo is that photo's product (id =
    the photo's id, as a file was an item before products existed, so re-indexing with another id scheme never
    doubles a product, and rows that name the same photo are one product with several variants). A product's
    variants are its rows (variant id = row id, with the row's labels); its photos every file its rows name, by
    place in the row, then path.
    """
    rows: list[list[SourceItem]] = []  # a row's photos come one after another, its first at position 0
    for item in items:
        if item.position == 0 or not rows:
            rows.append([])
        rows[-1].append(item)
    by_product: dict[str, list[SourceItem]] = {}
    for row in rows:
        first = row[0]
        if first.product is not None:
            pid = first.product
        elif len(row) == 1:
            pid = photo_ids.get(str(first.path), first.id)
        else:
            pid = first.id
        by_product.setdefault(pid, []).extend(row)
    out = []
    for pid in sorted(by_product):
        rows = by_product[pid]
        places: dict[str, int] = {}
        for item in rows:
            path = str(item.path)
            places[path] = min(places.get(path, item.position), item.position)
        paths = sorted((p for p in places if p in photo_ids), key=lambda p: (places[p], p))
        variants: dict[str, dict[str, str]] = {}
        for item in sorted(rows, key=lambda it: it.id):
            variants.setdefault(item.id, {}).update(item.labels)
        out.append(ProductRecord(id=pid, photos=tuple(photo_ids[p] for p in paths), variants=variants))
    return out


def changed_products(records: Iterable[ProductRecord], stored_photos: Mapping[str, tuple[str, ...]],
                     stored_variants: Mapping[str, Mapping[str, Mapping[str, str]]]) -> list[ProductRecord]:
    """The records whose photos or labels differ from what is stored (a re-index of an unchanged manifest
    writes nothing)."""
    out = []
    for record in records:
        labelled = {v: dict(labels) for v, labels in (record.variants or {}).items() if labels}
        if stored_photos.get(record.id) != record.photos or stored_variants.get(record.id, {}) != labelled:
            out.append(record)
    return out


class ProductTable:
    """Products of the embedded photos, in memory: ids, each product's photo keys (in order) and each photo's
    products, for turning photo hits into product hits fast."""

    def __init__(self, products: Sequence[tuple[int, str]], links: Sequence[tuple[int, int, int]]):
        photos: dict[int, list[int]] = {}
        owners: dict[int, list[int]] = {}
        for product, photo, _ in links:  # by product, then position
            photos.setdefault(product, []).append(photo)
            owners.setdefault(photo, []).append(product)
        self.id_by_key = {key: pid for key, pid in products if key in photos}
        self.key_by_id = {pid: key for key, pid in self.id_by_key.items()}
        self.photos_of = {key: np.asarray(keys, dtype=np.int64) for key, keys in photos.items()}
        self.products_of = {photo: tuple(sorted(keys)) for photo, keys in owners.items()}
        self.one_to_one = all(len(v) == 1 for v in photos.values()) and all(len(v) == 1 for v in owners.values())
        links_array = np.array([(p, f) for p, f, _ in links], dtype=np.int64).reshape(-1, 2)
        order = np.argsort(links_array[:, 0], kind="stable")
        self._link_products, self._link_photos = links_array[order, 0], links_array[order, 1]

    def __len__(self) -> int:
        return len(self.id_by_key)

    def photo_keys(self, products: np.ndarray | Iterable[int]) -> np.ndarray:
        """The photo keys (int64, sorted, unique) of some products: one vectorised pass over the links (a filter
        of most of a large catalog costs a few milliseconds, not a Python loop per product)."""
        wanted = (products.astype(np.int64, copy=False) if isinstance(products, np.ndarray)
                  else np.fromiter((int(p) for p in products), dtype=np.int64))
        if len(wanted) > 1 and not (np.diff(wanted) > 0).all():  # the store's filters come sorted already
            wanted = np.unique(wanted)
        if len(wanted) == 0 or len(self._link_products) == 0:
            return np.empty(0, np.int64)
        at = np.clip(np.searchsorted(wanted, self._link_products), 0, len(wanted) - 1)
        found = self._link_photos[wanted[at] == self._link_products]
        return np.sort(found) if self.one_to_one else np.unique(found)  # one product per photo: no repeats

    def group(self, photo_keys: Sequence[int], sims: Sequence[float], k: int, allowed: set[int] | None = None,
              exclude: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, int, float]]:
        """Photo hits (best first) -> up to k (product key, best photo key, similarity), best first: each product
        at its best photo; products outside ``allowed`` (None: all) or in ``exclude`` are passed over. Products
        that share the photo they are found by keep the hits' order and then their keys'."""
        out: list[tuple[int, int, float]] = []
        seen: set[int] = set()
        for photo, sim in zip(photo_keys, sims, strict=True):
            if photo < 0:
                continue
            for product in self.products_of.get(int(photo), ()):
                if product in seen or product in exclude or (allowed is not None and product not in allowed):
                    continue
                seen.add(product)
                out.append((product, int(photo), float(sim)))
                if len(out) == k:
                    return out
        return out


BY = ("product", "photo")


def check_by(by: str) -> str:
    """``product`` (results are products, each at its best photo) or ``photo`` (every photo on its own).

    Raises:
        QueryError: anything else.
    """
    if by not in BY:
        raise QueryError(f"--by {by!r}: choose product (one result per product) or photo (one per photo)")
    return by


def product_centroid(vectors: np.ndarray) -> np.ndarray:
    """A product's vector from its photos' unit vectors (P x D): the photo itself when there is one, else their
    mean renormalised to unit length (float32, D)."""
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) == 1:
        return vectors[0]
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm).astype(np.float32) if norm > 0 else vectors[0]


def merge_best(lists: Sequence[Sequence[Match]], k: int) -> list[Match]:
    """Result lists of several query photos merged into one: each product at its best similarity, the k best,
    ranked again. (The overall top k is always within the union of each query's top k.)"""
    best: dict[str, Match] = {}
    for matches in lists:
        for m in matches:
            if m.id not in best or m.similarity > best[m.id].similarity:
                best[m.id] = m
    ranked = sorted(best.values(), key=lambda m: (-m.similarity, m.id))[:k]
    return [replace(m, rank=rank) for rank, m in enumerate(ranked, start=1)]


def matching_variants(variants: Mapping[int, Mapping[str, Mapping[str, str]]],
                      terms: Mapping[str, str]) -> dict[int, list[str]]:
    """Product key -> the ids of its variants whose own labels hold every term that some variant has (so
    ``size=M`` names the M rows); products of one variant name none (nothing to tell apart)."""
    out: dict[int, list[str]] = {}
    for key, by_variant in variants.items():
        if len(by_variant) < 2:
            continue
        names = {name for labels in by_variant.values() for name in labels}
        wanted = {n: v for n, v in terms.items() if n in names}
        if wanted:
            out[key] = sorted(v for v, labels in by_variant.items()
                              if all(labels.get(n) == value for n, value in wanted.items()))
    return out
