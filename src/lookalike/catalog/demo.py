"""``lookalike demo``: build a small catalog from photos shipped in the package and show what it does.

Works offline: if the pretrained weights are neither cached nor downloadable, it says so in one line and
uses the best embedder that needs no download, ``OFFLINE_MODEL``, measured on the shared photos.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.config import CatalogConfig, EncodeOptions
from ..core.errors import ModelUnavailableError
from ..models.registry import DEFAULT_MODEL, create_embedder
from .catalog import CONFIG_FILE, Catalog, IndexReport
from .query import Match

log = logging.getLogger(__name__)

DEMO_MANIFEST = "styles.csv"
# The best embedder needing no download, by precision@5 of articleType (leave-one-out) on the 364 shared
# fashion photos (benchmarks/retrieval_quality.py, 2026-11-30): pixels 0.558, colorhist 0.451, ResNet-50 with
# random weights 0.390, chance 0.229.
OFFLINE_MODEL = "pixels"
OFFLINE_QUALITY = "precision@5 0.56 by articleType on 364 shop photos, against 0.39 for ResNet-50 with random weights"


@dataclass
class DemoResult:
    catalog: Catalog
    report: IndexReport
    fallback: str | None  # why pretrained weights were not used, if they were not (then OFFLINE_MODEL was)
    examples: list[tuple[str, dict[str, str], list[Match]]]


def demo_data() -> Path:
    return Path(str(resources.files("lookalike") / "demo_data"))


def run_demo(catalog_path: Path, model: str = DEFAULT_MODEL, options: EncodeOptions | None = None,
             weights: str | None = None, k: int = 5) -> DemoResult:
    """Index the shipped sample photos into ``catalog_path`` and find look-alikes for three of them."""
    fallback = None
    try:
        embedder = create_embedder(model, weights)
    except ModelUnavailableError as exc:
        fallback = str(exc).split(". Fixes:")[0]
        model = OFFLINE_MODEL
        embedder = create_embedder(model)
    if (catalog_path / CONFIG_FILE).is_file():
        built_with = CatalogConfig.load(catalog_path / CONFIG_FILE).embedder
        if built_with != embedder.info:  # the demo's own catalog: rebuild it for the model at hand
            shutil.rmtree(catalog_path)
    if (catalog_path / CONFIG_FILE).is_file():
        catalog = Catalog.open(catalog_path, embedder=embedder)
    else:
        catalog = Catalog.create(catalog_path, model, embedder=embedder)
    data = demo_data()
    report = catalog.add(data / DEMO_MANIFEST, images=data, options=options)
    examples = []
    seen_types: set[str] = set()
    for item_id in sorted(catalog.ids()):
        labels = catalog.labels(item_id)
        kind = labels.get("articleType")
        if kind in (None, *seen_types) or kind not in ("Tshirts", "Heels", "Backpacks", "Casual Shoes", "Handbags"):
            continue
        seen_types.add(kind)
        examples.append((item_id, labels, catalog.similar(item_id, k=k)))
        if len(examples) == 3:
            break
    return DemoResult(catalog=catalog, report=report, fallback=fallback, examples=examples)
