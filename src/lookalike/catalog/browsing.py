"""Products by id: their labels, vectors and photos, pages of them, facets, filters, clusters.

A part of ``Catalog`` (``catalog.py``), which inherits it; it reads the catalog's attributes set there.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import (
    QueryError,
    UnknownItemError,
)
from .products import (
    product_centroid,
)
from .query import (
    Where,
    parse_where,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogItem:
    """An embedded catalog item as browsing shows it."""

    id: str
    path: str
    labels: dict[str, str]
    sha256: str | None = None
    predicted: dict[str, float] = field(default_factory=dict)  # labels from `lookalike tag`: name -> probability
    photos: list[str] = field(default_factory=list)  # every photo's path, ``path`` first

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "labels": self.labels, "predicted": self.predicted,
                "photos": self.photos or [self.path]}


class Browsing:
    """Products by id (labels, vectors, photos), pages and facets, label filters (``where`` -> product keys)
    and clusters."""

    def __len__(self) -> int:
        """How many products can be found (those with at least one embedded photo)."""
        return len(self.products)

    def ids(self) -> list[str]:
        """The ids of the products that can be found, in the order they were added."""
        return list(self.products.id_by_key.values())

    def labels(self, item_id: str) -> dict[str, str]:
        """The labels of a product (empty when its source had none); a label whose variants differ has its
        values joined (``"L | M | S"``)."""
        key = self._key(item_id)
        return self.table.labels_for([key], self.store)[key]

    def photo_vectors(self, item_id: str) -> np.ndarray:
        """The stored vectors of a product's photos, P x D float32, in the product's photo order.

        Raises:
            UnknownItemError: unknown id, or none of its photos could be embedded.
        """
        return self.index.vectors_of(self.products.photos_of[self._key(item_id)])

    def vector(self, item_id: str) -> np.ndarray:
        """A product's vector (float32, D, unit length): its photo's, or the renormalised mean of its photos'
        (the centroid that analyses such as clusters and maps use for a product).

        Raises:
            UnknownItemError: unknown id, or none of its photos could be embedded.
        """
        return product_centroid(self.photo_vectors(item_id))

    def item(self, item_id: str, photo: str | None = None) -> CatalogItem:
        """One product: id, its first photo's path (or ``photo``'s, one of its photo ids: ``Match.photo``),
        labels, and every photo's path.

        Raises:
            UnknownItemError: no product with an embedded photo has this id, or ``photo`` is not one of its photos.
        """
        key = self._key(item_id)
        table, photos = self.table, self.products.photos_of[key]
        first = int(photos[0])
        if photo is not None and photo != table.id_by_key.get(first):
            first = table.key_by_id.get(str(photo), -1)
            if first not in set(photos.tolist()):
                raise UnknownItemError(f"item {item_id!r} has no photo {str(photo)[:80]!r}")
        return CatalogItem(id=self.products.id_by_key[key], path=table.path_by_key[first],
                           labels=table.labels_for([key], self.store)[key], sha256=table.hash_by_key.get(first),
                           predicted=table.predicted_for([key], self.store).get(key, {}),
                           photos=[table.path_by_key[int(p)] for p in photos])

    def browse(self, offset: int = 0, limit: int = 50, where: Where = None) -> tuple[int, list[CatalogItem]]:
        """A page of the catalog in the order items were added, and how many items match ``where``.

        Raises:
            QueryError: bad ``where``, negative offset or limit.
        """
        if offset < 0 or limit < 0:
            raise QueryError(f"offset and limit must be 0 or more, got offset={offset}, limit={limit}")
        allowed = self.allowed(where)
        table, products = self.table, self.products
        keys = sorted(products.id_by_key) if allowed is None else sorted(
            k for k in allowed.tolist() if k in products.id_by_key)
        page = keys[offset:offset + limit]
        labels = table.labels_for(page, self.store)
        predicted = table.predicted_for(page, self.store)
        out = []
        for k in page:
            photos = [int(p) for p in products.photos_of[k]]
            out.append(CatalogItem(id=products.id_by_key[k], path=table.path_by_key[photos[0]], labels=labels[k],
                                   sha256=table.hash_by_key.get(photos[0]), predicted=predicted.get(k, {}),
                                   photos=[table.path_by_key[p] for p in photos]))
        return len(keys), out

    def facets(self, where: Where = None, max_values: int = 50) -> dict[str, dict[str, int]]:
        """Label values and their item counts, for filtering by label; values most frequent first.

        Labels that identify items rather than group them (names, free text) are left out: those with more
        than ``max_values`` distinct values in the whole catalog, or whose every value is unique.

        Raises:
            QueryError: bad ``where``.
        """
        terms = self.check_where(where)
        everything = self._all_label_counts()
        wanted = {name for name, values in everything.items()
                  if len(values) <= max_values and len(values) < sum(values.values())}
        counts = self.store.label_counts(terms) if terms else everything
        return {name: dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
                for name, values in sorted(counts.items()) if name in wanted}

    def _label_names(self) -> list[str]:
        """The label names a filter may use, kept until labels or items change (a scan of every label row,
        which a filtered search would otherwise pay each time)."""
        generations = self.store.generations()
        if self._label_name_cache is None or self._label_name_cache[0] != generations:
            self._label_name_cache = (generations, self.store.label_names())
        return self._label_name_cache[1]

    def _all_label_counts(self) -> dict[str, dict[str, int]]:
        """Counts over the whole catalog, kept until items or labels change: every browse page needs them."""
        generations = self.store.generations()
        if self._label_counts is None or self._label_counts[0] != generations:
            self._label_counts = (generations, self.store.label_counts())
        return self._label_counts[1]

    def forget_labels(self) -> None:
        """Drop cached labels and counts now (after this process rewrote labels, e.g. ``lookalike tag``); other
        processes' writes are noticed within a quarter of a second anyway."""
        if self._meta is not None:
            self._meta.forget_labels()
        self._label_counts = self._label_name_cache = None
        self._labels_generation = self.store.generations()[1]

    def remove_predicted(self, column: str) -> int:
        """Delete a label predicted by ``lookalike tag``; returns how many items had it.

        Raises:
            QueryError: no predicted label has this name.
        """
        if column not in self.store.predicted_names():
            names = ", ".join(self.store.predicted_names()) or "none"
            raise QueryError(f"no predicted label {column!r}; predicted labels in this catalog: {names}")
        removed = self.store.remove_predicted(column)
        self.forget_labels()
        return removed

    def clusters(self) -> dict[str, int]:
        """Product id -> k-means cluster, as stored by ``lookalike cluster`` (empty before clustering)."""
        by_key = self.store.clusters()
        ids = self.products.id_by_key
        return {ids[key]: c for key, c in by_key.items() if key in ids}

    def _cluster_members(self, item_id: str, key: int) -> np.ndarray:
        cluster = self.store.cluster_of(key)
        if cluster is None:
            if self.store.cluster_info() is None:
                raise QueryError(f"{self.name} has no clusters yet; run `lookalike cluster --catalog {self.name} "
                                 "-n 6` (or --auto) first")
            raise QueryError(f"item {item_id!r} was added after the last clustering; run `lookalike cluster "
                             f"--catalog {self.name}` again")
        return self.store.keys_in_cluster(cluster)

    def _key(self, item_id: str) -> int:
        """The key of a product that can be found.

        Raises:
            UnknownItemError: no such product, or none of its photos could be embedded (the reason is named).
        """
        key = self.products.key_by_id.get(str(item_id))
        if key is None:
            if self.store.product(str(item_id)) is not None:
                failed = self.store.failures_of_product(str(item_id))
                reason = f" ({failed[0]})" if failed else ""
                raise UnknownItemError(f"item {item_id!r} could not be embedded{reason}; fix the file and "
                                       "re-index")
            raise UnknownItemError(f"unknown item id {item_id!r}; `lookalike status` shows the catalog")
        return key

    def check_where(self, where: Where) -> dict[str, str]:
        """Parse a filter and check that its labels exist in this catalog.

        Raises:
            QueryError: malformed, or names a label the catalog does not have.
        """
        terms = parse_where(where)
        known = set(self._label_names()) if terms else set()
        unknown = [name for name in terms if name not in known]
        if unknown:
            listing = ", ".join(sorted(known)) or "none (index from a manifest to add labels)"
            raise QueryError(f"unknown label {unknown[0]!r} in filter; labels in this catalog: {listing}")
        return terms

    def check_values(self, where: Where) -> dict[str, str]:
        """``check_where``, and each value must be one some item has: a misspelt value (``articleType=Tshirt``)
        is told with the values that exist, closest first, rather than matching nothing. What the command line
        asks; the REST API keeps an empty answer for a value no item has (its page offers only real values).

        Raises:
            QueryError: malformed filter, unknown label, or a value no item has.
        """
        terms = self.check_where(where)
        counts = self._all_label_counts()
        for name, value in terms.items():
            values = counts.get(name, {})
            if value in values:
                continue
            close = difflib.get_close_matches(value, list(values), n=len(values), cutoff=0.0)
            near = difflib.get_close_matches(value.lower(), [v.lower() for v in values], n=len(values), cutoff=0.6)
            ordered = sorted(values, key=lambda v: (v.lower() not in near, close.index(v)))
            shown = ", ".join(ordered[:12]) + (f" and {len(ordered) - 12} more" if len(ordered) > 12 else "")
            raise QueryError(f"no item has {name}={value!r}; values of {name}, closest first: {shown or '(none)'}")
        return terms

    def allowed(self, where: Where) -> np.ndarray | None:
        """Store keys of the items matching ``where`` (int64, sorted), or None for no filter.

        Raises:
            QueryError: malformed filter or unknown label.
        """
        terms = self.check_where(where)
        return self.store.keys_where(terms) if terms else None
