"""Pretrained timm backbones as embedders, with preprocessing taken from each model's own data config."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from ..core.config import EmbedderInfo
from ..core.errors import ModelUnavailableError
from .base import RANDOM_SEED, RANDOM_WEIGHTS, prepare_with
from .hub import file_digest, fixes, offline_models, probe, require_cached_or_reachable
from .timm_sources import TimmSource
from .transforms import pil_steps, pil_transform, smallest_side_needed

log = logging.getLogger(__name__)


class TimmEmbedder:
    """A timm model without its classifier, plus the transform its weights were trained with.

    The PIL part of timm's eval transform (resize, crop) runs in the decoding workers and yields uint8
    HWC arrays, which are small to ship between processes; scaling and normalisation run on the model's
    device, the same arithmetic as timm's ``ToTensor`` + ``Normalize``.
    """

    def __init__(self, model: torch.nn.Module, info: EmbedderInfo):
        from timm.data import create_transform, resolve_data_config
        self.needs_torch = True
        self.model = model.eval()
        self.info = info
        self.data_config = resolve_data_config({}, model=model)
        full = create_transform(**self.data_config, is_training=False)
        steps = pil_steps(full)
        self.timm_transform = full
        self.pil_transform = pil_transform(steps)
        self.mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.draft_size = smallest_side_needed(steps, self.data_config)
        # Constructor arguments from a model folder's config.json (e.g. pad_type): a fine-tune rebuilds with them.
        self.model_args: dict = {}

    @property
    def dim(self) -> int:
        return self.info.dim

    def prepare(self, img: Image.Image) -> np.ndarray:
        """Resize and crop an RGB image as the model expects: uint8 array, height x width x 3."""
        return prepare_with(self.pil_transform, img)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> normalised float N x 3 x H x W (channels-last in memory)."""
        x = batch.permute(0, 3, 1, 2).float().div_(255)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(mean).div_(std)

    def tensor(self, img: Image.Image) -> torch.Tensor:
        """The model input for one image, 3 x H x W float: what timm's own transform would give."""
        arr = torch.from_numpy(self.prepare(img).copy())
        return self.normalize(arr.unsqueeze(0))[0].contiguous()


def create_timm_embedder(name: str, timm_name: str, *, pool: str | None, weights: str | None,
                         source: TimmSource | None = None, builtin: bool = False,
                         hub_checked: bool = False) -> TimmEmbedder:
    """Create the backbone with its weights; see ``registry.create_embedder``.

    ``source``: a ``local-dir:``/``hf-hub:`` model already checked by ``timm_sources.locate``: timm builds it
    from its config.json (architecture, ``model_args``, ``pretrained_cfg``) and folder, with no network.
    ``builtin``: the source is the model shipped in the package (weights id ``builtin:<digest>``).
    ``hub_checked``: the registry already made sure the hub weights are cached or reachable (its named models).
    """
    import timm

    kwargs: dict = {"num_classes": 0}
    if pool is not None:
        kwargs["global_pool"] = pool
    model_args: dict = {}
    try:
        if source is not None:
            model_args = source.model_args()
            if weights == RANDOM_WEIGHTS:
                torch.manual_seed(RANDOM_SEED)
                model = timm.create_model(source.loader_name(), pretrained=False, **kwargs)
                weights_id = f"random:{RANDOM_SEED}"
            elif weights is not None:
                raise ModelUnavailableError(f"{name} holds its own weights ({source.weights}); drop --weights "
                                            f"{weights}")
            else:
                # The checked folder (a hub repo's cached snapshot included): timm reads config.json and the
                # weights there, never asking the network again.
                model = timm.create_model(source.loader_name(), pretrained=True, **kwargs)
                kind = "builtin" if builtin else source.name.split(":")[0]
                repo = source.name.split(":", 1)[1] + "@" if source.name.startswith("hf-hub:") else ""
                weights_id = f"{kind}:{repo}{source.digest()}"
            timm_name = source.architecture
        elif weights is None:
            if not hub_checked:
                _check_hub_reachable(name, timm_name)
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
            source_id = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url") or timm_name
            weights_id = f"hf-hub:{source_id}"
        elif weights == RANDOM_WEIGHTS:
            torch.manual_seed(RANDOM_SEED)
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
            weights_id = f"random:{RANDOM_SEED}"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelUnavailableError(
                    f"cannot load weights for {name}: file {path} not found; pass --weights with an existing "
                    ".safetensors or .pth file"
                )
            model = timm.create_model(
                timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "hf_hub_id": None,
                                                                     "url": None}, **kwargs
            )
            weights_id = f"file:{file_digest(path)}"
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, network, pickle and shape errors all mean "no weights"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if source is not None:
            raise ModelUnavailableError(
                f"cannot load {name}: {source.weights} does not fit {source.config} ({reason}); restore the "
                f"folder from the model's source. {offline_models()}"
            ) from exc
        where = f"file {weights}" if weights not in (None, RANDOM_WEIGHTS) else "the Hugging Face hub"
        raise ModelUnavailableError(
            f"cannot load weights for {name} ({timm_name}) from {where}: {reason}. {fixes()}"
        ) from exc
    info = EmbedderInfo(
        name=name,
        timm_name=timm_name,
        weights=weights_id,
        # Models with a pre-logits layer (MobileNetV3, some ViTs) output head_hidden_size, not num_features.
        dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
        pool=pool or str(getattr(getattr(model, "global_pool", None), "pool_type", "default") or "default"),
    )
    embedder = TimmEmbedder(model, info)
    embedder.model_args = model_args
    return embedder


def _check_hub_reachable(name: str, timm_name: str) -> None:
    """Fail in seconds, not minutes of retries, when weights are neither cached nor reachable."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        raise ModelUnavailableError(f"{timm_name} has no pretrained weights in timm; pass --weights PATH")
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        require_cached_or_reachable(name, timm_name, hub_id)
        return
    url = getattr(cfg, "url", None)
    if not url:
        raise ModelUnavailableError(f"{timm_name} has no downloadable weights in timm; pass --weights PATH")
    probe(name, timm_name, urlparse(url).hostname or "", 443)
