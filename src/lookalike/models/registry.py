"""Names users type (``resnet50``, ``timm:convnext_tiny``, ``fashion-siglip``) mapped to backbones, pooling
and weights.

Like timm's own ``create_model``: the name picks the architecture and pretrained tag; pooling and weights
are options; an unknown name fails with the list of valid ones. Looking names up imports no PyTorch: the
network modules (``timm``, ``openclip``, ``trained``) are imported when a network model is created.

Text+image models (``ModelSpec.clip``) come through open_clip: a few by short names, any open_clip
architecture and tag as ``open_clip:<arch>/<tag>``, and any open_clip model on the hub as ``hf-hub:<repo>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ModelUnavailableError, NoTextModelError, UnknownModelError
from .handcrafted import HANDCRAFTED
from .modelfile import MODE_SEPARATOR, file_digest, is_model_file
from .modelfile import canonical_name as model_file_name
from .timm_sources import LOCAL_SOURCE, canonical_source, is_timm_source, locate

if TYPE_CHECKING:
    from ..core.config import EmbedderInfo
    from .base import Embedder

TIMM_PREFIX = "timm:"
OPEN_CLIP_PREFIX = "open_clip:"
HUB_PREFIX = "hf-hub:"
# The model shipped inside the package (float16 safetensors + timm config.json): works with no network and no
# hub cache. Source and licence: NOTICE and builtin/README.md.
BUILTIN_MODEL = "mobilenetv2"
BUILTIN_FOLDER = Path(__file__).resolve().parent / "builtin" / "mobilenetv2_100.coral_in1k"


@dataclass(frozen=True)
class ModelSpec:
    timm_name: str  # architecture.tag as timm knows it ("" for the others)
    pool: str | None  # global pooling; None keeps the model's own
    description: str
    clip: str = ""  # text+image models: "<open_clip arch>/<tag>" or "hf-hub:<repo>"
    hub: str = ""  # the Hugging Face repo of its weights, checked before PyTorch is imported
    builtin: bool = False  # shipped in the package: no download, ever

    @property
    def text(self) -> bool:
        """Does the model embed words too (a text tower in the image vectors' space)?"""
        return bool(self.clip)


_REGISTRY: dict[str, ModelSpec] = {
    # Average pooling and the model's own centre crop (crop_pct 0.875): the best of the ten pooling x crop/pad
    # settings measured on the 329 labelled shared photos (leave-one-out precision@5 by articleType 0.726;
    # padding to a square 0.718-0.722, max pooling 0.704-0.724). README "Models".
    BUILTIN_MODEL: ModelSpec(
        LOCAL_SOURCE + str(BUILTIN_FOLDER), "avg",
        "MobileNetV2 1.0, ImageNet weights, built in (no download; Apache-2.0, see NOTICE), average pooling, "
        "1280-d", builtin=True,
    ),
    BUILTIN_MODEL + "-max": ModelSpec(
        LOCAL_SOURCE + str(BUILTIN_FOLDER), "max", "the same built-in MobileNetV2, global max pooling, 1280-d",
        builtin=True,
    ),
    "resnet50": ModelSpec(
        "resnet50.tv_in1k", "max",
        "ResNet-50, ImageNet weights, global max pooling, 2048-d (the seed notebooks' model; default)",
        hub="timm/resnet50.tv_in1k",
    ),
    "resnet50-avg": ModelSpec("resnet50.tv_in1k", "avg", "ResNet-50, ImageNet weights, global average pooling, 2048-d",
                              hub="timm/resnet50.tv_in1k"),
    "inception_v3": ModelSpec(
        "inception_v3.tv_in1k", "avg", "Inception v3, ImageNet weights, average pooling, 2048-d (the seed IR system)",
        hub="timm/inception_v3.tv_in1k",
    ),
    "efficientnet_b0": ModelSpec(
        "efficientnet_b0.ra_in1k", "avg", "EfficientNet-B0, ImageNet weights, average pooling, 1280-d (fast)",
        hub="timm/efficientnet_b0.ra_in1k",
    ),
    # Text+image models (open_clip): search by words, zero-shot labels, `lookalike train clip --base`.
    "clip-vit-b32": ModelSpec(
        "", None, "OpenAI CLIP ViT-B/32 (open_clip ViT-B-32-quickgelu, openai), 512-d",
        clip="ViT-B-32-quickgelu/openai",
    ),
    "siglip2-base": ModelSpec(
        "", None, "SigLIP 2 ViT-B/16 at 224 px (open_clip ViT-B-16-SigLIP2, webli), 768-d",
        clip="ViT-B-16-SigLIP2/webli",
    ),
    "fashion-clip": ModelSpec(
        "", None, "Marqo-FashionCLIP (hf-hub:Marqo/marqo-fashionCLIP, ViT-B/16), 512-d",
        clip="hf-hub:Marqo/marqo-fashionCLIP",
    ),
    "fashion-siglip": ModelSpec(
        "", None, "Marqo-FashionSigLIP (hf-hub:Marqo/marqo-fashionSigLIP, ViT-B/16 SigLIP), 768-d",
        clip="hf-hub:Marqo/marqo-fashionSigLIP",
    ),
    # Reference embedders without a network (evaluation baselines); timm_name "" marks them.
    **{name: ModelSpec("", None, cls.description) for name, cls in HANDCRAFTED.items()},
}

DEFAULT_MODEL = "resnet50"


def register(name: str, spec: ModelSpec) -> None:
    """Add a named embedder (trained models register themselves here once they exist)."""
    for prefix in (TIMM_PREFIX, OPEN_CLIP_PREFIX, HUB_PREFIX):
        if name.startswith(prefix):
            raise ValueError(f"names starting with {prefix!r} are reserved")
    _REGISTRY[name] = spec


def list_models() -> dict[str, ModelSpec]:
    return dict(_REGISTRY)


def text_models() -> list[str]:
    """The registered names of models that understand words, for messages that point users to one."""
    return [name for name, spec in _REGISTRY.items() if spec.text]


def no_text_tower(name: str) -> NoTextModelError:
    """The one-line refusal for words asked of a model that embeds photos only."""
    return NoTextModelError(
        f"{name} embeds photos only and cannot search by words; build the catalog with a text+image model: "
        f"{', '.join(text_models())}, open_clip:<arch>/<tag>, hf-hub:<repo>, or a model from `lookalike train clip`; "
        f"or keep its vectors and add a text tower trained against it (LiT): `lookalike train clip SOURCE "
        f"--image-model {name} --lock-image --text-column COLUMN --out tower.lkm`, then `lookalike text add tower.lkm "
        "--catalog CATALOG`"
    )


def resolve(name: str) -> ModelSpec:
    """Look a name up; ``timm:<name>`` takes any timm model as is, ``open_clip:<arch>/<tag>`` and
    ``hf-hub:<repo>`` any open_clip model (checked when it is created).

    Raises:
        UnknownModelError: the name is unknown; the message lists the valid ones.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_model_file(name):
        return ModelSpec("", None, f"model trained by lookalike train: {name}")
    if name.startswith(OPEN_CLIP_PREFIX):
        source = name[len(OPEN_CLIP_PREFIX):]
        if not source or source.startswith("/"):
            raise UnknownModelError(f"{name!r}: write open_clip:<architecture>/<pretrained tag>, e.g. "
                                    "open_clip:ViT-B-32/laion2b_s34b_b79k")
        return ModelSpec("", None, f"open_clip model {source}", clip=source)
    if name.startswith(HUB_PREFIX):
        return ModelSpec("", None, f"open_clip model {name}", clip=name)
    if name.startswith(TIMM_PREFIX) and is_timm_source(name[len(TIMM_PREFIX):]):
        source = canonical_source(name[len(TIMM_PREFIX):])  # checked (files, JSON) when it is created
        return ModelSpec(source, None, f"timm model {source}")
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX):]
        if not timm_name or not timm.is_model(timm_name.split(".")[0]):
            close = timm.list_models(f"*{timm_name.split('.')[0][:6]}*")[:8] if timm_name else []
            hint = f"; similar timm models: {', '.join(close)}" if close else ""
            raise UnknownModelError(f"unknown timm model {timm_name!r}{hint}; or name a timm model folder as "
                                    "timm:local-dir:PATH, or a hub repo as timm:hf-hub:ORG/NAME")
        return ModelSpec(timm_name, None, f"timm model {timm_name}")
    raise UnknownModelError(
        f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}, any timm model as timm:<name>, any "
        "open_clip model as open_clip:<arch>/<tag> or hf-hub:<repo>, or a model file from `lookalike train` (path.lkm)"
    )


def canonical_name(name: str) -> str:
    """The name a catalog records: a model file's or a timm model folder's absolute path, so it reopens from
    any folder; other names as they are."""
    if name.startswith(TIMM_PREFIX) and is_timm_source(name[len(TIMM_PREFIX):]):
        return TIMM_PREFIX + canonical_source(name[len(TIMM_PREFIX):])
    return model_file_name(name)


def create_embedder(name: str = DEFAULT_MODEL, weights: str | None = None) -> Embedder:
    """Build an embedder by name: a timm backbone (``TimmEmbedder``), a text+image model (``OpenClipEmbedder``),
    a ``.lkm`` file (``TrainedEmbedder``) or a model-free one (``colorhist``, ``pixels``).

    ``weights``: None fetches the pretrained weights from the Hugging Face hub (or its cache), or reads them from
    the model's folder (``mobilenetv2``, ``timm:local-dir:PATH``); a path loads a local ``.safetensors``/``.pth``
    file; ``"random"`` gives seeded random weights (for timing runs only).

    Files are checked before PyTorch is imported, so a missing model fails in about a second.

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
    if spec.clip:
        from .openclip import create_clip_embedder

        return create_clip_embedder(name, spec.clip, weights)
    source = locate(name, spec.timm_name) if is_timm_source(spec.timm_name) else None
    if spec.hub and weights is None:
        from .hub import require_cached_or_reachable

        require_cached_or_reachable(name, spec.timm_name, spec.hub)
    from .timm import create_timm_embedder

    return create_timm_embedder(canonical_name(name), spec.timm_name, pool=spec.pool, weights=weights,
                                source=source, builtin=spec.builtin, hub_checked=bool(spec.hub))


def weights_unchanged(info: EmbedderInfo, weights_path: str | None = None) -> bool:
    """Do the files a catalog's model was built from still give its recorded weights id (``info.weights``)?
    Checked without PyTorch, the way ``create_embedder`` computes the id: the digest of a ``--weights`` file
    (``weights_path``), of a ``.lkm`` file, or of a model folder's config.json and weights (the built-in model,
    ``timm:local-dir:``, ``timm:hf-hub:``). Hub weights by name and random weights have no files to check
    (True). False also when the files cannot be read: loading the model then says why in one line.
    """
    name, recorded = info.name, info.weights
    try:
        if recorded.startswith("random:"):
            return True
        if is_model_file(name):
            return recorded == f"file:{file_digest(name.split(MODE_SEPARATOR, 1)[0])}"
        if recorded.startswith("file:"):
            return weights_path is not None and recorded == f"file:{file_digest(weights_path)}"
        if name.startswith(TIMM_PREFIX) and not is_timm_source(name[len(TIMM_PREFIX):]):
            return True  # timm's own hub weights by name: the id names the repo, not a digest
        spec = resolve(name)
        if not is_timm_source(spec.timm_name):
            return True
        return recorded.endswith(locate(name, spec.timm_name).digest())
    except (OSError, ModelUnavailableError, UnknownModelError):
        return False
