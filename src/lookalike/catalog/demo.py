"""``lookalike demo``: build a small catalog from photos shipped in the package and show what it does.

Works offline: its model is the built-in ImageNet MobileNetV2 (``OFFLINE_MODEL``, shipped in the package); if
another ``--model``'s weights are neither cached nor downloadable, it says so in one line and uses that one.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.config import CatalogConfig, EncodeOptions
from ..core.errors import ModelUnavailableError
from ..models.registry import BUILTIN_MODEL, create_embedder
from .catalog import CONFIG_FILE, Catalog, IndexReport
from .query import Match

log = logging.getLogger(__name__)

DEMO_MANIFEST = "styles.csv"
# The model that needs no download: the built-in ImageNet MobileNetV2. Leave-one-out precision@5 by articleType
# on the 329 labelled shared fashion photos (benchmarks/retrieval_quality.py): 0.73, against 0.56 for the best
# model-free embedder (pixels) and 0.23 by chance.
OFFLINE_MODEL = BUILTIN_MODEL
OFFLINE_QUALITY = "precision@5 0.73 by articleType on 329 shop photos, against 0.56 without a model (pixels)"


@dataclass
class DemoResult:
    catalog: Catalog
    report: IndexReport
    fallback: str | None  # why pretrained weights were not used, if they were not (then OFFLINE_MODEL was)
    examples: list[tuple[str, dict[str, str], list[Match]]]


def demo_data() -> Path:
    return Path(str(resources.files("lookalike") / "demo_data"))


def run_demo(catalog_path: Path, model: str = OFFLINE_MODEL, options: EncodeOptions | None = None,
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
