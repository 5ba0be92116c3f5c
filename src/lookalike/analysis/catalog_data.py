"""A catalog's products in one piece, as the analyses read them: one row per product.

Every whole-catalog analysis (``evaluate``, ``cluster``, ``words``, the plots' map and the report) works on
products, not photos: a product of several photos is one row, with

* its **vector**: the centroid of its photos' unit vectors, renormalised (``catalog.products.product_centroid``,
  the vector ``Catalog.vector`` gives), so a product with a front and a back photo is one point;
* its **content group**: the photo's sha256 for a product of one photo, else the sha256 of its photos' sorted
  hashes, so products made of the same photos are exact copies of each other (leave-one-out never lets a
  product find its own copy, and a held-out photo of a one-photo product matches it as before);
* its **labels** and **clusters**, which the store keeps per product key;
* its first photo's path (thumbnails) and every photo's path and hash.

A photo shared by two products counts once in each product's centroid and never makes a row of its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import EncodeOptions
from ..core.errors import QueryError

log = logging.getLogger(__name__)


@dataclass
class CatalogData:
    """A catalog's embedded products: what every analysis (metrics, plots, clusters) reads. Row i is product
    ``ids[i]`` (store key ``keys[i]``), in product key order."""

    keys: np.ndarray  # int64 product keys
    ids: list[str]  # product ids
    paths: list[str]  # each product's first photo
    content: list[str | None]  # content group (see the module docstring)
    vectors: np.ndarray  # N x D float32 unit vectors: product centroids
    labels: list[dict[str, str]]
    clusters: dict[int, int]  # product key -> cluster, from `lookalike cluster`
    label_names: list[str]
    path: str = "PATH"
    photo_paths: list[tuple[str, ...]] = field(default_factory=list)  # every photo of each product, in order
    photo_hashes: list[tuple[str | None, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def values(self, label: str) -> list[str | None]:
        """Each product's value of ``label`` (None where it has none); ``cluster`` reads the stored clusters.

        Raises:
            QueryError: the catalog has no such label.
        """
        if label in self.label_names:
            return [lab.get(label) for lab in self.labels]
        if label == "cluster":
            if not self.clusters:
                raise QueryError(f"{self.path} has no clusters yet; run `lookalike cluster --catalog {self.path} -n 6`")
            return [str(self.clusters[key]) if key in self.clusters else None for key in self.keys.tolist()]
        listing = ", ".join(self.label_names) or "none (index from a CSV manifest to add labels)"
        raise QueryError(f"unknown label {label!r}; labels in this catalog: {listing}"
                         + (", cluster" if self.clusters else ""))

    def group_of_photo(self) -> dict[str, str | None]:
        """Photo sha256 -> the content group of the first product showing it (held-out queries that are one
        of a product's photos are of that product's group)."""
        out: dict[str, str | None] = {}
        for content, hashes in zip(self.content, self.photo_hashes, strict=True):
            for sha in hashes:
                if sha:
                    out.setdefault(sha, content)
        return out


def content_group(hashes: tuple[str | None, ...]) -> str | None:
    """A product's content group from its photos' hashes: the hash itself for one photo, the sha256 of the
    sorted distinct hashes for several (None when a hash is unknown)."""
    if any(h is None for h in hashes):
        return None
    distinct = sorted(set(hashes))
    if len(distinct) == 1:
        return distinct[0]
    return "products:" + hashlib.sha256("\n".join(distinct).encode()).hexdigest()


def load_catalog_data(catalog) -> CatalogData:
    """Read every product with an embedded photo: ids, photos, content groups, centroid vectors, labels and
    clusters, in product key order (see the module docstring)."""
    from ..catalog.products import product_centroid

    store = catalog.store
    products = catalog.products
    photo_keys, photo_vectors = store.vectors(catalog.config.embedder.dim)
    row_of = {int(k): i for i, k in enumerate(photo_keys.tolist())}
    items = {key: (path, sha) for key, _, path, sha in store.ok_items()}
    keys = np.array(sorted(k for k, photos in products.photos_of.items()
                           if any(int(p) in row_of and int(p) in items for p in photos)), dtype=np.int64)
    vectors = np.empty((len(keys), photo_vectors.shape[1] if photo_vectors.ndim == 2 else 0), np.float32)
    paths, hashes = [], []
    for n, key in enumerate(keys.tolist()):
        photos = [int(p) for p in products.photos_of[key] if int(p) in row_of and int(p) in items]
        vectors[n] = product_centroid(photo_vectors[[row_of[p] for p in photos]])
        paths.append(tuple(items[p][0] for p in photos))
        hashes.append(tuple(items[p][1] for p in photos))
    labels = store.labels()
    return CatalogData(
        keys=keys, ids=[products.id_by_key[k] for k in keys.tolist()], paths=[p[0] for p in paths],
        content=[content_group(h) for h in hashes], vectors=vectors,
        labels=[labels.get(k, {}) for k in keys.tolist()], clusters=store.clusters(),
        label_names=store.label_names(), path=catalog.name, photo_paths=paths, photo_hashes=hashes,
    )


def colour_histograms(catalog, data: CatalogData) -> tuple[np.ndarray, np.ndarray]:
    """Colour-histogram vectors of the catalog's products (each photo re-read from disk once, a product's
    vector the centroid of its photos' histograms), cached in ``analysis/``.

    Returns (vectors N x 512 float32, ok mask); a product none of whose photos can be read now has ok False.
    """
    from ..catalog.products import product_centroid
    from ..engines.embed import Encoder, FileTask, encode_files
    from ..models.handcrafted import HANDCRAFTED_WEIGHTS, ColourHistogramEmbedder

    cache = catalog.folder / "analysis" / "colorhist.npz"
    stamp = f"{catalog.store.generation()}:{HANDCRAFTED_WEIGHTS}:products"
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["stamp"]) == stamp and np.array_equal(saved["keys"], data.keys):
                return saved["vectors"], saved["ok"]
    except (OSError, KeyError, ValueError):
        pass
    embedder = ColourHistogramEmbedder()
    encoder = Encoder(embedder, EncodeOptions(precision="fp32", progress=False))
    photos = list(dict.fromkeys(p for paths in (data.photo_paths or [(p,) for p in data.paths]) for p in paths))
    photo_vectors: dict[str, np.ndarray] = {}
    tasks = [FileTask(Path(p), ref=i) for i, p in enumerate(photos)]
    for batch in encode_files(encoder, tasks):
        for row, result in enumerate(batch.embedded):
            photo_vectors[photos[result.task.ref]] = batch.vectors[row]
    vectors = np.zeros((len(data), embedder.dim), dtype=np.float32)
    ok = np.zeros(len(data), dtype=bool)
    for n, paths in enumerate(data.photo_paths or [(p,) for p in data.paths]):
        found = [photo_vectors[p] for p in paths if p in photo_vectors]
        if found:
            vectors[n], ok[n] = product_centroid(np.stack(found)), True
    try:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, stamp=np.array(stamp), keys=data.keys, vectors=vectors, ok=ok)
        tmp.replace(cache)
    except OSError as exc:  # a read-only catalog is still evaluated
        log.info("colour histograms not cached (%s)", exc)
    return vectors, ok


def product_vector_blocks(catalog, block: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(product keys int64, centroid vectors B x D float32) of every product with an embedded photo, in key
    order, ``block`` products at a time (the photos' vectors read from the store per block)."""
    from ..catalog.products import product_centroid

    products = catalog.products
    dim = catalog.config.embedder.dim
    keys = sorted(products.photos_of)
    for start in range(0, len(keys), block):
        chunk = keys[start:start + block]
        stored = catalog.store.vectors_for(products.photo_keys(chunk).tolist(), dim)
        out_keys, out_vectors = [], []
        for key in chunk:
            found = [stored[int(p)] for p in products.photos_of[key] if int(p) in stored]
            if found:
                out_keys.append(key)
                out_vectors.append(product_centroid(np.stack(found)))
        if out_keys:
            yield np.array(out_keys, dtype=np.int64), np.stack(out_vectors).astype(np.float32, copy=False)
