"""Models layer: embedders by name (timm backbones, ``.lkm`` files, model-free ones) and the networks and
file format trained models need at inference. ``registry`` is light; network modules import PyTorch, and are
imported when a network model is created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .base import RANDOM_WEIGHTS, Embedder
    from .registry import DEFAULT_MODEL, ModelSpec, create_embedder, list_models, register, resolve
    from .timm import TimmEmbedder

_EXPORTS = {
    "RANDOM_WEIGHTS": "base", "Embedder": "base", "TimmEmbedder": "timm",
    **{name: "registry" for name in ("DEFAULT_MODEL", "ModelSpec", "create_embedder", "list_models", "register",
                                    "resolve")},
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["DEFAULT_MODEL", "Embedder", "ModelSpec", "RANDOM_WEIGHTS", "TimmEmbedder", "create_embedder",
    "list_models", "register", "resolve"]
