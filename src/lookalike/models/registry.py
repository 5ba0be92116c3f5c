"""Names users type (``resnet50``, ``timm:convnext_tiny``) mapped to backbones, pooling and weights.

Like timm's own ``create_model``: the name picks the architecture and pretrained tag; pooling and weights
are options; an unknown name fails with the list of valid ones. Looking names up imports no PyTorch: the
network modules (``timm``, ``trained``) are imported when a network model is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import ModelUnavailableError, UnknownModelError
from .handcrafted import HANDCRAFTED
from .modelfile import is_model_file

if TYPE_CHECKING:
    from .base import Embedder

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelSpec:
    timm_name: str  # architecture.tag as timm knows it
    pool: str | None  # global pooling; None keeps the model's own
    description: str


_REGISTRY: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        "resnet50.tv_in1k", "max",
        "ResNet-50, ImageNet weights, global max pooling, 2048-d (the seed notebooks' model; default)",
    ),
    "resnet50-avg": ModelSpec("resnet50.tv_in1k", "avg", "ResNet-50, ImageNet weights, global average pooling, 2048-d"),
    "inception_v3": ModelSpec(
        "inception_v3.tv_in1k", "avg", "Inception v3, ImageNet weights, average pooling, 2048-d (the seed IR system)",
    ),
    "efficientnet_b0": ModelSpec(
        "efficientnet_b0.ra_in1k", "avg", "EfficientNet-B0, ImageNet weights, average pooling, 1280-d (fast)",
    ),
    # Reference embedders without a network (evaluation baselines); timm_name "" marks them.
    **{name: ModelSpec("", None, cls.description) for name, cls in HANDCRAFTED.items()},
}

DEFAULT_MODEL = "resnet50"


def register(name: str, spec: ModelSpec) -> None:
    """Add a named embedder (trained models register themselves here once they exist)."""
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"names starting with {TIMM_PREFIX!r} are reserved for timm models")
    _REGISTRY[name] = spec


def list_models() -> dict[str, ModelSpec]:
    return dict(_REGISTRY)


def resolve(name: str) -> ModelSpec:
    """Look a name up; ``timm:<name>`` takes any timm model as is.

    Raises:
        UnknownModelError: the name is unknown; the message lists the valid ones.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_model_file(name):
        return ModelSpec("", None, f"model trained by lookalike train: {name}")
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX):]
        if not timm_name or not timm.is_model(timm_name.split(".")[0]):
            close = timm.list_models(f"*{timm_name.split('.')[0][:6]}*")[:8] if timm_name else []
            hint = f"; similar timm models: {', '.join(close)}" if close else ""
            raise UnknownModelError(f"unknown timm model {timm_name!r}{hint}")
        return ModelSpec(timm_name, None, f"timm model {timm_name}")
    raise UnknownModelError(
        f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}, any timm model as timm:<name>, or a "
        "model file from `lookalike train` (path.lkm)"
    )


def create_embedder(name: str = DEFAULT_MODEL, weights: str | None = None) -> Embedder:
    """Build an embedder by name: a timm backbone (``TimmEmbedder``), a ``.lkm`` file (``TrainedEmbedder``) or a
    model-free one (``colorhist``, ``pixels``).

    ``weights``: None fetches the pretrained weights from the Hugging Face hub (or its cache);
    a path loads a local ``.safetensors``/``.pth`` file; ``"random"`` gives seeded random weights
    (for timing runs and offline demos only).

    Raises:
        UnknownModelError: unknown name.
        ModelUnavailableError: weights cannot be had; the message says why and how to fix it.
    """
    if is_model_file(name):
        if weights is not None:
            raise ModelUnavailableError(f"{name} holds its own weights; drop --weights {weights}")
        from .trained import load_trained

        return load_trained(name)
    spec = resolve(name)
    if name in HANDCRAFTED:
        if weights is not None:
            raise ModelUnavailableError(f"{name} has no weights; drop --weights {weights}")
        return HANDCRAFTED[name]()
    from .timm import create_timm_embedder

    return create_timm_embedder(name, spec.timm_name, pool=spec.pool, weights=weights)
