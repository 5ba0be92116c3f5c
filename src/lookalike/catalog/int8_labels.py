"""The category labels of the photos the int8 gate measures (``engines.int8_gate``): which label names the kind
of item, and each sampled photo's value of it, from the stored products and from a listing being indexed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..core import storage
from ..store import Store
from ..store.products import ProductRecord, joined

MIN_VALUES, MAX_VALUES = 2, 200  # a category label has at least two values and is not an id or a title


def category_label(photos: Iterable[Mapping[str, str]], count: int) -> str | None:
    """The label the gate measures precision by, given the labels of ``count`` photos: the first of
    ``look.CATEGORY_LABELS`` (``articleType``, ``category``, ...) that at least half the photos carry with
    ``MIN_VALUES``..``MAX_VALUES`` values; else the label most photos carry with such a number of values
    (ties: by name); None when no label has one."""
    from .look import CATEGORY_LABELS  # the detector's module: imported when a gate runs only

    carried: dict[str, int] = {}
    values: dict[str, set[str]] = {}
    for labels in photos:
        for name, value in labels.items():
            if value:
                carried[name] = carried.get(name, 0) + 1
                values.setdefault(name, set()).add(value)
    fit = {name: n for name, n in carried.items() if MIN_VALUES <= len(values[name]) <= MAX_VALUES}
    preferred = next((name for name in CATEGORY_LABELS if 2 * fit.get(name, 0) >= max(count, 1)), None)
    if preferred is not None:
        return preferred
    return min(fit, key=lambda name: (-fit[name], name)) if fit else None


def sample_labels(store: Store, paths: Iterable[str], new: Mapping[str, Mapping[str, str]] | None = None
                  ) -> tuple[str | None, dict[str, str]]:
    """(the category label, path -> its value) for the photos at ``paths``: the labels of the stored products
    that show each photo (``store.labels_for``; several products' values joined), replaced by ``new`` (path ->
    labels of the listing being indexed) where given. Paths are compared as ``str(storage.as_location(path))``;
    photos without a value are left out."""
    def norm(path: str) -> str:
        return str(storage.as_location(str(path)))

    wanted = {norm(p) for p in paths}
    photo_path = {int(key): norm(path) for key, _, path, _ in store.ok_items() if norm(path) in wanted}
    owners: dict[int, list[int]] = {}
    for product, photo, _ in store.product_photos():
        if photo in photo_path:
            owners.setdefault(photo, []).append(product)
    stored = store.labels_for({p for products in owners.values() for p in products})
    by_path: dict[str, dict[str, str]] = {}
    for photo, products in owners.items():
        names = {name for p in products for name in stored.get(p, {})}
        by_path[photo_path[photo]] = {name: joined(stored[p][name] for p in products if name in stored.get(p, {}))
                                      for name in names}
    for path, labels in (new or {}).items():
        if norm(path) in wanted:
            by_path[norm(path)] = dict(labels)
    label = category_label(by_path.values(), len(wanted))
    if label is None:
        return None, {}
    return label, {path: labels[label] for path, labels in by_path.items() if labels.get(label)}


def listing_labels(records: Iterable[ProductRecord]) -> dict[str, str]:
    """The labels a photo gets from the listing's products that show it (``plan_products``): every variant's,
    several values of a name joined as the store joins them."""
    values: dict[str, set[str]] = {}
    for record in records:
        for labels in (record.variants or {}).values():
            for name, value in labels.items():
                values.setdefault(name, set()).add(value)
    return {name: joined(vals) for name, vals in values.items()}
